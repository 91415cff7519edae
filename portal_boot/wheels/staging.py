"""The private staging folder: what is verified is what is installed.

Every wheel (and its ``.asc``/``.sig``) is copied from the wheel folder, or
downloaded from an index, into a fresh ``mkdtemp`` folder (mode 0700) and hashed
in the same pass. Signatures are checked on those copies and those copies are
installed; nothing reads the wheel folder again, so a wheel swapped after the
check is never installed.

Decisions (README): a wheel folder with no ``*.whl`` is refused (status 2): on an
air-gapped site that is almost always a volume that did not mount, and taking it
as "no plugins" would uninstall them all. Source distributions in the folder are
ignored with a warning (never built). Two versions of one distribution are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot.errors import InstallError, SignatureError, UsageError, who
from portal_boot.wheels.request import Request

if TYPE_CHECKING:
    from portal_boot.wheels.signatures import Verified

log = logging.getLogger(__name__)

_SDISTS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
_SIGNATURES = (".asc", ".sig")  # signatures.SIGNATURE_SUFFIXES (a test holds them equal)
WHEEL_DIR = "--wheel-dir / PORTAL_BOOT_WHEEL_DIR"


@dataclasses.dataclass(frozen=True)
class InstalledWheel:
    name: str
    version: str
    file: str
    sha256: str
    signer: str | None  # the signing key's fingerprint; None with --signatures off


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh private folder, removed afterwards.

    In the system temp, not beside the target: a warm boot that turns out to be a
    no-op must work with a read-only or root-owned target (a baked image)."""
    path = Path(tempfile.mkdtemp(prefix="portal-boot-staging-"))
    log.debug("install: staging into %s", path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def folder_wheels(wheel_dir: Path) -> list[Path]:
    """The ``*.whl`` files of the wheel folder. Raises UsageError when it is missing,
    unreadable or holds no wheel."""
    try:
        entries = sorted(wheel_dir.iterdir())
    except FileNotFoundError:
        raise UsageError(
            f"the wheel folder {wheel_dir} does not exist: fix {WHEEL_DIR} (is the volume mounted?)"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot read the wheel folder {wheel_dir} ({exc.strerror}) as {who()}: fix "
            f"{WHEEL_DIR}, or make the folder readable for this user (chmod a+rx)"
        ) from None
    wheels = [path for path in entries if path.name.endswith(".whl") and path.is_file()]
    sdists = [path.name for path in entries if path.name.endswith(_SDISTS)]
    if sdists:
        log.warning(
            "install: ignoring %s in %s: source distributions are never installed (building "
            "one runs arbitrary code); put the plugin's wheel there instead",
            ", ".join(sdists),
            wheel_dir,
        )
    if not wheels:
        only = " (only source distributions)" if sdists else ""
        raise UsageError(
            f"no wheels (*.whl) in the wheel folder {wheel_dir}{only}: an empty folder is "
            f"refused, not taken as 'no plugins' (an unmounted volume?); put the signed "
            f"wheels there, or to remove every plugin unset {WHEEL_DIR} and install with "
            "--no-plugins / PORTAL_BOOT_NO_PLUGINS=true"
        )
    return wheels


def signature_files(wheel: Path) -> list[Path]:
    """The ``.asc`` and ``.sig`` files beside ``wheel``: the ones that are staged with it
    (and hashed in place by :mod:`portal_boot.wheels.unchanged`)."""
    candidates = [wheel.with_name(wheel.name + suffix) for suffix in _SIGNATURES]
    return [path for path in candidates if path.is_file()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, dest: Path) -> str:
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, dest.open("xb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        # Fail closed: an unreadable wheel or signature is a verification failure.
        raise SignatureError(
            f"{source}: cannot read it ({exc.strerror}) as {who()}: make it readable for "
            "this user (chmod a+r, e.g. 0644)"
        ) from None
    return digest.hexdigest()


def stage(request: Request, staging: Path) -> dict[Path, str]:
    """Copy or download every wheel, with its signature, into ``staging``.
    Returns each staged wheel with its sha256."""
    if request.requirements:
        from portal_boot.wheels import index

        downloads = index.resolve(request.requirements, request.environ)
        if not downloads:
            log.info("install: the image already provides every requirement")
        return index.download(
            downloads, staging, request.environ, signatures=request.signatures == "require"
        )
    assert request.wheel_dir is not None
    staged = {}
    for wheel in folder_wheels(request.wheel_dir):
        staged[staging / wheel.name] = _copy(wheel, staging / wheel.name)
        for signature in signature_files(wheel):
            _copy(signature, staging / signature.name)
    return staged


def verify(request: Request, staged: Sequence[Path]) -> dict[str, Verified | None]:
    """Each staged wheel's name with its verification (None with signatures off).
    Raises SignatureError (also for no trusted keys: nothing unsigned runs)."""
    if request.signatures == "off":
        return {path.name: None for path in staged}
    if not staged:
        return {}
    from portal_boot.wheels import signatures

    verified = signatures.verify_files(
        list(staged),
        keys=request.trusted_keys,
        fingerprints=request.trusted_fingerprints,
        environ=request.environ,
    )
    return {item.path.name: item for item in verified}


def _supported_tags() -> set[Any]:
    from packaging.tags import sys_tags

    return set(sys_tags())


def _unsafe_entry(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (
        name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
        or ".." in parts
        or "\0" in name
    )


def _inspect(path: Path, digest: str, signer: str | None, supported: set[Any]) -> InstalledWheel:
    """Refuse, before anything is written, a wheel that cannot be installed here safely."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, version, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise InstallError(f"{path.name} is not a valid wheel name ({exc})") from None
    if not tags & supported:
        raise InstallError(
            f"{path.name} is not built for this interpreter (Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} on {sys.platform}): provide a wheel "
            "for the image's Python and platform"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstallError(
            f"{path.name} is not a valid wheel (corrupt zip: {exc}): rebuild it"
        ) from None
    escaping = [entry for entry in names if _unsafe_entry(entry)]
    if escaping:
        raise InstallError(
            f"{path.name} holds entries that would escape the target ({escaping[0]!r}): refused"
        )
    return InstalledWheel(str(name), str(version), path.name, digest, signer)


@dataclasses.dataclass(frozen=True)
class Prepared:
    wheels: list[tuple[Path, InstalledWheel]]  # each staged wheel with what it is
    staged: dict[Path, str]  # each staged wheel with its sha256
    verified: list[Verified]  # empty with --signatures off


def prepare(request: Request, staging: Path, timings: dict[str, float] | None = None) -> Prepared:
    """Stage, verify and inspect every wheel; the seconds each step took go into
    ``timings``. Raises SignatureError, UsageError or InstallError; writes only into
    ``staging``."""
    timings = {} if timings is None else timings
    started = time.monotonic()
    staged = stage(request, staging)
    timings["stage"] = time.monotonic() - started
    results = verify(request, list(staged))
    timings["verify"] = time.monotonic() - started - timings["stage"]
    started = time.monotonic()
    supported = _supported_tags()
    wheels = []
    seen: dict[str, str] = {}
    for path, digest in staged.items():
        item = results.get(path.name)
        wheel = _inspect(path, digest, item.fingerprint if item else None, supported)
        if wheel.name in seen:
            raise InstallError(
                f"two wheels of {wheel.name}: {seen[wheel.name]} and {wheel.file}: keep one"
            )
        seen[wheel.name] = wheel.file
        wheels.append((path, wheel))
    timings["inspect"] = time.monotonic() - started
    return Prepared(wheels, staged, [item for item in results.values() if item is not None])
