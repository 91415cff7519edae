"""Signature verification with real keys, real gpg and real files (see tests/gpgkeys.py)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import gpgkeys
import pytest

from portal_boot.errors import SignatureError
from portal_boot.wheels import keyring, signatures
from portal_boot.wheels.signatures import Verified, check, verify_files

WHEEL = "demo_plugin-1.0-py3-none-any.whl"


@pytest.fixture(scope="session")
def keyset(gpg_keys: gpgkeys.KeySet) -> gpgkeys.KeySet:
    return gpg_keys


@pytest.fixture
def env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath)}


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    folder = tmp_path / "stage"
    folder.mkdir()
    return folder


def wheel(stage: Path, name: str = WHEEL, content: bytes | None = None) -> Path:
    path = stage / name
    path.write_bytes(content if content is not None else f"pretend wheel {name}\n".encode() * 50)
    return path


def trusted(tmp_path: Path, *keys: gpgkeys.Key) -> Path:
    return gpgkeys.export_keys(tmp_path / "keys" / "trusted.asc", *keys)


def expiries(key: gpgkeys.Key) -> dict[str, int | None]:
    from test_install_warm import key_expiries

    return key_expiries(key)


def refused(wheels: list[Path], keys: Path | None, env: dict[str, str], *, fingerprints=()) -> str:
    """Run verify_files expecting a refusal; return the message after checking its form."""
    with pytest.raises(SignatureError) as caught:
        verify_files(wheels, keys=keys, fingerprints=fingerprints, environ=env)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "\n" not in message
    assert "BEGIN PGP" not in message and "END PGP" not in message
    return message


# --- accepted ------------------------------------------------------------------------


@pytest.mark.parametrize("armor", [True, False], ids=["asc", "sig"])
def test_good_signature(keyset, tmp_path, stage, env, armor):
    w = wheel(stage)
    sig = keyset.good.sign(w, armor=armor)
    assert sig.name == WHEEL + (".asc" if armor else ".sig")
    result = verify_files([w], keys=trusted(tmp_path, keyset.good), environ=env)
    expires = expiries(keyset.good)[keyset.good.fingerprint]
    assert result == [Verified(w, sig, keyset.good.fingerprint, expires)]
    assert expires is not None and expires > time.time() + 365 * 86400  # a 2-year key


def test_subkey_signature_reports_the_primary_fingerprint(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.subkey.sign(w)
    assert keyset.subkey.signing_fingerprint != keyset.subkey.fingerprint
    keys = trusted(tmp_path, keyset.subkey)
    [result] = verify_files([w], keys=keys, fingerprints=[keyset.subkey.fingerprint], environ=env)
    assert result.fingerprint == keyset.subkey.fingerprint
    # The allow-list is of primary fingerprints: listing only the subkey is not enough.
    message = refused([w], keys, env, fingerprints=[keyset.subkey.signing_fingerprint])
    assert "not on allow-list" in message


def test_allow_list_that_includes_the_signer(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.good.sign(w)
    keys = trusted(tmp_path, keyset.good, keyset.other)
    allowed = [keyset.other.fingerprint, keyset.good.fingerprint.lower()]
    [result] = verify_files([w], keys=keys, fingerprints=allowed, environ=env)
    assert result.fingerprint == keyset.good.fingerprint


def test_folder_of_several_keys(keyset, tmp_path, stage, env):
    folder = tmp_path / "keyring"
    keyset.good.export(folder / "good.asc")
    (folder / "other.pub").write_text(keyset.other.public_key())
    (folder / "README.txt").write_text("not a key, and not a key suffix: skipped\n")
    (folder / "..data").mkdir()  # what a Kubernetes ConfigMap mount looks like: skipped
    a, b = wheel(stage, "a-1.0-py3-none-any.whl"), wheel(stage, "b-1.0-py3-none-any.whl")
    keyset.good.sign(a)
    keyset.other.sign(b, armor=False)
    result = verify_files([a, b], keys=folder, environ=env)
    assert [v.fingerprint for v in result] == [keyset.good.fingerprint, keyset.other.fingerprint]


def test_two_good_signatures_in_one_file(keyset, tmp_path, stage, env):
    w = wheel(stage)
    first = keyset.good.sign(w, armor=False, output=tmp_path / "1.sig")
    second = keyset.other.sign(w, armor=False, output=tmp_path / "2.sig")
    gpgkeys.concat_signatures(stage / f"{WHEEL}.sig", first, second)
    [result] = verify_files([w], keys=trusted(tmp_path, keyset.good, keyset.other), environ=env)
    assert result.fingerprint == keyset.good.fingerprint


def test_logs_one_line_per_wheel_and_never_key_material(keyset, tmp_path, stage, env, caplog):
    # python-gnupg logs imported key data at debug; earlier tests may have raised its level.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="gnupg")
    w = wheel(stage)
    keyset.good.sign(w)
    verify_files([w], keys=trusted(tmp_path, keyset.good), environ=env)
    ours = [r for r in caplog.records if r.name == signatures.__name__]
    infos = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert infos == [f"verified {WHEEL}: signed by {keyset.good.fingerprint}"]
    assert "BEGIN PGP" not in caplog.text
    assert "gpg returned a non-zero" not in caplog.text


def test_no_wheels_needs_nothing(env):
    assert verify_files([], keys=None, environ=env) == []
    assert check([], keys=None, environ=env) == []


# --- refused -------------------------------------------------------------------------


def test_tampered_wheel(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.good.sign(w)
    with w.open("ab") as f:
        f.write(b"one more byte")
    message = refused([w], trusted(tmp_path, keyset.good), env)
    assert message.startswith(f"{WHEEL}: bad signature: ")
    assert "PORTAL_BOOT_TRUSTED_KEYS" in message


def test_signature_of_another_wheel(keyset, tmp_path, stage, env):
    w, other = wheel(stage), wheel(stage, "other-1.0-py3-none-any.whl")
    sig = keyset.good.sign(other)
    shutil.copy(sig, stage / f"{WHEEL}.asc")
    assert f"{WHEEL}: bad signature" in refused([w, other], trusted(tmp_path, keyset.good), env)


def test_inline_signed_message_is_not_a_detached_signature(keyset, tmp_path, stage, env):
    w, other = wheel(stage), wheel(stage, "other-1.0-py3-none-any.whl")
    keyset.good.sign(other, armor=False, inline=True, output=stage / f"{WHEEL}.sig")
    assert "bad signature" in refused([w], trusted(tmp_path, keyset.good), env)


def test_missing_signature(keyset, tmp_path, stage, env):
    w = wheel(stage)
    message = refused([w], trusted(tmp_path, keyset.good), env)
    assert message.startswith(f"{WHEEL}: missing signature: ")
    assert "--trusted-keys / PORTAL_BOOT_TRUSTED_KEYS" in message


def test_unknown_key(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.other.sign(w)
    message = refused([w], trusted(tmp_path, keyset.good), env)
    assert f"{WHEEL}: unknown key: " in message
    assert keyset.other.fingerprint in message


def test_expired_key(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.expired.sign(w)  # made in 2020, while the key was still valid
    message = refused([w], trusted(tmp_path, keyset.expired), env)
    assert f"{WHEEL}: expired key: " in message and keyset.expired.fingerprint in message


def test_expired_signing_subkey(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.expired_subkey.sign(w)
    message = refused([w], trusted(tmp_path, keyset.expired_subkey), env)
    assert f"{WHEEL}: expired key: " in message


def test_revoked_key(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.revoked.sign(w)
    message = refused([w], trusted(tmp_path, keyset.revoked), env)
    assert f"{WHEEL}: revoked key: " in message and keyset.revoked.fingerprint in message


def test_revocation_in_its_own_file_sorted_before_the_key(keyset, tmp_path, stage, env):
    # gpg drops a revocation whose key is not imported yet; the order must not matter.
    folder = tmp_path / "keyring"
    folder.mkdir()
    (folder / "a-revocation.asc").write_text(keyset.revoked.revocation)
    (folder / "b-key.asc").write_text(keyset.revoked.public_key(with_revocation=False))
    w = wheel(stage)
    keyset.revoked.sign(w)
    assert "revoked key" in refused([w], folder, env)


def test_allow_list_that_excludes_the_signer(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.good.sign(w)
    keys = trusted(tmp_path, keyset.good, keyset.other)
    message = refused([w], keys, env, fingerprints=[keyset.other.fingerprint])
    assert f"{WHEEL}: not on allow-list: " in message
    assert keyset.good.fingerprint in message and "PORTAL_BOOT_TRUSTED_FINGERPRINTS" in message


@pytest.mark.parametrize("bad", ["other-file", "unknown-key", "expired-key"])
def test_one_bad_signature_among_two_refuses(keyset, tmp_path, stage, env, bad):
    w, other = wheel(stage), wheel(stage, "other-1.0-py3-none-any.whl")
    good = keyset.good.sign(w, armor=False, output=tmp_path / "good.sig")
    second = {
        "other-file": lambda: keyset.good.sign(other, armor=False, output=tmp_path / "x.sig"),
        "unknown-key": lambda: keyset.other.sign(w, armor=False, output=tmp_path / "x.sig"),
        "expired-key": lambda: keyset.expired.sign(w, armor=False, output=tmp_path / "x.sig"),
    }[bad]()
    for name, order in (("first", (good, second)), ("last", (second, good))):
        gpgkeys.concat_signatures(stage / f"{WHEEL}.sig", *order)
        keys = trusted(tmp_path, keyset.good, keyset.expired)
        message = refused([w], keys, env)
        assert message.startswith(f"{WHEEL}: "), name


def test_both_asc_and_sig_must_verify(keyset, tmp_path, stage, env):
    w, other = wheel(stage), wheel(stage, "other-1.0-py3-none-any.whl")
    keyset.good.sign(w)  # a good .asc
    keyset.good.sign(other, armor=False, output=stage / f"{WHEEL}.sig")  # a bad .sig
    message = refused([w], trusted(tmp_path, keyset.good), env)
    assert f"bad signature: {WHEEL}.sig does not match" in message


def test_garbage_signature_file(keyset, tmp_path, stage, env):
    w = wheel(stage)
    (stage / f"{WHEEL}.asc").write_text("this is not a signature\n")
    assert "bad signature" in refused([w], trusted(tmp_path, keyset.good), env)


def test_unreadable_wheel(keyset, tmp_path, stage, env):
    w = stage / WHEEL
    w.mkdir()  # present but not a readable file (chmod does not stop root)
    (stage / f"{WHEEL}.asc").write_text("irrelevant\n")
    assert f"{WHEEL}: unreadable: " in refused([w], trusted(tmp_path, keyset.good), env)


def test_reports_the_first_failure_and_counts_the_rest(keyset, tmp_path, stage, env):
    wheels = [wheel(stage, f"p{i}-1.0-py3-none-any.whl") for i in range(3)]
    keyset.good.sign(wheels[1])
    message = refused(wheels, trusted(tmp_path, keyset.good), env)
    assert message.startswith("p0-1.0-py3-none-any.whl: missing signature")
    assert "1 more failed" in message


# --- the keyring itself fails closed ---------------------------------------------------


def test_key_file_that_is_not_a_key(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.good.sign(w)
    keys = tmp_path / "keys.asc"
    keys.write_text("-----BEGIN NOTHING-----\nhello\n")
    message = refused([w], keys, env)
    assert "holds no OpenPGP public key" in message and str(keys) in message


def test_a_bad_file_in_a_key_folder_fails_the_whole_folder(keyset, tmp_path, stage, env):
    folder = tmp_path / "keyring"
    keyset.good.export(folder / "good.asc")
    (folder / "broken.asc").write_text("garbage\n")
    w = wheel(stage)
    keyset.good.sign(w)
    assert "broken.asc holds no OpenPGP public key" in refused([w], folder, env)


def test_secret_key_is_refused(keyset, tmp_path, stage, env):
    secret = keyset.good.lab.gpg("--armor", "--export-secret-keys", keyset.good.fingerprint).stdout
    keys = tmp_path / "oops.asc"
    keys.write_bytes(secret)
    w = wheel(stage)
    keyset.good.sign(w)
    message = refused([w], keys, env)
    assert "holds a secret key" in message


@pytest.mark.parametrize("layout", ["unset", "missing", "empty-folder", "folder-without-keys"])
def test_no_trusted_keys(tmp_path, stage, env, layout):
    w = wheel(stage)
    keys = {"unset": None, "missing": tmp_path / "nope.asc"}.get(layout, tmp_path / "keys")
    if "folder" in layout:
        keys.mkdir()
    if layout == "folder-without-keys":
        (keys / "notes.txt").write_text("hello\n")
    message = refused([w], keys, env)
    assert message.startswith(f"cannot verify {WHEEL}: ")
    assert "PORTAL_BOOT_TRUSTED_KEYS" in message
    if layout == "unset":
        assert "--signatures off" in message


def test_gpg_missing_fails_closed(keyset, tmp_path, stage, env):
    w = wheel(stage)
    keyset.good.sign(w)
    message = refused([w], trusted(tmp_path, keyset.good), {"PATH": str(tmp_path / "empty")})
    assert "gpg not found" in message


def test_private_keyring_is_removed(keyset, tmp_path, stage, env, monkeypatch):
    homes: list[Path] = []
    real = keyring._private_home

    def spy(environ):
        homes.append(real(environ))
        assert oct(homes[-1].stat().st_mode & 0o777) == "0o700"
        return homes[-1]

    monkeypatch.setattr(keyring, "_private_home", spy)
    w = wheel(stage)
    keyset.good.sign(w)
    verify_files([w], keys=trusted(tmp_path, keyset.good), environ=env)
    refused([w], trusted(tmp_path, keyset.other), env)
    assert len(homes) == 2 and not any(h.exists() for h in homes)
    assert all(len(str(h)) < 40 for h in homes)


def test_allow_list_entry_without_key_is_warned_about(keyset, tmp_path, stage, env, caplog):
    w = wheel(stage)
    keyset.good.sign(w)
    verify_files(
        [w],
        keys=trusted(tmp_path, keyset.good),
        fingerprints=[keyset.good.fingerprint, keyset.other.fingerprint],
        environ=env,
    )
    assert f"{keyset.other.fingerprint} is in --trusted-fingerprint" in caplog.text


# --- check(): the states for `portal-boot status` --------------------------------------


def test_check_states(keyset, tmp_path, stage, env):
    def signed(name: str, key: gpgkeys.Key | None, *, tamper: bool = False) -> Path:
        w = wheel(stage, f"{name}-1.0-py3-none-any.whl")
        if key:
            key.sign(w)
        if tamper:
            w.write_bytes(b"changed")
        return w

    wheels = {
        "valid": signed("valid", keyset.good),
        "missing signature": signed("missing", None),
        "bad signature": signed("bad", keyset.good, tamper=True),
        "unknown key": signed("unknown", keyset.other),
        "expired key": signed("expired", keyset.expired),
        "revoked key": signed("revoked", keyset.revoked),
        "not on allow-list": signed("subkey", keyset.subkey),
    }
    keys = trusted(tmp_path, keyset.good, keyset.expired, keyset.revoked, keyset.subkey)
    allowed = [keyset.good.fingerprint, keyset.expired.fingerprint, keyset.revoked.fingerprint]
    result = check(list(wheels.values()), keys=keys, fingerprints=allowed, environ=env)
    assert [(path, state) for path, _, state in result] == [(w, s) for s, w in wheels.items()]
    fingerprints = {state: fpr for _, fpr, state in result}
    assert fingerprints["valid"] == keyset.good.fingerprint
    assert fingerprints["expired key"] == keyset.expired.fingerprint
    assert fingerprints["revoked key"] == keyset.revoked.fingerprint
    assert fingerprints["not on allow-list"] == keyset.subkey.fingerprint
    assert fingerprints["missing signature"] is None and fingerprints["unknown key"] is None


def test_check_without_gpg_does_not_raise(keyset, tmp_path, stage, caplog):
    w = wheel(stage)
    keyset.good.sign(w)
    result = check([w], keys=trusted(tmp_path, keyset.good), environ={"PATH": str(tmp_path)})
    assert result == [(w, None, signatures.NOT_CHECKED)]
    assert "gpg not found" in caplog.text


# --- when a verification lapses (recorded for the warm no-op, portal_boot/wheels/unchanged.py) ----


def test_expiry_of_a_subkey_signature_is_the_earlier_of_subkey_and_primary(
    keyset, tmp_path, stage, env
):
    w = wheel(stage)
    keyset.subkey.sign(w)
    [result] = verify_files([w], keys=trusted(tmp_path, keyset.subkey), environ=env)
    known = expiries(keyset.subkey)
    both = (known[keyset.subkey.fingerprint], known[keyset.subkey.signing_fingerprint])
    assert None not in both and result.expires == min(both)


def sign_expiring(key: gpgkeys.Key, file: Path, output: Path, *, armor: bool = True) -> Path:
    """A detached signature of ``file`` that itself expires in 3 days."""
    key.lab.gpg(
        "--yes", "--local-user", f"{key.signing_fingerprint}!", *(["--armor"] if armor else []),
        "--default-sig-expire", "3d", "--detach-sign", "--output", str(output), str(file),
    )  # fmt: skip
    return output


def in_3_days(moment: int | None) -> bool:
    return moment is not None and abs(moment - (time.time() + 3 * 86400)) < 300


def test_expiry_of_a_signature_that_expires_before_its_key(keyset, tmp_path, stage, env):
    w = wheel(stage)
    sign_expiring(keyset.good, w, stage / f"{WHEEL}.asc")
    [result] = verify_files([w], keys=trusted(tmp_path, keyset.good), environ=env)
    assert in_3_days(result.expires)


@pytest.mark.parametrize("layout", ["one file", "asc and sig"])
def test_expiry_is_the_earliest_over_every_signature(layout, keyset, tmp_path, stage, env):
    # The one that lapses first comes last: not just the first signature's expiry.
    w = wheel(stage)
    if layout == "one file":
        first = keyset.other.sign(w, armor=False, output=tmp_path / "1.sig")
        second = sign_expiring(keyset.good, w, tmp_path / "2.sig", armor=False)
        gpgkeys.concat_signatures(stage / f"{WHEEL}.sig", first, second)
    else:
        keyset.other.sign(w)  # .asc
        sign_expiring(keyset.good, w, stage / f"{WHEEL}.sig", armor=False)
    keys = trusted(tmp_path, keyset.good, keyset.other)
    [result] = verify_files([w], keys=keys, environ=env)
    assert result.fingerprint == keyset.other.fingerprint  # the first signer is reported
    assert in_3_days(result.expires)


def test_a_key_that_never_expires_gives_no_expiry(keyset, tmp_path, stage, env):
    lab = keyset.lab
    made = lab.gpg(
        "--quick-gen-key", "forever <forever@portal-boot.test>", "ed25519", "sign", "never"
    )
    fingerprint = lab._created(made)
    key = gpgkeys.Key(lab, "forever", fingerprint, fingerprint)
    w = wheel(stage)
    key.sign(w)
    [result] = verify_files([w], keys=trusted(tmp_path, key), environ=env)
    assert result.expires is None


@pytest.mark.parametrize(
    ("raw", "moment"),
    [("", None), ("0", None), ("1577923200", 1577923200), ("20200102T000000", 1577923200),
     ("next tuesday", 0)],
)  # fmt: skip
def test_gpg_timestamps(raw, moment):
    # Unreadable counts as already lapsed (0): nothing is ever skipped on a guess.
    assert signatures.timestamp(raw) == moment


def test_importing_the_module_does_not_import_gnupg():
    import subprocess
    import sys

    code = "import sys, portal_boot.wheels.signatures; print('gnupg' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "False", done.stderr


def test_a_gpg_interrupted_by_a_signal_does_not_outlive_verification(keyset, tmp_path, stage, env):
    # A gpg that hangs on --verify; an exception from a signal handler interrupts the
    # wait (as SIGTERM's Terminated does): that gpg must be stopped and reaped.
    import signal
    import textwrap

    real, pidfile = shutil.which("gpg"), tmp_path / "gpg.pid"
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "gpg").write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            case " $* " in *" --verify "*) echo $$ > {pidfile}; exec sleep 30;; esac
            exec {real} "$@"
        """)
    )
    (spy / "gpg").chmod(0o755)
    w = wheel(stage)
    keyset.good.sign(w)

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(Interrupted):
            verify_files(
                [w], keys=trusted(tmp_path, keyset.good),
                environ={**env, "PATH": f"{spy}:{env['PATH']}"},
            )  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # gone, and reaped (a zombie would answer)
        os.kill(pid, 0)


def test_signals_wait_for_a_gpg_to_be_started_and_held():
    import signal

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    reached = []
    try:
        with pytest.raises(Stopped), keyring._signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # a handler would have run by now
            reached.append("end of the block")
        assert reached == ["end of the block"]
        assert signal.getsignal(signal.SIGTERM) is stop  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
