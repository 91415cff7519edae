"""Proving that an install would change nothing, without staging or running gpg.

A warm boot's install is almost always a no-op. Proving it the slow way (copy every
wheel and signature into a staging folder, run gpg 3 + N times) costs 70-90 ms plus
~10 ms a wheel. Instead, whenever the wheels of a generation are verified (when it is
built, and when a later full run verifies the same wheels again), the generation
records the verification::

    "verified": {"digest": D, "verifier": V, "expires": E, "at": T, "request": R}

D (:func:`verification_digest`) is a sha256 over everything gpg's verdict depends on:
every wheel's name and sha256; every signature file's name and sha256 (which of
``.asc``/``.sig`` exist, and their bytes); the name and sha256 of every file under
``--trusted-keys`` (and whether it is a file or a folder); the allow-list; the
signature mode; the gpg binary (path, size, mtime); portal-boot's version and
verification rules; the interpreter and layout. E is
when the verdict lapses by the passage of time alone: the earliest expiry of every
signing (sub)key, its primary key and every signature (None: nothing expires). T is
when it was made. R is the pinned-request digest of an index install, V the gpg
binary and portal-boot rules (also in D) for the index check below.

A later install with ``--signatures require`` is a no-op that stages nothing and runs
no gpg when, hashing the wheel folder's files in place, D is the same, the
generation's own set digest matches the wheels, E is more than :data:`MARGIN` seconds
away and T is not in the future. This is safe because:

- **What is verified is what was installed.** D is recorded only after the staged
  copies of exactly these wheels were verified, into a generation whose set digest
  is the digest of those same bytes (built from them, or found equal to them). The
  files in the folder hash to the same sha256s now, so, short of a SHA-256
  collision, they are those bytes. And the no-op installs nothing: the folder is read
  only to be hashed, so a file swapped after hashing is never used.
- **The verdict would be the same.** gpg's inputs are all in D: the signed bytes and
  the signatures; the keyring, which is private and built from the key files alone
  (a revocation certificate added, a key removed or replaced changes D); the
  allow-list and the mode; gpg and portal-boot's rules. No trust database, keyserver
  or network takes part. The one input that changes by itself is the clock: E covers
  expiry (within MARGIN of it, gpg is asked again, and accepts until E), and T a clock
  set back before the verification.
- **Fail closed.** Anything unreadable, gpg missing from PATH (the full path then
  stops, as SPEC asks), a generation without a record (installed with ``--signatures
  off``, or by an older portal-boot), or any difference at all: the full path runs and
  decides exactly as before. A record made with signatures off cannot exist: the mode
  is in D, and nothing is recorded without a verification.
- The record lives inside the generation: whoever can rewrite it can as well rewrite
  the installed code, so trusting it gives no one a power they did not have.

With ``--signatures off`` the in-place comparison of the wheels' set digest suffices
(nothing is verified anyway); it never creates or satisfies a verification record.

Index installs keep their pinned-request no-op (it contacts nothing): the request
digest covers the exact pins, the ``PIP_*`` settings, the keys, the allow-list and
the mode. Under ``--signatures require`` it now also needs the record made for that
request, by the same gpg and rules (V), and honours E and T. The downloaded files
themselves are not hashed again (that needs the index): exact pins on an index that
does not replace published files stand for them, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import portal_boot
from portal_boot.wheels.request import Request
from portal_boot.wheels.staging import InstalledWheel, folder_wheels, sha256, signature_files

if TYPE_CHECKING:
    from portal_boot.wheels.signatures import Verified

log = logging.getLogger(__name__)

LAYOUT = 1  # bump when a generation's content would differ for the same wheels
# Within this many seconds of a signing key's (or signature's) expiry, or when the
# clock reads earlier than the recorded verification by more than this, gpg decides.
MARGIN = 60


# --- digests --------------------------------------------------------------------------


def _digest(payload: dict[str, Any]) -> str:
    base = {"layout": LAYOUT, "python": sys.implementation.cache_tag, "executable": sys.executable}
    return hashlib.sha256(json.dumps({**base, **payload}, sort_keys=True).encode()).hexdigest()


def set_digest(wheels: Sequence[InstalledWheel]) -> str:
    """The set's digest: each wheel's file name and sha256, the interpreter, the layout."""
    # The interpreter is in it because scripts' shebangs and the .pyc files depend on it.
    return _digest({"wheels": sorted((w.file, w.sha256) for w in wheels)})


def keys_digest(keys: Path | None) -> str | None:
    """``--trusted-keys``: whether it is a file or a folder (a folder imports only
    ``*.asc``, ``*.gpg``...), and each file's name and sha256 (for a folder, every
    file in it, key or not, hidden or not: a superset of what gets imported).
    None when anything cannot be read: then nothing can be proven."""
    if keys is None:
        return "none"
    try:
        if keys.is_dir():
            kind, files = "folder", sorted(p for p in keys.iterdir() if p.is_file())
        else:
            kind, files = "file", [keys]
        entries = [(path.name, hashlib.sha256(path.read_bytes()).hexdigest()) for path in files]
    except OSError:
        return None
    return hashlib.sha256(json.dumps([kind, entries]).encode()).hexdigest()


def _fingerprints(request: Request) -> list[str]:
    return sorted({f.replace(" ", "").upper() for f in request.trusted_fingerprints})


def _verifier(environ: Mapping[str, str]) -> str | None:
    """What would verify: the gpg binary (path, size, mtime) and portal-boot's rules;
    None when there is no gpg on PATH."""
    from portal_boot.wheels.signatures import RULES, find_gpg

    binary = find_gpg(environ)
    if binary is None:
        return None
    try:
        real = os.path.realpath(binary)
        stat = os.stat(real)
    except OSError:
        return None
    return f"{real} {stat.st_size} {stat.st_mtime_ns}; portal-boot {portal_boot.__version__} rules {RULES}"


def request_digest(request: Request) -> str | None:
    """For an index install: a digest of everything that decides what gets installed
    and whether it is trusted, or None unless every requirement is an exact pin
    (``==1.0.0``), the only case where the same request means the same files."""
    from packaging.requirements import InvalidRequirement, Requirement

    from portal_boot.wheels.index import pip_env

    for raw in request.requirements:
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            return None
        specs = list(req.specifier)
        pinned = len(specs) == 1 and specs[0].operator in ("==", "===")
        if req.url or not pinned or "*" in specs[0].version:
            return None
    keys = keys_digest(request.trusted_keys)
    if keys is None:
        return None
    pip = sorted((k, v) for k, v in pip_env(request.environ).items() if k.startswith("PIP_"))
    return _digest(
        {
            "requirements": sorted(request.requirements),
            "pip": pip,
            "signatures": request.signatures,
            "fingerprints": _fingerprints(request),
            "keys": keys,
        }
    )


def verification_digest(request: Request, files: Iterable[tuple[str, str]]) -> str | None:
    """D: ``files`` (each wheel's and each signature file's name and sha256) and
    everything else gpg's verdict depends on. None when the keys cannot be read or
    gpg is not on PATH (then the full path runs, and fails closed)."""
    keys = keys_digest(request.trusted_keys)
    verifier = _verifier(request.environ)
    if keys is None or verifier is None:
        return None
    return _digest(
        {
            "files": sorted(files),
            "keys": keys,
            "fingerprints": _fingerprints(request),
            "signatures": request.signatures,
            "verifier": verifier,
        }
    )


# --- the record -----------------------------------------------------------------------


def record(
    request: Request,
    files: Iterable[tuple[str, str]],
    verified: Sequence[Verified],
    pins: str | None,
) -> dict[str, Any] | None:
    """The ``verified`` entry of a generation's state, for a verification of ``files``
    that just passed; None when it could not be proven again anyway."""
    from portal_boot.wheels.signatures import earliest

    digest = verification_digest(request, files)
    if digest is None:
        return None
    return {
        "digest": digest,
        "verifier": _verifier(request.environ),
        "expires": earliest(*(v.expires for v in verified)),
        "at": int(time.time()),
        "request": pins,
    }


def _lapsed(entry: dict[str, Any], now: float) -> str | None:
    """Why a recorded verification no longer holds by time alone, or None."""
    expires, at = entry.get("expires"), entry.get("at")
    if not isinstance(at, int) or (expires is not None and not isinstance(expires, int)):
        return "the recorded verification is unreadable"
    if at > now + MARGIN:
        return "the clock reads earlier than the recorded verification"
    if expires is not None and expires <= now + MARGIN:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
        return f"a signing key or signature expires or expired at {when}"
    return None


def _verified(state: dict[str, Any]) -> dict[str, Any] | None:
    entry = state.get("verified")
    return entry if isinstance(entry, dict) else None


def folder_unchanged(
    request: Request, state: dict[str, Any], now: float | None = None
) -> tuple[bool, str]:
    """Whether installing the wheel folder would be a no-op, from hashes taken in
    place: (True, what was proven) or (False, why the full path must run).

    Raises UsageError for an unusable wheel folder (as the full path would)."""
    assert request.wheel_dir is not None
    now = time.time() if now is None else now
    files, wheels = [], []
    try:
        for path in folder_wheels(request.wheel_dir):
            wheel_sha = sha256(path)
            wheels.append(InstalledWheel("", "", path.name, wheel_sha, None))
            files.append((path.name, wheel_sha))
            if request.signatures == "require":
                files += [(sig.name, sha256(sig)) for sig in signature_files(path)]
    except OSError as exc:  # the full path fails closed on it, with the right message
        return False, f"cannot read {exc.filename}"
    if set_digest(wheels) != state.get("digest"):
        return False, "the wheels differ from the installed ones"
    if request.signatures == "off":
        return True, "same wheels"
    entry = _verified(state)
    if entry is None:
        return (
            False,
            "no verification recorded (installed with signatures off, or by an older version)",
        )
    digest = verification_digest(request, files)
    if digest is None:
        return False, "the trusted keys cannot be read, or gpg is not on PATH"
    if entry.get("digest") != digest:
        return False, "the signatures, keys, allow-list or gpg differ from the verified ones"
    why = _lapsed(entry, now)
    if why:
        return False, why
    return True, "same wheels, signatures and keys as verified before (no gpg run)"


def request_unchanged(
    request: Request, state: dict[str, Any], pins: str, now: float | None = None
) -> tuple[bool, str]:
    """The same for an index install with exact pins: (True, ...) when the current
    generation was installed, and verified, for this very request."""
    if state.get("request") != pins:
        return False, "the requirements, index settings or keys differ"
    if request.signatures == "off":  # the mode is in the request digest
        return True, "same pinned requirements and index settings"
    entry = _verified(state)
    if entry is None or entry.get("request") != pins:
        return False, "no verification recorded for these requirements"
    if entry.get("verifier") != _verifier(request.environ):
        return False, "gpg (or portal-boot) differs from the one that verified, or is missing"
    why = _lapsed(entry, time.time() if now is None else now)
    if why:
        return False, why
    return True, "same pinned requirements and index settings"


def staged_files(staged: Mapping[Path, str]) -> list[tuple[str, str]]:
    """Each staged wheel's and signature's name and sha256 (the staging folder is
    private: these are the bytes gpg read)."""
    files = []
    for path, digest in staged.items():
        files.append((path.name, digest))
        files += [(sig.name, sha256(sig)) for sig in signature_files(path)]
    return files
