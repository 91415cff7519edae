"""The warm no-op: an install that changes nothing stages nothing and runs no gpg,
when the generation recorded a verification of exactly these files, keys and settings
that has not lapsed (portal_boot/wheels/unchanged.py says why that is safe); anything else takes
the full path, which verifies again and fails closed.

Every test runs portal-boot through the CLI with real wheels, real keys and the real
gpg, behind a spy on PATH that logs each gpg/gpgconf it starts (and can fake gpg's
clock, for keys that were valid at install time and have expired since).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gpgkeys
import pytest
import wheels
from cli_helpers import assert_one_line_failure, portal_boot
from test_install import resign, tree
from wheels import signed_folder

from portal_boot import wheels as installer
from portal_boot.settings import Settings
from portal_boot.wheels import generations, staging
from portal_boot.wheels import unchanged as noop

plugin_wheels = wheels.plugin_wheels

NO_GPG = "no-op, same wheels, signatures and keys as verified before (no gpg run)"
VERIFIED_AGAIN = "no-op, same wheels: generation"
# Within the one day gpgkeys' expired keys were valid (and after their signatures).
IN_2020 = "20200101T130000!"


@dataclasses.dataclass(frozen=True)
class GpgSpy:
    """A folder put first on the child's PATH with ``gpg`` and ``gpgconf`` scripts that
    log each start, then run the real ones; ``faked`` runs gpg with a faked clock."""

    bin: Path
    log: Path

    @classmethod
    def make(cls, folder: Path) -> GpgSpy:
        folder.mkdir(parents=True)
        log = folder / "calls.log"
        log.touch()
        for name in ("gpg", "gpgconf"):
            real = shutil.which(name)
            assert real, f"{name} is not installed"
            faked = (
                '[ -n "$SPY_FAKED_TIME" ] && exec "$REAL" --faked-system-time "$SPY_FAKED_TIME" "$@"'
                if name == "gpg"
                else ""
            )
            script = folder / name
            script.write_text(
                textwrap.dedent(f"""\
                    #!/bin/sh
                    REAL={real}
                    echo "{name} $*" >> {log}
                    {faked}
                    exec "$REAL" "$@"
                """)
            )
            script.chmod(0o755)
        return cls(folder, log)

    def env(self, base: dict[str, str], *, faked: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k != "SPY_FAKED_TIME"}
        env["PATH"] = f"{self.bin}{os.pathsep}{base.get('PATH', os.defpath)}"
        if faked:
            env["SPY_FAKED_TIME"] = faked
        return env

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def reset(self) -> None:
        self.log.write_text("")


def key_expiries(key: gpgkeys.Key) -> dict[str, int | None]:
    """Each (sub)key fingerprint of ``key`` with its expiry, as gpg lists it."""
    out = key.lab.gpg("--with-colons", "--list-keys", key.fingerprint).stdout.decode()
    expiries, last = {}, None
    for fields in (line.split(":") for line in out.splitlines()):
        if fields[0] in ("pub", "sub"):
            last = int(fields[6]) if fields[6] else None
        elif fields[0] == "fpr" and fields[9] not in expiries:
            expiries[fields[9]] = last
    return expiries


def refused(result: subprocess.CompletedProcess[str], status: int, words: str) -> None:
    """Like cli_helpers.assert_one_line_failure, for a run at debug level (which adds
    the traceback to the log, as it should)."""
    assert result.returncode == status, result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("portal-boot: ") and words in last, last


def state_of(target: Path) -> dict:
    state = generations.read_state(installer.current_generation(target))
    assert state is not None
    return state


@dataclasses.dataclass
class World:
    """Two wheels signed by ``signer``, whose public key is in the ``keys`` folder."""

    folder: Path
    keys: Path
    target: Path
    signer: gpgkeys.Key
    spy: GpgSpy
    env: dict[str, str]

    def install(self, *extra: str, faked: str | None = None, folder: Path | None = None):
        return portal_boot(
            "install", "--wheel-dir", str(folder or self.folder), "--target", str(self.target),
            "--trusted-keys", str(self.keys), "--log-level", "debug", *extra,
            env=self.spy.env(self.env, faked=faked),
        )  # fmt: skip

    def installed(self, *extra: str, faked: str | None = None) -> Path:
        """Install, check it worked and ran gpg; forget the calls; the generation."""
        result = self.install(*extra, faked=faked)
        assert result.returncode == 0, result.stderr
        assert any(c.startswith("gpg ") for c in self.spy.calls()), result.stderr
        self.spy.reset()
        generation = installer.current_generation(self.target)
        assert generation is not None
        return generation

    @property
    def wheel(self) -> Path:
        return min(self.folder.glob("*.whl"))


def make_world(tmp_path: Path, plugin_wheels, signer: gpgkeys.Key, env: dict[str, str]) -> World:
    folder = signed_folder(
        tmp_path / "wheels", plugin_wheels.alpha_v1, plugin_wheels.beta, key=signer
    )
    keys = tmp_path / "keys"
    keys.mkdir()
    # Without its revocation, if it has one: the key as it was before it was revoked.
    (keys / "signer.asc").write_text(signer.public_key(with_revocation=False))
    (tmp_path / "volume").mkdir()
    spy = GpgSpy.make(tmp_path / "spy")
    return World(folder, keys, tmp_path / "volume" / "plugins", signer, spy, env)


@pytest.fixture
def world(tmp_path, plugin_wheels, gpg_keys, clean_env) -> World:
    # The revoked key, before its revocation reaches the operator: a valid signer.
    return make_world(tmp_path, plugin_wheels, gpg_keys.revoked, clean_env)


def test_a_warm_no_op_copies_nothing_and_runs_no_gpg(world):
    generation = world.installed()
    state = state_of(world.target)
    verified = state["verified"]
    expected = key_expiries(world.signer)[world.signer.signing_fingerprint]
    assert expected is not None and verified["expires"] == expected  # a 2-year key
    assert abs(verified["at"] - time.time()) < 120 and verified["request"] is None
    before = tree(world.target.parent)
    result = world.install()
    assert result.returncode == 0, result.stderr
    assert f"{NO_GPG}: generation {generation.name} already holds these 2 wheels" in result.stderr
    assert world.spy.calls() == []  # neither gpg nor gpgconf started
    assert "staging into" not in result.stderr  # nothing copied
    assert tree(world.target.parent) == before  # nothing written


def test_a_warm_no_op_imports_neither_gnupg_nor_the_installer(world):
    world.installed()
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from portal_boot import wheels as install
        from portal_boot.settings import Settings
        settings = Settings(wheel_dir=Path({str(world.folder)!r}), target=Path({str(world.target)!r}),
                            trusted_keys=Path({str(world.keys)!r}), environ={world.spy.env(world.env)!r})
        assert not install.install(settings).changed
        print(sorted(m for m in ("gnupg", "installer", "packaging.tags") if m in sys.modules))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=world.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]"
    assert world.spy.calls() == []


# Each: what changes after a good install; the status, and words of the error line.
FAIL_CLOSED = {
    "signature replaced by an untrusted key's": ("resign other", 3, "unknown key"),
    "signature removed": ("unsign", 3, "missing signature"),
    "a .sig by an untrusted key added beside the .asc": ("add sig", 3, "unknown key"),
    "revocation appended to the key file": ("revoke", 3, "revoked key"),
    "revocation in a key file of its own": ("revocation file", 3, "revoked key"),
    "key file replaced by another key": ("swap key", 3, "unknown key"),
    "allow-list without the signer": ("allow other", 3, "not on allow-list"),
    "wheel changed (not signed)": ("tamper", 3, "bad signature"),
}


@pytest.mark.parametrize("case", FAIL_CLOSED, ids=list(FAIL_CLOSED))
def test_a_change_takes_the_full_path_which_refuses(case, world, gpg_keys):
    how, status, words = FAIL_CLOSED[case]
    generation = world.installed()
    extra: tuple[str, ...] = ()
    if how == "resign other":
        resign(gpg_keys.other, world.wheel, "other")
    elif how == "unsign":
        world.wheel.with_name(world.wheel.name + ".asc").unlink()
    elif how == "add sig":
        gpg_keys.other.sign(world.wheel, armor=False)
    elif how == "revoke":
        with (world.keys / "signer.asc").open("a") as file:
            file.write(world.signer.revocation)
    elif how == "revocation file":
        (world.keys / "0-revocation.asc").write_text(world.signer.revocation)
    elif how == "swap key":
        (world.keys / "signer.asc").write_text(gpg_keys.other.public_key())
    elif how == "allow other":
        extra = ("--trusted-fingerprint", gpg_keys.other.fingerprint)
    elif how == "tamper":
        with world.wheel.open("ab") as file:
            file.write(b"\0")
    before = tree(world.target.parent)
    result = world.install(*extra)
    refused(result, status, words)
    assert any(c.startswith("gpg ") for c in world.spy.calls())  # gpg decided
    assert tree(world.target.parent) == before
    assert installer.current_generation(world.target) == generation


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_file_takes_the_full_path_which_refuses(world):
    world.installed()
    extra = world.keys / "extra.asc"
    extra.write_text("whatever")
    extra.chmod(0)
    refused(world.install(), 3, "cannot read key file")


BENIGN = {
    "fresh signature by the signer": "resign",
    "allow-list with the signer": "allow signer",
    "another trusted key added": "add key",
    "same files in another folder": "move",
}


@pytest.mark.parametrize("case", BENIGN, ids=list(BENIGN))
def test_a_harmless_change_is_verified_once_then_skipped_again(case, world, gpg_keys, tmp_path):
    how = BENIGN[case]
    generation = world.installed()
    first = state_of(world.target)["verified"]
    extra: tuple[str, ...] = ()
    folder = world.folder
    if how == "resign":
        resign(world.signer, world.wheel, "fresh")
    elif how == "allow signer":
        extra = ("--trusted-fingerprint", world.signer.fingerprint)
    elif how == "add key":
        (world.keys / "other.asc").write_text(gpg_keys.other.public_key())
    elif how == "move":
        folder = shutil.copytree(world.folder, tmp_path / "elsewhere")
    result = world.install(*extra, folder=folder)
    assert result.returncode == 0, result.stderr
    if how == "move":  # names and bytes are what count, not where they lie
        assert NO_GPG in result.stderr and world.spy.calls() == []
        return
    assert f"{VERIFIED_AGAIN} {generation.name}" in result.stderr
    assert any(c.startswith("gpg ") for c in world.spy.calls())
    assert state_of(world.target)["verified"]["digest"] != first["digest"]  # recorded
    world.spy.reset()
    again = world.install(*extra, folder=folder)
    assert again.returncode == 0, again.stderr
    assert f"{NO_GPG}: generation {generation.name}" in again.stderr
    assert world.spy.calls() == []


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_generation_installed_with_signatures_off_never_passes_as_verified(
    signed, world, tmp_path, plugin_wheels
):
    if not signed:
        world.folder = signed_folder(tmp_path / "unsigned", plugin_wheels.alpha_v1, key=None)
    result = world.install("--signatures", "off")
    assert result.returncode == 0, result.stderr
    assert state_of(world.target)["verified"] is None
    again = world.install("--signatures", "off")  # the unsigned no-op: hashes only
    assert again.returncode == 0 and "no-op, same wheels: generation" in again.stderr
    assert world.spy.calls() == []
    assert state_of(world.target)["verified"] is None
    required = world.install()
    assert "staging and verifying: no verification recorded" in required.stderr
    assert any(c.startswith("gpg ") for c in world.spy.calls())
    if not signed:
        refused(required, 3, "missing signature")
        return
    # The same wheels, now verified: recorded, so the next boot skips gpg.
    assert required.returncode == 0, required.stderr
    assert VERIFIED_AGAIN in required.stderr
    state = state_of(world.target)
    assert state["verified"]["digest"]
    # With the signers, which `serve` checks before it runs anything.
    assert {w["signer"] for w in state["wheels"]} == {world.signer.fingerprint}
    world.spy.reset()
    assert NO_GPG in world.install().stderr and world.spy.calls() == []


def test_a_key_that_expired_since_the_install_is_checked_again_and_refused(
    tmp_path, plugin_wheels, gpg_keys, clean_env
):
    # Signed and installed while the key was valid: in 2020, on gpg's (faked) clock.
    world = make_world(tmp_path, plugin_wheels, gpg_keys.expired, clean_env)
    generation = world.installed(faked=IN_2020)
    expires = key_expiries(gpg_keys.expired)[gpg_keys.expired.fingerprint]
    assert state_of(world.target)["verified"]["expires"] == expires == 1577923200  # 2020-01-02
    before = tree(world.target.parent)
    result = world.install()  # today: the same files, keys and gpg; only time has passed
    assert "expires or expired at 2020-01-02 00:00:00 UTC" in result.stderr
    refused(result, 3, "expired key")
    assert any(c.startswith("gpg ") for c in world.spy.calls())
    assert tree(world.target.parent) == before
    # Control: only the recorded expiry sent it to gpg, which (in 2020) still accepts.
    world.spy.reset()
    again = world.install(faked=IN_2020)
    assert again.returncode == 0 and f"{VERIFIED_AGAIN} {generation.name}" in again.stderr
    assert any(c.startswith("gpg ") for c in world.spy.calls())


def test_gpg_missing_is_still_fatal_on_a_warm_boot(world):
    world.installed()
    env = {**world.env, "PATH": str(Path(sys.executable).parent)}  # no gpg there
    result = portal_boot(
        "install", "--wheel-dir", str(world.folder), "--target", str(world.target),
        "--trusted-keys", str(world.keys), env=env,
    )  # fmt: skip
    assert_one_line_failure(result, 3, "gpg not found")


# --- the decision, through the API, on a real record --------------------------------


def test_the_expiry_margin_and_a_clock_set_back(world):
    world.installed()
    settings = Settings(
        wheel_dir=world.folder, target=world.target, trusted_keys=world.keys,
        environ=world.spy.env(world.env),
    )  # fmt: skip
    state = state_of(world.target)
    expires, at = state["verified"]["expires"], state["verified"]["at"]
    assert noop.folder_unchanged(installer.request_from(settings), state) == (True, NO_GPG.removeprefix("no-op, "))
    assert noop.folder_unchanged(installer.request_from(settings), state, now=expires - noop.MARGIN - 1)[0]
    near = noop.folder_unchanged(installer.request_from(settings), state, now=expires - noop.MARGIN + 1)
    assert near[0] is False and "expires or expired" in near[1]
    back = noop.folder_unchanged(installer.request_from(settings), state, now=at - noop.MARGIN - 1)
    assert back == (False, "the clock reads earlier than the recorded verification")
    # A record that does not parse, or was made in another mode, proves nothing.
    for verified in ({**state["verified"], "expires": "soon"}, None, "yes"):
        assert not noop.folder_unchanged(installer.request_from(settings), {**state, "verified": verified})[0]
    off = dataclasses.replace(settings, signatures="off")
    assert noop.folder_unchanged(installer.request_from(off), {**state, "verified": None}) == (True, "same wheels")
    assert world.spy.calls() == []


def test_the_keys_digest(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "a.asc").write_bytes(b"x\0b.asc\0y")
    digest = noop.keys_digest(keys)
    assert digest and noop.keys_digest(keys) == digest
    # The file alone is another setting (a folder imports only *.asc, *.gpg, ...).
    assert noop.keys_digest(keys / "a.asc") not in (None, digest)
    (keys / "a.asc").write_bytes(b"x")
    (keys / "b.asc").write_bytes(b"y")  # the same bytes, split differently
    assert noop.keys_digest(keys) not in (None, digest)
    real = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path.name == "b.asc":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    assert noop.keys_digest(keys) is None  # not the digest of the readable part
    assert noop.keys_digest(tmp_path / "missing.asc") is None


def test_the_pinned_request_check(tmp_path, clean_env):
    keys = tmp_path / "k.asc"
    keys.write_text("key")
    settings = Settings(
        requirements=("portal-x-plugin==1.0",), trusted_keys=keys, environ=clean_env
    )
    request = noop.request_digest(installer.request_from(settings))
    assert request
    now = int(time.time())
    good = {"request": request, "verifier": noop._verifier(clean_env), "expires": None, "at": now}
    state = {"request": request, "verified": good}
    assert noop.request_unchanged(installer.request_from(settings), state, request)[0]
    for verified in (
        None,
        {**good, "request": "another"},
        {**good, "verifier": "an older gpg"},
        {**good, "expires": now + 10},
        {**good, "at": now + 3600},
    ):
        assert not noop.request_unchanged(installer.request_from(settings), {**state, "verified": verified}, request)[0]
    no_gpg = dataclasses.replace(settings, environ={**clean_env, "PATH": "/nonexistent"})
    assert not noop.request_unchanged(installer.request_from(no_gpg), state, request)[0]
    off = dataclasses.replace(settings, signatures="off")
    off_request = noop.request_digest(installer.request_from(off))
    assert off_request != request  # the mode is in it
    assert noop.request_unchanged(installer.request_from(off), {"request": off_request}, off_request)[0]
    assert not noop.request_unchanged(installer.request_from(off), state, off_request)[0]


def test_a_read_only_target_boots_and_verifies_each_time(world, monkeypatch, caplog):
    # Installed with signatures off (no record), then mounted read-only: the full path
    # verifies, cannot record it, and succeeds anyway. (In-process, with the write
    # failing as on a read-only mount: tests run as root, which ignores file modes.)
    assert world.install("--signatures", "off").returncode == 0
    before = tree(world.target.parent)

    def read_only(generation: Path, state: dict) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(generation))

    monkeypatch.setattr(generations, "write_state", read_only)
    settings = Settings(
        wheel_dir=world.folder, target=world.target, trusted_keys=world.keys,
        environ=world.spy.env(world.env),
    )  # fmt: skip
    caplog.set_level("DEBUG", logger="portal_boot.wheels")
    for _ in range(2):
        assert not installer.install(settings).changed
        assert "verification not recorded" in caplog.text
        assert any(c.startswith("gpg ") for c in world.spy.calls())
        world.spy.reset()
        caplog.clear()
    assert tree(world.target.parent) == before


def test_staging_and_signatures_agree_on_signature_files():
    from portal_boot.wheels.signatures import SIGNATURE_SUFFIXES

    assert staging._SIGNATURES == SIGNATURE_SUFFIXES


# --- a no-op finishes the clean-up of an install killed after its switch -------------


@pytest.mark.parametrize("lock", ["free", "held by another installer"])
def test_a_no_op_removes_what_an_interrupted_install_left(lock, world, tmp_path, plugin_wheels):
    first = world.installed()
    second_folder = signed_folder(tmp_path / "v2", plugin_wheels.alpha_v2, key=world.signer)
    world.folder = second_folder
    current = world.installed()
    home = current.parent
    # As if an install had been killed after its switch, before it removed these.
    older = home / "20000101-000000-000000000000-000000"
    shutil.copytree(first, older)
    (home / ".building-20000101-000000-000000000000-000001").mkdir()
    before = sorted(p.name for p in home.iterdir())
    with (home / ".lock").open("a") as held:
        if lock != "free":
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        result = world.install()
        assert time.monotonic() - started < 10  # never waits for the lock
    assert result.returncode == 0 and NO_GPG in result.stderr, result.stderr
    assert installer.current_generation(world.target) == current
    if lock != "free":
        assert sorted(p.name for p in home.iterdir()) == before
        assert "leftovers not removed now" in result.stderr
        return
    assert "removing what an interrupted install left behind" in result.stderr
    assert sorted(p.name for p in home.iterdir()) == sorted([".lock", first.name, current.name])
