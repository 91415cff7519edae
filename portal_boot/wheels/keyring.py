"""gpg over a private, temporary keyring that holds only the operator's keys.

:class:`Keyring` imports ``--trusted-keys`` into a fresh ``/tmp/pbgpg-*`` home (mode
0700, removed afterwards) and judges one wheel's signatures from gpg's status lines.
Every gpg it starts is tracked, so a SIGTERM never leaves one running. The verdicts
and what they mean are in :mod:`portal_boot.wheels.signatures`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot import proc
from portal_boot.errors import SignatureError, who
from portal_boot.proc import signals_deferred
from portal_boot.wheels.signatures import (
    _FPRS,
    _KEYS,
    _RESIGN,
    BAD,
    EXPIRED_KEY,
    EXPIRED_SIGNATURE,
    KEY_SUFFIXES,
    MISSING,
    NOT_ALLOWED,
    REVOKED_KEY,
    SIGNATURE_SUFFIXES,
    UNKNOWN_KEY,
    UNREADABLE,
    VALID,
    Verdict,
    earliest,
    find_gpg,
    timestamp,
)

if TYPE_CHECKING:
    import gnupg  # imported when a keyring is opened: a warm boot's no-op runs no gpg

log = logging.getLogger(__name__)

# On every call: no trust database, no keyserver, no gpg-agent or dirmngr (checking
# signatures needs neither, and a started agent would outlive us).
_GPG_OPTIONS = ["--trust-model", "always", "--no-autostart", "--no-auto-key-retrieve"]
# Except on import: with "always", gpg 2.2 applies a lone revocation certificate, then
# dies with "Fatal: can't open trustdb.gpg" before reporting anything.
_IMPORT_ARGS = ["--trust-model", "pgp"]
# Key validity letters (gpg --with-colons) that disqualify a signing key.
_UNUSABLE = {"e": EXPIRED_KEY, "r": REVOKED_KEY, "i": BAD, "d": BAD, "n": BAD}
# Status keywords that mean something went wrong, whatever else was reported.
_TROUBLE = ("NODATA", "UNEXPECTED", "FAILURE", "ERROR")



class Keyring:
    def __init__(self, gpg: gnupg.GPG, allowed: frozenset[str]) -> None:
        self.gpg = gpg
        self.allowed = allowed
        self.known: dict[str, tuple[str, str]] = {}  # key or subkey -> (primary, validity)
        self.expires: dict[str, int | None] = {}  # key or subkey -> its expiry (None: never)

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, keys: Path | None, fingerprints: Sequence[str], environ: Mapping[str, str]
    ) -> Iterator[Keyring]:
        if keys is None:
            raise SignatureError(
                f"no trusted keys: set {_KEYS} to a file or folder of the signers' public "
                "keys (or, strongly discouraged, turn checks off with --signatures off)"
            )
        files = _key_files(Path(keys))
        binary = find_gpg(environ)
        if binary is None:
            raise SignatureError("gpg not found on PATH: install GnuPG 2 in the image (gpg)")
        _quiet_gnupg()
        home = _private_home(environ)
        env = {**environ, "GNUPGHOME": str(home)}
        children: list[subprocess.Popen[bytes]] = []
        try:
            try:
                gpg = _tracked_gpg(children)(
                    gpgbinary=binary, gnupghome=str(home), env=env, options=_GPG_OPTIONS
                )
            except (OSError, ValueError) as exc:
                raise SignatureError(f"cannot run {binary}: {exc}") from None
            ring = cls(gpg, frozenset(f.replace(" ", "").upper() for f in fingerprints))
            ring._load(files)
            yield ring
        finally:
            _stop(children)
            _remove_home(home, binary, env)

    def _load(self, files: list[Path]) -> None:
        # gpg drops a revocation certificate whose key is not there yet: retry those files.
        for path in [p for p in files if not self._import(p)]:
            if not self._import(path):
                raise SignatureError(
                    f"{path} holds no OpenPGP public key: put the signers' public keys "
                    f"(gpg --armor --export FINGERPRINT) in {_KEYS}"
                )
        for key in self.gpg.list_keys():
            primary = key["fingerprint"]
            self.known[primary] = (primary, key.get("trust", ""))
            self.expires[primary] = timestamp(key.get("expires"))
            for sub in (key.get("subkey_info") or {}).values():
                self.known[sub["fingerprint"]] = (primary, sub.get("trust", ""))
                self.expires[sub["fingerprint"]] = timestamp(sub.get("expires"))
        primaries = {primary for primary, _ in self.known.values()}
        if not primaries:
            raise SignatureError(f"no public key could be imported from {_KEYS}")
        log.debug("trusted keys: %s", ", ".join(sorted(primaries)))
        for fpr in sorted(self.allowed - primaries):
            owner = self.known.get(fpr, (None, ""))[0]
            hint = f" (a subkey: list its primary {owner} instead)" if owner else ""
            log.warning("%s is in %s but not among the trusted keys%s", fpr, _FPRS, hint)

    def _import(self, path: Path) -> bool:
        """Import one key file; False when it held nothing usable (yet)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignatureError(
                f"cannot read key file {path} ({exc.strerror or exc}) as {who()}: make it "
                "readable (chmod a+r)"
            ) from None
        result = self.gpg.import_keys(data, extra_args=_IMPORT_ARGS)
        if result.sec_read:
            raise SignatureError(
                f"{path} holds a secret key: give {_KEYS} public keys only "
                "(gpg --armor --export FINGERPRINT) and keep secret keys out of the image"
            )
        if result.not_imported:
            log.warning("%s: %d key(s) could not be imported", path, result.not_imported)
        log.debug("%s: %d key(s), %d revocation(s)", path, len(result.fingerprints), result.n_revoc)
        return bool(result.fingerprints or result.n_revoc)

    def judge(self, wheel: Path) -> Verdict:
        signatures = [wheel.with_name(wheel.name + s) for s in SIGNATURE_SUFFIXES]
        signatures = [s for s in signatures if s.exists()]
        if not signatures:
            how = f"sign it with a key in {_KEYS} (gpg --armor --detach-sign {wheel.name})"
            return Verdict(wheel, MISSING, detail=f"no {wheel.name}.asc or .sig beside it: {how}")
        try:
            with wheel.open("rb"):
                pass
        except OSError as exc:
            why = f"cannot read it ({exc.strerror or exc}) as {who()}: make it readable (chmod a+r)"
            return Verdict(wheel, UNREADABLE, detail=why)
        verdicts = [self._judge_file(wheel, sig) for sig in signatures]
        failed = next((v for v in verdicts if v.state != VALID), None)
        if failed:
            return failed
        return dataclasses.replace(verdicts[0], expires=earliest(*(v.expires for v in verdicts)))

    def _judge_file(self, wheel: Path, sig: Path) -> Verdict:
        try:
            result = self.gpg.verify_file(str(sig), data_filename=str(wheel))
        except OSError as exc:
            why = f"cannot read {sig.name} ({exc.strerror or exc}) as {who()}: make it readable"
            return Verdict(wheel, UNREADABLE, sig, detail=why)
        # Status lines, not python-gnupg's summary, which keeps only the last of them.
        output = (result.stderr or "").splitlines()
        lines = [f for f in (ln[9:].split() for ln in output if ln.startswith("[GNUPG:]")) if f]
        log.debug("gpg --verify %s: %s", sig.name, " | ".join(" ".join(f) for f in lines))
        groups: list[dict[str, list[str]]] = []  # one per signature in the file
        for keyword, *fields in lines:
            if keyword == "NEWSIG":
                groups.append({})
            elif groups:
                groups[-1].setdefault(keyword, fields)
        if not groups:
            detail = f"{sig.name} holds no detached OpenPGP signature: {_RESIGN}"
            return Verdict(wheel, BAD, sig, detail=detail)
        signer, expires = None, []
        for group in groups:
            state, fpr, detail = self._judge_signature(sig, group)
            if state != VALID:
                return Verdict(wheel, state, sig, fpr, detail)
            signer = signer or fpr
            expires.append(self._expiry(group))
        # Belt and braces: nothing went wrong on the side, and gpg and python-gnupg agree.
        trouble = next((" ".join(f) for f in lines if f[0] in _TROUBLE), None)
        if trouble or result.returncode != 0 or not result.valid:
            why = trouble or f"exit status {result.returncode}"
            detail = f"gpg did not accept {sig.name} ({why}): {_RESIGN}"
            return Verdict(wheel, BAD, sig, signer, detail)
        return Verdict(wheel, VALID, sig, signer, expires=earliest(*expires))

    def _expiry(self, g: dict[str, list[str]]) -> int | None:
        """When a good signature's verdict lapses: the signing key's, its primary's or
        the signature's own expiry (VALIDSIG's fourth field), whichever comes first."""
        valid = g["VALIDSIG"]  # a VALID signature always has one
        signing = valid[0]
        primary = valid[9] if len(valid) > 9 else signing
        own = timestamp(valid[3]) if len(valid) > 3 else None
        # A key we did not list cannot sign validly; 0 = "lapsed", never skip on it.
        keys = [self.expires.get(fpr, 0) for fpr in dict.fromkeys((signing, primary))]
        return earliest(own, *keys)

    def _judge_signature(self, sig: Path, g: dict[str, list[str]]) -> tuple[str, str | None, str]:
        """(state, primary fingerprint, detail) of one signature's status lines."""
        if "BADSIG" in g:
            why = "changed after signing, or made for another file"
            return BAD, None, f"{sig.name} does not match it ({why}): {_RESIGN}"
        if "ERRSIG" in g:
            fields = g["ERRSIG"]
            issuer = fields[6] if len(fields) > 6 else fields[0]
            if "NO_PUBKEY" in g or fields[5:6] == ["9"]:
                fix = f"add that public key there, or {_RESIGN}"
                return UNKNOWN_KEY, None, f"signed by key {issuer}, which is not in {_KEYS}: {fix}"
            why = f"error {' '.join(fields[5:6])}, e.g. an unsupported algorithm"
            return BAD, None, f"gpg cannot check {sig.name} ({why}): {_RESIGN}"
        valid = g.get("VALIDSIG", [])
        signing = valid[0] if valid else None
        primary = valid[9] if len(valid) > 9 else signing
        if primary is None:  # revoked or expired without VALIDSIG: find the key by its id
            keyid = (g.get("REVKEYSIG") or g.get("EXPKEYSIG") or [""])[0]
            owners = [p for f, (p, _) in self.known.items() if keyid and f.endswith(keyid)]
            primary = owners[0] if owners else None
        if "REVKEYSIG" in g or "KEYREVOKED" in g:
            return REVOKED_KEY, primary, f"signing key {primary} is revoked: {_RESIGN}"
        if "EXPKEYSIG" in g or "KEYEXPIRED" in g:
            fix = f"extend it (gpg --quick-set-expire) and export it to {_KEYS} again, or {_RESIGN}"
            return EXPIRED_KEY, primary, f"signing key {primary} has expired: {fix}"
        if "EXPSIG" in g or "SIGEXPIRED" in g:
            return EXPIRED_SIGNATURE, primary, f"{sig.name} has expired: {_RESIGN}"
        if "GOODSIG" not in g or signing is None or primary is None:
            return BAD, primary, f"gpg reported no good signature in {sig.name}: {_RESIGN}"
        for fpr in dict.fromkeys((signing, primary)):
            owner, validity = self.known.get(fpr, (None, ""))
            if owner != primary:  # impossible with a keyring of only these keys: fail closed
                return UNKNOWN_KEY, None, f"signed by key {signing}, which is not in {_KEYS}"
            if validity in _UNUSABLE:
                why = f"signing key {fpr} is not usable (validity {validity})"
                return _UNUSABLE[validity], primary, f"{why}: {_RESIGN}"
        if self.allowed and primary not in self.allowed:
            fix = "add it there, or re-sign the wheel with a listed key"
            return NOT_ALLOWED, primary, f"signer {primary} is not in {_FPRS}: {fix}"
        return VALID, primary, ""


