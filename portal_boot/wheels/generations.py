"""Generations of the plugin target, switched atomically.

Layout, for ``--target /var/lib/portal-boot/plugins``::

    /var/lib/portal-boot/plugins -> .plugins.generations/20260101-120000-3f2a9c1b04de-a1b2c3
    /var/lib/portal-boot/.plugins.generations/
        .lock                                   flock: one installer at a time
        .building-<id>/                         a generation being built (removed if left over)
        20260101-120000-3f2a9c1b04de-a1b2c3/    a finished generation (.portal-boot.json inside)

The target is a relative symlink, so the volume can be mounted anywhere; it is
replaced with ``os.replace`` of a freshly made link, which is atomic: a reader, or
a crash, sees the old generation or the new one, never a mix. A generation is
built under a ``.building-`` name and renamed only when complete, so a finished
name always means a finished generation. The previous generation stays until the
next successful install (a process started from it keeps working); older ones,
and anything a crash left behind, are removed by the next install.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from portal_boot.errors import InstallError, denied, who

log = logging.getLogger(__name__)

STATE_FILE = ".portal-boot.json"
_BUILDING = ".building-"
_LOCK = ".lock"
_FIX = "point --target / PORTAL_BOOT_TARGET to a path portal-boot may manage"


def _absolute(target: Path) -> Path:
    # abspath, not resolve(): resolving would follow the very link we manage.
    return Path(os.path.abspath(target))


def home(target: Path) -> Path:
    """The folder that holds the generations of ``target``."""
    target = _absolute(target)
    return target.parent / f".{target.name}.generations"


def _link_prefix(target: Path) -> str:
    return f".{target.name}.link-"


def current_generation(target: Path) -> Path | None:
    """The generation ``target`` points to, or None when it is not one of ours
    (missing, a plain folder, a link elsewhere, or a link to a removed generation)."""
    target = _absolute(target)
    try:
        dest = os.readlink(target)
    except OSError:
        return None
    generation = Path(os.path.normpath(target.parent / dest))
    if generation.parent != home(target) or not generation.is_dir():
        return None
    return generation


def read_state(generation: Path | None) -> dict[str, Any] | None:
    """What :func:`write_state` recorded in ``generation``; None if unreadable."""
    if generation is None:
        return None
    try:
        state = json.loads((generation / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(generation: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically: a reader sees the old state or the new one.

    Also used to update a live generation (its request digest, a verification it
    passed again); there, a lost update only costs the next boot a verification.
    Raises OSError (a read-only target, say), leaving no temporary file behind."""
    tmp = generation / f"{STATE_FILE}.{os.urandom(4).hex()}"
    try:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, generation / STATE_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_target(target: Path) -> None:
    """Refuse a target portal-boot did not create, before doing any work: never
    delete or shadow user data. Raises InstallError."""
    target = _absolute(target)
    try:
        _check_target(target)
    except OSError as exc:  # a state folder this user may not enter (another uid's volume)
        raise InstallError(denied(exc, "cannot use the plugin target", _state_fix(target))) from None


def _state_fix(target: Path) -> str:
    return (
        f"make {target.parent} writable by this user or its group (owner the container's "
        "uid, or group 0 with chmod g=u for OpenShift's arbitrary uid), or mount a fresh "
        f"volume or emptyDir there, or {_FIX}"
    )


def _check_target(target: Path) -> None:
    if target.is_symlink():
        dest = Path(os.path.normpath(target.parent / os.readlink(target)))
        if dest.parent != home(target):
            raise InstallError(
                f"the target {target} is a link to {dest}, which portal-boot did not create: "
                f"remove the link or {_FIX}"
            )
        return
    if not target.exists():
        return
    if not target.is_dir():
        raise InstallError(f"the target {target} is a file, not a plugin folder: {_FIX}")
    try:
        entries = sorted(os.listdir(target))
    except OSError as exc:
        raise InstallError(denied(exc, "cannot read the target", _state_fix(target))) from None
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InstallError(
            f"the target {target} is a folder portal-boot did not create and it is not empty "
            f"({shown}): empty or move it, or {_FIX}"
        )


