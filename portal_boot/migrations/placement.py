"""The ``link`` and ``copy`` modes: plugin revision files placed in the application's
versions folder, as the deployment guides do by hand.

A manifest beside them (:data:`MANIFEST_NAME`) records what portal-boot wrote, so
it can later remove its own stale files (a plugin disabled or removed) and never
touch a file it did not write. Every write is atomic (a temporary name, then a
rename), and the manifest announces a change before it is made, so a crash at any
point leaves a folder the next run can read. Callers hold the migration lock:
replicas may share the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from portal_boot.errors import MigrationError
from portal_boot.migrations.revisions import RevisionFile

log = logging.getLogger(__name__)

MANIFEST_NAME = ".portal-boot-manifest.json"
_FORMAT = 1


def read_manifest(versions_dir: Path) -> dict[str, dict[str, Any]]:
    """File name -> what portal-boot wrote there. Empty when it wrote nothing."""
    path = versions_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MigrationError(
            f"cannot read portal-boot's manifest {path} ({exc}): restore it, or delete it "
            "together with the plugin revision files portal-boot placed in that folder"
        ) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise MigrationError(f"portal-boot's manifest {path} is not in a known format: delete it")
    return files


def _sha256(path: Path) -> str:
    import hashlib  # only link/copy need it: not imported on every boot

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _signature(path: Path) -> str | None:
    """What is at ``path`` now: ``link:<target>``, ``sha256:<hex>`` or None."""
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    if path.is_file():
        return f"sha256:{_sha256(path)}"
    return None


def _wanted(source: Path, mode: str) -> str:
    # Absolute: a relative link would be read from the versions folder, not from here.
    return f"link:{source.absolute()}" if mode == "link" else f"sha256:{_sha256(source)}"


def _is_ours(entry: dict[str, Any], signature: str | None) -> bool:
    return signature is not None and signature in (entry.get("signature"), entry.get("previous"))


def in_place(versions_dir: Path, sources: Sequence[Path], mode: str) -> bool:
    """Whether :func:`sync` of the plugin files at ``sources`` would change nothing
    (read-only, no lock needed). Raises MigrationError (an unreadable manifest)."""
    manifest = read_manifest(versions_dir)
    wanted = {source.name: _wanted(source, mode) for source in sources}
    if set(manifest) != set(wanted):
        return False
    return all(
        manifest[name].get("signature") == signature
        and os.path.lexists(versions_dir / name)
        and _signature(versions_dir / name) == signature
        for name, signature in wanted.items()
    )


def sync(versions_dir: Path, files: Sequence[RevisionFile], mode: str) -> dict[Path, RevisionFile]:
    """Make ``versions_dir`` hold exactly ``files`` (plugin revisions), linked or
    copied, plus whatever portal-boot did not write. Returns placed path -> file.

    With no ``files``, removes everything portal-boot placed before (used by the
    ``locations`` mode). Raises MigrationError naming the file in the way.
    """
    manifest = read_manifest(versions_dir)
    wanted: dict[str, RevisionFile] = {}
    for file in files:
        name = file.path.name
        if name in wanted:
            raise MigrationError(
                f"two plugin revision files are both named {name} ({wanted[name].where()}; "
                f"{file.where()}): --migrations-mode {mode} puts them in one folder; use "
                "--migrations-mode locations, or enable only one of the plugins"
            )
        wanted[name] = file

    # Check everything before writing anything.
    for name in sorted(set(wanted) | set(manifest)):
        dest = versions_dir / name
        current = _signature(dest) if os.path.lexists(dest) else None
        if current is None and not os.path.lexists(dest):
            continue
        if name not in manifest:
            raise MigrationError(
                f"{dest} is in the way of {wanted[name].where()} and was not written by "
                "portal-boot, which never overwrites such a file: rename or remove it"
            )
        if not _is_ours(manifest[name], current):
            raise MigrationError(
                f"{dest} was placed by portal-boot but has been changed since: portal-boot "
                "leaves it alone; restore or delete it, and remove its entry from "
                f"{versions_dir / MANIFEST_NAME}"
            )
    if not wanted and not manifest:
        return {}

    with _writable(versions_dir, mode):
        final: dict[str, dict[str, Any]] = {}
        for name, file in wanted.items():
            final[name] = {
                "signature": _wanted(file.path, mode),
                "mode": mode,
                "plugin": file.plugin.name if file.plugin else None,
                "distribution": file.plugin.distribution if file.plugin else None,
                "version": file.plugin.version if file.plugin else None,
                "source": str(file.path),
                "revision": file.revision,
            }
        # 1. Announce: the new entries, with what is there now as "previous", and
        #    the stale entries still listed until their files are gone.
        intent = {name: dict(entry) for name, entry in manifest.items()}
        for name, entry in final.items():
            dest = versions_dir / name
            previous = _signature(dest) if os.path.lexists(dest) else None
            intent[name] = {**entry, "previous": previous}
        _write_manifest(versions_dir, intent)
        # 2. Place, atomically.
        placed: dict[Path, RevisionFile] = {}
        for name, file in wanted.items():
            dest = versions_dir / name
            placed[dest] = file
            if os.path.lexists(dest) and _signature(dest) == final[name]["signature"]:
                continue
            _place(file.path, dest, mode)
            log.info("%s %s from %s", "linked" if mode == "link" else "copied", dest, file.owner)
        # 3. Remove portal-boot's own stale files.
        for name, entry in manifest.items():
            if name in wanted:
                continue
            dest = versions_dir / name
            if os.path.lexists(dest):
                dest.unlink()
                log.info(
                    "removed %s, placed earlier by portal-boot for plugin %s and not needed now",
                    dest,
                    entry.get("plugin"),
                )
        # 4. Settle.
        if final:
            _write_manifest(versions_dir, final)
        else:
            (versions_dir / MANIFEST_NAME).unlink()
        return placed


@contextlib.contextmanager
def _writable(versions_dir: Path, mode: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise MigrationError(
            f"cannot write into {versions_dir} ({exc.strerror or exc}): --migrations-mode "
            f"{mode} needs a writable versions folder; use --migrations-mode locations "
            "(the default) for a read-only application folder"
        ) from None


def _temporary(dest: Path) -> Path:
    # Not a *.py name: Alembic must never see a half-written file as a revision.
    return dest.with_name(f".{dest.name}.{os.getpid()}.portal-boot-tmp")


def _place(source: Path, dest: Path, mode: str) -> None:
    tmp = _temporary(dest)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if mode == "link":
        os.symlink(source.absolute(), tmp)
    else:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _write_manifest(versions_dir: Path, files: dict[str, dict[str, Any]]) -> None:
    path = versions_dir / MANIFEST_NAME
    tmp = _temporary(path)
    body = {
        "format": _FORMAT,
        "note": "written by portal-boot: the plugin revision files it placed here",
        "files": dict(sorted(files.items())),
    }
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
