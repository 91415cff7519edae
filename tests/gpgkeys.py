"""Real OpenPGP keys for tests: a throwaway GNUPGHOME that makes keys and signs files.

Plain functions and classes, no pytest, so any test module (or ``conftest.py``) can wrap
them in a fixture. Typical use, once per session because each key costs a few gpg runs::

    keys = KeySet.create()          # good, other, expired, revoked, subkey, expired_subkey
    keys.good.export(tmp / "trusted.asc")
    keys.good.sign(tmp / "plugin-1.0-py3-none-any.whl")            # -> ...whl.asc
    keys.good.sign(wheel, armor=False)                             # -> ...whl.sig
    ...
    keys.close()                    # stops the lab's gpg-agent, removes the home

All keys are ed25519 without a passphrase, made with ``--batch --quick-gen-key``.
Keys that must be expired *now* are made and used with ``--faked-system-time`` in 2020,
so their signatures were good when made and only the key's expiry condemns them.
A revoked key keeps a usable secret half here (gpg refuses to sign with a revoked key);
only its exported public key carries the revocation certificate, as an operator's would.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Long ago, so that a one-day expiry has long passed; "!" freezes the clock there.
PAST = "20200101T000000!"
# Within the one day those keys were valid: a signature made then was good then.
PAST_SIGNING = "20200101T120000!"


class GpgLabError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Key:
    lab: GpgLab = dataclasses.field(repr=False)
    name: str
    fingerprint: str  # primary key, 40 upper hex
    signing_fingerprint: str  # the key that signs: the primary, or a signing subkey
    signing_time: str | None = None  # --faked-system-time for signing, if the key has expired
    revocation: str | None = None  # armored revocation certificate, appended on export

    @property
    def email(self) -> str:
        return f"{self.name}@portal-boot.test"

    def export(self, path: Path) -> Path:
        """Write the armored public key (plus its revocation, if any) to ``path``."""
        return export_keys(path, self)

    def public_key(self, *, with_revocation: bool = True) -> str:
        """The armored public key, followed by its revocation certificate if it has one."""
        armored = self.lab.gpg("--armor", "--export", self.fingerprint).stdout.decode()
        if "BEGIN PGP PUBLIC KEY BLOCK" not in armored:
            raise GpgLabError(f"export of {self.name} produced no key")
        return armored + ((self.revocation or "") if with_revocation else "")

    def sign(
        self, file: Path, *, armor: bool = True, output: Path | None = None, inline: bool = False
    ) -> Path:
        """Sign ``file``; a detached signature beside it (``.asc``/``.sig``) by default.

        ``inline`` makes a non-detached signed message instead (to test that one is refused).
        """
        file = Path(file)
        suffix = ".asc" if armor else ".sig"
        output = Path(output) if output else file.with_name(file.name + suffix)
        args = ["--yes", "--local-user", f"{self.signing_fingerprint}!"]
        if self.signing_time:
            args += ["--faked-system-time", self.signing_time]
        if armor:
            args.append("--armor")
        args += ["--sign" if inline else "--detach-sign", "--output", str(output), str(file)]
        self.lab.gpg(*args)
        return output


def export_keys(path: Path, *keys: Key) -> Path:
    """Write several armored public keys into one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(key.public_key() for key in keys))
    return path


def concat_signatures(output: Path, *signatures: Path) -> Path:
    """One signature file holding several signatures (binary or armored blocks, in order)."""
    output = Path(output)
    output.write_bytes(b"".join(Path(s).read_bytes() for s in signatures))
    return output


class GpgLab:
    """A private GNUPGHOME with secret keys. Not thread-safe; close it when done."""

    def __init__(self) -> None:
        gpg = shutil.which("gpg")
        if gpg is None:
            raise GpgLabError("gpg is not installed")
        self.gpg_path = gpg
        # Under /tmp, short: gpg-agent's socket lives in the home, and socket paths are
        # limited to ~107 bytes (pytest's tmp_path can be longer).
        self.home = Path(tempfile.mkdtemp(prefix="pbk-", dir="/tmp"))
        self.env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.home),
            "GNUPGHOME": str(self.home),
            "LC_ALL": "C",
        }

    def gpg(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = [
            self.gpg_path, "--homedir", str(self.home), "--batch", "--no-tty",
            "--pinentry-mode", "loopback", "--passphrase", "", "--status-fd", "2", *args,
        ]  # fmt: skip
        done = subprocess.run(
            argv, env=self.env, input=input, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise GpgLabError(f"{' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done

    def _created(self, done: subprocess.CompletedProcess[bytes]) -> str:
        for line in done.stderr.decode().splitlines():
            if line.startswith("[GNUPG:] KEY_CREATED "):
                return line.split()[3]
        raise GpgLabError("gpg reported no KEY_CREATED")

    def generate(
        self,
        name: str,
        *,
        expired: bool = False,
        revoked: bool = False,
        signing_subkey: bool = False,
        expired_subkey: bool = False,
    ) -> Key:
        """Make a key called ``name``.

        ``expired``: the primary key expired in 2020. ``revoked``: its export carries a
        revocation. ``signing_subkey``: the primary can only certify and a subkey signs.
        ``expired_subkey``: like ``signing_subkey``, but that subkey expired in 2020.
        """
        uid = f"{name} <{name}@portal-boot.test>"
        past = expired or expired_subkey
        faked = ("--faked-system-time", PAST) if past else ()
        expiry = "1d" if past else "2y"
        two_keys = signing_subkey or expired_subkey
        primary = self._created(
            self.gpg(*faked, "--quick-gen-key", uid, "ed25519", "cert" if two_keys else "sign",
                     "never" if expired_subkey else expiry)
        )  # fmt: skip
        signer = primary
        if two_keys:
            signer = self._created(
                self.gpg(*faked, "--quick-add-key", primary, "ed25519", "sign", expiry)
            )
        revocation = None
        if revoked:
            # gpg writes a revocation certificate for every new key; its armor line is
            # prefixed with ":" so that it cannot be imported by accident.
            text = (self.home / "openpgp-revocs.d" / f"{primary}.rev").read_text()
            revocation = text.replace(":-----BEGIN PGP", "-----BEGIN PGP")
        signing_time = PAST_SIGNING if past else None
        return Key(self, name, primary, signer, signing_time=signing_time, revocation=revocation)

    def close(self) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run(
                [gpgconf, "--homedir", str(self.home), "--kill", "all"],
                env=self.env, capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        shutil.rmtree(self.home, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class KeySet:
    """The keys most tests need, made once."""

    lab: GpgLab
    good: Key
    other: Key  # a second valid key (a folder of several keys, unknown signer, allow-lists)
    expired: Key
    revoked: Key
    subkey: Key  # primary certifies only; a subkey signs
    expired_subkey: Key

    @classmethod
    def create(cls) -> KeySet:
        lab = GpgLab()
        try:
            return cls(
                lab=lab,
                good=lab.generate("good"),
                other=lab.generate("other"),
                expired=lab.generate("expired", expired=True),
                revoked=lab.generate("revoked", revoked=True),
                subkey=lab.generate("subkey", signing_subkey=True),
                expired_subkey=lab.generate("expiredsub", expired_subkey=True),
            )
        except BaseException:
            lab.close()
            raise

    def close(self) -> None:
        self.lab.close()
