"""Stage 1 and 2: verify the plugin wheels' signatures and install them.

The stage's entry functions, over the settings; everything in this package below
them takes a :class:`~portal_boot.wheels.request.Request` or plain values. Reading
order: :mod:`.installer` (the driver), :mod:`.staging` (what is verified is what is
installed), :mod:`.signatures` and :mod:`.keyring` (gpg), :mod:`.unchanged` (proving
a warm install is a no-op), :mod:`.build` (a generation: :mod:`.unpack` unpacks and compiles on every core,
:mod:`.requirements` checks), :mod:`.generations` (the atomic switch), :mod:`.index`
(downloads from an index).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.errors import SignatureError
from portal_boot.settings import Settings
from portal_boot.wheels.generations import current_generation, read_state
from portal_boot.wheels.request import Request

if TYPE_CHECKING:
    from portal_boot.wheels.installer import InstallResult
    from portal_boot.wheels.signatures import Verified

__all__ = [
    "current_generation",
    "install",
    "install_nothing",
    "is_pending",
    "refuse_unsigned_generation",
    "request_from",
    "verify",
    "wheel_states",
]


def request_from(settings: Settings) -> Request:
    """The part of the settings this stage uses."""
    return Request(
        wheel_dir=settings.wheel_dir,
        requirements=settings.requirements,
        trusted_keys=settings.trusted_keys,
        trusted_fingerprints=settings.trusted_fingerprints,
        signatures=settings.signatures,
        environ=settings.environ,
    )


def verify(settings: Settings) -> list[Verified]:
    """Stage every wheel and check its signature; install nothing. Raises
    SignatureError (3), UsageError (2) for an unusable wheel folder, InstallError
    (4) for a failed download."""
    from portal_boot.wheels import installer

    return installer.verify(request_from(settings))


def install(settings: Settings) -> InstallResult:
    """Verify, then install into a new generation of the target. Raises
    SignatureError (3), UsageError (2), InstallError (4); the target is unchanged
    on any failure."""
    from portal_boot.wheels import installer

    return installer.install(
        request_from(settings), target=settings.target, lock_timeout=settings.lock_timeout
    )


def wheel_states(settings: Settings) -> list[tuple[Path, str | None, str]]:
    """For ``status``: each wheel of the folder with its signer and signature state."""
    from portal_boot.wheels import installer

    return installer.wheel_states(request_from(settings))


def install_nothing(settings: Settings) -> Path:
    """``--no-plugins``: switch the target to an empty generation. Raises
    InstallError, LockTimeout."""
    from portal_boot.wheels import empty

    return empty.install_nothing(settings.target, lock_timeout=settings.lock_timeout)


def is_pending(settings: Settings) -> bool:
    """For ``status``: whether an install would change the target (reads only)."""
    from portal_boot.wheels import installer

    if settings.no_plugins:
        from portal_boot.wheels import empty

        return empty.is_pending(settings.target)

    return installer.is_pending(request_from(settings), settings.target)


def refuse_unsigned_generation(target: Path, signatures: str) -> None:
    """Nothing unsigned runs: a generation installed with ``--signatures off`` is not
    served while signatures are required. Raises SignatureError."""
    if signatures == "off":
        return
    state = read_state(current_generation(target)) or {}
    unsigned = [w.get("file", "?") for w in state.get("wheels", ()) if not w.get("signer")]
    if unsigned:
        raise SignatureError(
            f"the installed plugins {', '.join(unsigned)} were installed with signatures off: "
            "run portal-boot install with signatures required (the default), or set "
            "--signatures / PORTAL_BOOT_SIGNATURES=off to serve them anyway"
        )