def _tracked_gpg(children: list[subprocess.Popen[bytes]]) -> type[gnupg.GPG]:
    """python-gnupg's GPG, noting every gpg it starts in ``children``: it starts them
    with its own Popen, not :mod:`portal_boot.proc`, and a SIGTERM that interrupts its
    wait would otherwise leave that gpg running after portal-boot has gone."""
    import gnupg

    class TrackedGPG(gnupg.GPG):
        def _open_subprocess(self, *args: object, **kwargs: object) -> subprocess.Popen[bytes]:
            with _signals_deferred():
                child = super()._open_subprocess(*args, **kwargs)
                children.append(child)
            return child

    return TrackedGPG


# A handler that raises (SIGTERM's Terminated) inside Popen, after the fork but before
# Popen returns, would leave a running gpg that no one holds: hold signals back there.
_signals_deferred = signals_deferred


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    """Stop and reap any gpg still running (none, unless an exception interrupted one)."""
    for child in children:
        if child.poll() is not None:
            continue
        child.terminate()
        try:
            child.wait(0.5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _key_files(keys: Path) -> list[Path]:
    if keys.is_dir():
        files = sorted(
            p for p in keys.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in KEY_SUFFIXES and p.is_file()
        )  # fmt: skip
        if not files:
            raise SignatureError(
                f"no key files ({', '.join('*' + s for s in KEY_SUFFIXES)}) in {keys}: export "
                f"the signers' public keys there, or point {_KEYS} at a key file"
            )
        return files
    if keys.exists():
        return [keys]
    raise SignatureError(f"trusted keys {keys} do not exist: fix {_KEYS}")


def _private_home(environ: Mapping[str, str]) -> Path:
    # Short and under /tmp: should gpg ever start an agent, its socket lives here, and
    # socket paths are limited to ~107 bytes. mkdtemp makes it 0700, as gpg insists.
    for parent in ("/tmp", environ.get("TMPDIR")):
        if parent:
            with contextlib.suppress(OSError):
                return Path(tempfile.mkdtemp(prefix="pbgpg-", dir=parent))
    raise SignatureError("cannot create a private keyring folder: make /tmp (or $TMPDIR) writable")


def _remove_home(home: Path, binary: str, env: Mapping[str, str]) -> None:
    gpgconf = shutil.which("gpgconf", path=str(Path(binary).parent)) or shutil.which(
        "gpgconf", path=env.get("PATH", os.defpath)
    )
    try:
        if gpgconf:
            # --no-autostart should leave nothing to stop; make sure nothing outlives us.
            # Signals wait for it (a few ms): stopped midway, gpgconf would orphan the
            # gpg-connect-agent it starts.
            try:
                with _signals_deferred():
                    proc.run([gpgconf, "--homedir", home, "--kill", "all"], env=env,
                             error=SignatureError, what="gpgconf --kill all", check=False)  # fmt: skip
            except SignatureError as exc:
                log.debug("%s", exc)
    finally:
        shutil.rmtree(home, ignore_errors=True)


class _QuietGnupg(logging.Filter):
    """python-gnupg logs the first 256 bytes of every imported key (and signature) at
    debug, and key material must never reach the output; it also warns about every
    non-zero gpg exit, which this module reports better itself."""

    _DROP = ("import_keys: ", "scan_keys: ", "Wrote to temp file: ", "chunk: ",
             "gpg returned a non-zero error code", "potential problem: ")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._DROP) and "BEGIN PGP" not in record.getMessage()


def _quiet_gnupg() -> None:
    logger = logging.getLogger("gnupg")  # python-gnupg's module logger
    if not any(isinstance(f, _QuietGnupg) for f in logger.filters):
        logger.addFilter(_QuietGnupg())