@contextlib.contextmanager
def locked(target: Path, timeout: float) -> Iterator[Path]:
    """Hold the install lock of ``target`` (an flock, released by the kernel even on
    kill -9); yields the generations folder. Raises InstallError after ``timeout``."""
    folder = home(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InstallError(
            f"cannot write beside the target in {folder.parent} ({exc.strerror}) as {who()}: "
            + _state_fix(_absolute(target))
        ) from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InstallError(
                        f"another portal-boot has been installing into {target} for "
                        f"{timeout:.0f} s: wait for it, or raise --lock-timeout / "
                        "PORTAL_BOOT_LOCK_TIMEOUT"
                    ) from None
                time.sleep(0.1)
        yield folder
    finally:
        os.close(fd)


def clean_leftovers(target: Path) -> None:
    """Remove what a crashed install left: half-built generations and link temps.
    Call with the lock held."""
    target = _absolute(target)
    for path in home(target).glob(f"{_BUILDING}*"):
        log.info("install: removing %s, left over by an interrupted install", path.name)
        shutil.rmtree(path, ignore_errors=True)
    for path in target.parent.glob(f"{_link_prefix(target)}*"):
        with contextlib.suppress(OSError):
            path.unlink()


def new_build(target: Path, digest: str) -> tuple[Path, str]:
    """A fresh, empty ``.building-<id>`` folder and the generation id it will get."""
    gen_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{digest[:12]}-{os.urandom(3).hex()}"
    build = home(target) / f"{_BUILDING}{gen_id}"
    build.mkdir(mode=0o755)
    return build, gen_id


def _fsync_dir(path: Path) -> None:
    # Make a rename durable: without it a power cut can undo the switch.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(target: Path, build: Path, gen_id: str) -> Path:
    """Rename a complete build to its final name, then point ``target`` at it."""
    target = _absolute(target)
    generation = home(target) / gen_id
    os.rename(build, generation)
    _fsync_dir(generation.parent)
    link = target.parent / f"{_link_prefix(target)}{os.urandom(4).hex()}"
    os.symlink(os.path.relpath(generation, target.parent), link)
    try:
        if target.is_dir() and not target.is_symlink():
            # An empty folder (check_target refused any other): a link cannot replace
            # a folder, so it goes first. Nothing was in use there to lose.
            target.rmdir()
        os.replace(link, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            link.unlink()
        if exc.errno in (errno.EBUSY, errno.EXDEV):
            raise InstallError(
                f"the target {target} is a mount point and cannot be switched atomically: "
                "mount the volume one level up and set --target / PORTAL_BOOT_TARGET to a "
                "folder inside it (e.g. /plugins/current)"
            ) from None
        raise InstallError(f"cannot switch {target} to the new generation ({exc})") from None
    _fsync_dir(target.parent)
    return generation


def untidy(target: Path) -> bool:
    """Whether an interrupted install left something behind: a half-built generation,
    or more finished ones than the current and the previous (a crash after the switch,
    before the old ones were removed). One ``listdir``; never raises."""
    try:
        names = os.listdir(home(target))
    except OSError:
        return False
    finished = [name for name in names if not name.startswith(".")]
    return len(finished) > 2 or any(name.startswith(_BUILDING) for name in names)


def tidy(target: Path) -> None:
    """What the interrupted install would have done after its switch: remove the
    leftovers and every generation but the current and the newest other one. Only if
    the install lock is free right now (a running installer will do it) and the volume
    is writable; a no-op that needs neither must not wait for, or fail on, either."""
    try:
        with locked(target, timeout=0):
            current = current_generation(target)
            if current is None:
                return
            clean_leftovers(target)
            others = sorted(
                path for path in home(target).iterdir()
                if not path.name.startswith(".") and path.name != current.name
            )  # fmt: skip
            log.info("install: removing what an interrupted install left behind")
            prune(target, {current, *others[-1:]})  # names begin with the UTC time
    except (InstallError, OSError) as exc:
        log.debug("install: leftovers not removed now (%s)", exc)


def prune(target: Path, keep: set[Path]) -> None:
    """Remove every generation but ``keep`` (the new one and the one it replaced)."""
    keep = {path.resolve() for path in keep}
    for path in home(target).iterdir():
        if path.name.startswith(".") or path.resolve() in keep:
            continue
        log.debug("install: removing old generation %s", path.name)
        shutil.rmtree(path, ignore_errors=True)
