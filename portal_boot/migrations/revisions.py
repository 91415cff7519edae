"""Revision files: finding them and reading their identifiers without importing them.

Files are read with :mod:`ast`, not imported: a ``status`` or a pre-flight check
runs no plugin code, and a broken import in one plugin cannot hide another
problem. Only a file whose identifiers are not plain literals is imported, the
way Alembic itself would load it.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from portal_boot.errors import MigrationError
from portal_boot.plugins import Plugin

# Alembic's own rule for what a revision file is (alembic.script.base).
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_LEGACY_REVISION_FILE = re.compile(r"([a-f0-9]+)\.py$")
_FIELDS = ("revision", "down_revision", "branch_labels", "depends_on")
_DYNAMIC = object()


@dataclasses.dataclass(frozen=True)
class RevisionFile:
    revision: str
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...]
    branch_labels: tuple[str, ...]
    path: Path
    plugin: Plugin | None  # None: the application's own
    # "upgrade" and/or "downgrade": the functions that use Alembic's
    # autocommit_block(), so cannot run inside the migration's one transaction.
    autocommit: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        if self.plugin is None:
            return "the application"
        return f"plugin {self.plugin.name} from {self.plugin.distribution} {self.plugin.version}"

    def where(self) -> str:
        return f"{self.owner}, {self.path}"


def list_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The revision files of one version location, in Alembic's order."""
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for root in [
        folder,
        *(sorted(p for p in folder.rglob("*") if p.is_dir()) if recursive else []),
    ]:
        if "__pycache__" in root.parts:
            continue
        found += [
            root / name
            for name in sorted(p.name for p in root.iterdir() if not p.is_dir())
            if _REVISION_FILE.match(name)
        ]
    return found


def is_recursive(option: str | None) -> bool:
    """The ``recursive_version_locations`` option of an ``alembic.ini``, as read here."""
    return (option or "false").strip().lower() in ("true", "1", "yes", "on")


def app_files(locations: Sequence[Path], *, recursive: bool, placed: Collection[str]) -> list[Path]:
    """The application's revision files in its version locations. ``placed`` names
    the files portal-boot placed in the first location (``link``/``copy``): they
    stand for the plugin files, read from the plugins. A file reached twice
    (overlapping locations) is one file, as for Alembic."""
    found: list[Path] = []
    seen: set[Path] = set()
    for location in locations:
        for path in list_files(location, recursive=recursive):
            if (path.parent == locations[0] and path.name in placed) or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            found.append(path)
    return found


def _tuple(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def literal_identifiers(source: bytes, path: Path) -> dict[str, object] | None:
    """The identifiers a revision file assigns at module level, when they are plain
    literals; None when only importing the file can tell (computed values, or no
    ``revision`` at all). Raises SyntaxError."""
    return _identifiers(ast.parse(source, filename=str(path)))


def autocommit_functions(tree: ast.Module) -> tuple[str, ...]:
    """Which of ``upgrade`` / ``downgrade`` call ``autocommit_block()`` (as in
    ``with op.get_context().autocommit_block():``): Alembic commits the migration's
    transaction before such a block and runs it in autocommit mode. A call outside
    these two functions (a helper they share) counts for both."""
    found: set[str] = set()
    for node in tree.body:
        calls = any(
            isinstance(sub, ast.Attribute) and sub.attr == "autocommit_block"
            for sub in ast.walk(node)
        )
        if not calls:
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in (
            "upgrade",
            "downgrade",
        ):
            found.add(node.name)
        else:
            found.update(("upgrade", "downgrade"))
    return tuple(sorted(found, reverse=True))  # upgrade first


def _identifiers(tree: ast.Module) -> dict[str, object] | None:
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in _FIELDS:
                try:
                    values[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError):  # not a literal (TypeError: unhashable)
                    values[target.id] = _DYNAMIC
    if "revision" not in values or _DYNAMIC in values.values():
        return None
    return values


def revision_file(
    values: dict[str, object],
    path: Path,
    plugin: Plugin | None,
    autocommit: tuple[str, ...] = (),
) -> RevisionFile:
    return RevisionFile(
        revision=str(values["revision"]),
        down_revisions=_tuple(values.get("down_revision")),
        depends_on=_tuple(values.get("depends_on")),
        branch_labels=_tuple(values.get("branch_labels")),
        path=path,
        plugin=plugin,
        autocommit=autocommit,
    )


def read_file(path: Path, plugin: Plugin | None) -> RevisionFile:
    """The identifiers of one revision file. Raises MigrationError if it has none."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        values = _identifiers(tree)
    except SyntaxError as exc:
        raise MigrationError(
            f"{path} ({owner_name(plugin)}) is not valid Python (line {exc.lineno}: {exc.msg}): "
            "fix the file or remove it"
        ) from None
    except ValueError as exc:  # a NUL byte: Python 3.11 raises ValueError, not SyntaxError
        raise MigrationError(
            f"{path} ({owner_name(plugin)}) is not valid Python ({exc}): fix the file or remove it"
        ) from None
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if values is None:
        values = _import_identifiers(path, plugin)
    return revision_file(values, path, plugin, autocommit_functions(tree))


def _import_identifiers(path: Path, plugin: Plugin | None) -> dict[str, object]:
    """Computed identifiers, or none at all: load the file as Alembic would."""
    from alembic.util import load_python_file

    try:
        module = load_python_file(str(path.parent), path.name)
    except Exception as exc:  # noqa: BLE001 - any error in the file is the file's problem
        raise MigrationError(
            f"{path} ({owner_name(plugin)}) cannot be loaded ({type(exc).__name__}: {exc}): "
            "fix the file or remove it"
        ) from None
    values = {name: getattr(module, name) for name in _FIELDS if hasattr(module, name)}
    if "revision" not in values:
        legacy = _LEGACY_REVISION_FILE.match(path.name)
        if not legacy:
            raise MigrationError(
                f"{path} ({owner_name(plugin)}) declares no `revision = ...`: "
                "add the revision identifiers or move the file out of the versions folder"
            )
        values["revision"] = legacy.group(1)
    return values


def owner_name(plugin: Plugin | None) -> str:
    return "the application" if plugin is None else f"plugin {plugin.name}"


def plugin_files(plugin: Plugin) -> list[Path]:
    """The revision files of one plugin, in Alembic's order. Raises MigrationError
    for a link that leads out of the plugin's package: its revisions are its own
    files, not whatever a link points at (a file anyone could write would run as a
    migration)."""
    from portal_boot.migrations.environments import is_own_environment

    folder = plugin.migrations_dir
    if folder is None or is_own_environment(plugin):
        # Its env.py and revisions are its own Alembic environment, run apart
        # (portal_boot.migrations.environments), not chained onto the application's.
        return []
    home = (plugin.package_dir or folder.parent).resolve()
    found = list_files(folder)
    for path in [folder, *found]:
        real = path.resolve()
        if not real.is_relative_to(home):
            raise MigrationError(
                f"{path} (plugin {plugin.name}) is a link to {real}, outside the plugin's "
                f"package {home}: a plugin's revisions must be files of its own; reinstall "
                "the plugin, or disable it (ENABLED_PLUGINS)"
            )
    return found


def read_plugin(plugin: Plugin) -> list[RevisionFile]:
    return [read_file(path, plugin) for path in plugin_files(plugin)]
