"""Verify the detached OpenPGP signatures of plugin wheels against the operator's keys.

A wheel ``X.whl`` is accepted only when ``X.whl.asc`` and/or ``X.whl.sig`` lies beside it
and, for every signature in every such file, gpg reports a good signature by a key that
is neither expired nor revoked (nor is its signing subkey), and, when an allow-list is
given, whose *primary* fingerprint is on it. Anything else fails closed.

The keyring is private and temporary (``/tmp/pbgpg-*``, mode 0700, removed afterwards)
and holds only the operator's keys: ``--trusted-keys`` is one key file (any name), or a
folder whose visible ``*.asc``, ``*.gpg``, ``*.pub`` and ``*.key`` files are all imported
(armored or binary; other files and sub-folders, such as Kubernetes' ``..data``, are
skipped). A revocation certificate may sit in a file of its own. GnuPG's trust database
plays no part (``--trust-model always``), so validity is judged here, from gpg's status
lines, never from python-gnupg's ``status``, which reads "signature valid" for an
expired or revoked key.

Each verification also reports when it stops holding by the passage of time alone:
the earliest expiry of the signing key, its primary key and the signature itself
(None when none of them expires). :mod:`portal_boot.wheels.unchanged` records it, so that a warm
boot can skip gpg until then.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from portal_boot.errors import SignatureError

log = logging.getLogger(__name__)

KEY_SUFFIXES = (".asc", ".gpg", ".pub", ".key")
SIGNATURE_SUFFIXES = (".asc", ".sig")
# Bump whenever this module starts refusing something it used to accept: the
# verifications recorded by earlier rules then no longer let a warm boot skip gpg.
RULES = 1

# The states check() reports, one per wheel.
VALID = "valid"
MISSING = "missing signature"
BAD = "bad signature"
UNKNOWN_KEY = "unknown key"
EXPIRED_KEY = "expired key"
REVOKED_KEY = "revoked key"
EXPIRED_SIGNATURE = "expired signature"
NOT_ALLOWED = "not on allow-list"
UNREADABLE = "unreadable"
NOT_CHECKED = "not checked"  # the keyring could not be set up: no keys, no gpg, ...

_KEYS = "--trusted-keys / PORTAL_BOOT_TRUSTED_KEYS"
_FPRS = "--trusted-fingerprint / PORTAL_BOOT_TRUSTED_FINGERPRINTS"
_RESIGN = f"re-sign the wheel with a valid key in {_KEYS}"

@dataclasses.dataclass(frozen=True)
class Verified:
    path: Path  # the wheel file that was verified
    signature: Path  # the .asc or .sig used (the .asc when both were there, and both verified)
    fingerprint: str  # primary-key fingerprint of the signer (40 hex, upper)
    # Seconds since the epoch when this verdict stops holding: the earliest expiry of
    # every signing key, its primary and every signature involved; None: never.
    expires: int | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    wheel: Path
    state: str
    signature: Path | None = None
    fingerprint: str | None = None  # the signer's primary key, when known
    detail: str = ""  # what happened and what to do, for the error line
    expires: int | None = None  # see Verified.expires (VALID verdicts only)


def earliest(*moments: int | None) -> int | None:
    """The earliest of ``moments``, None (never) when all are None."""
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def timestamp(raw: str | None) -> int | None:
    """gpg's expiry field: empty or "0" is never; seconds since the epoch, or (with some
    options) ISO 8601 ``20200102T000000``. Unreadable counts as already expired (0),
    so that nothing is ever skipped on a value we do not understand."""
    raw = (raw or "").strip()
    if raw in ("", "0"):
        return None
    if raw.isdigit():
        return int(raw)
    import calendar
    import time

    try:
        return calendar.timegm(time.strptime(raw, "%Y%m%dT%H%M%S"))
    except ValueError:
        return 0


def find_gpg(environ: Mapping[str, str]) -> str | None:
    """The gpg binary on the children's PATH (never os.environ's), or None."""
    search = environ.get("PATH", os.defpath)
    return shutil.which("gpg", path=search) or shutil.which("gpg2", path=search)


def verify_files(
    wheels: Sequence[Path],
    *,
    keys: Path | None,
    fingerprints: Sequence[str] = (),
    environ: Mapping[str, str],
) -> list[Verified]:
    """Verify every wheel; return them with their signers.

    Raises :class:`SignatureError`, one line naming the (first) failing wheel, for a
    missing, bad or unreadable signature; an unknown, expired, revoked or not allowed
    key; no usable trusted keys; gpg missing; or any gpg failure.
    """
    if not wheels:
        return []
    try:
        verdicts = _judge_all(wheels, keys, fingerprints, environ)
    except SignatureError as exc:
        names = Path(wheels[0]).name + (f" and {len(wheels) - 1} more" if wheels[1:] else "")
        raise SignatureError(f"cannot verify {names}: {exc}") from None
    failed = [v for v in verdicts if v.state != VALID]
    if failed:
        first = failed[0]
        more = f" ({len(failed) - 1} more failed: see portal-boot status)" if failed[1:] else ""
        raise SignatureError(f"{first.wheel.name}: {first.state}: {first.detail}{more}")
    verified = []
    for v in verdicts:
        assert v.signature is not None and v.fingerprint is not None  # a VALID verdict has both
        log.info("verified %s: signed by %s", v.wheel.name, v.fingerprint)
        verified.append(Verified(v.wheel, v.signature, v.fingerprint, v.expires))
    return verified


def check(
    wheels: Sequence[Path],
    *,
    keys: Path | None,
    fingerprints: Sequence[str] = (),
    environ: Mapping[str, str],
) -> list[tuple[Path, str | None, str]]:
    """Each wheel's (path, signer's primary fingerprint or None, state), for ``status``.

    Never raises :class:`SignatureError`. A state is one of this module's constants
    (``VALID``, ``MISSING``, ``BAD``, ...); every wheel is ``NOT_CHECKED`` when the
    keyring cannot be set up, and the reason is logged as a warning.
    """
    if not wheels:
        return []
    try:
        verdicts = _judge_all(wheels, keys, fingerprints, environ)
    except SignatureError as exc:
        log.warning("signatures not checked: %s", exc)
        return [(Path(w), None, NOT_CHECKED) for w in wheels]
    return [(v.wheel, v.fingerprint, v.state) for v in verdicts]


def _judge_all(
    wheels: Sequence[Path],
    keys: Path | None,
    fingerprints: Sequence[str],
    environ: Mapping[str, str],
) -> list[Verdict]:
    """One verdict per wheel; raises SignatureError only when the keyring cannot be set up."""
    from portal_boot.wheels.keyring import Keyring

    with Keyring.open(keys, fingerprints, environ) as ring:
        return [ring.judge(Path(wheel)) for wheel in wheels]
