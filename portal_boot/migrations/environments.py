"""Plugins that bring their own Alembic environment: finding them and checking them.

A plugin whose ``migration/`` or ``migrations/`` folder holds an ``env.py`` is an
*own-environment plugin* (the layout of ``plugins/<name>/migrations/{alembic.ini,
env.py, script.py.mako, versions/...}``): its revisions form a history of their own,
recorded in a version table of their own (``context.configure(version_table=...)``
in its ``env.py``), independent of the application's and of other plugins'. Its
revision files are in ``versions/`` when that folder exists, else beside ``env.py``;
the folder holding ``env.py`` is its script location, whatever an ``alembic.ini``
beside it says; that ``alembic.ini`` (optional) gives the other ``[alembic]``
options its ``env.py`` may read.

This module reads them without running plugin code (:mod:`ast`, like
:mod:`portal_boot.migrations.revisions`) and makes the checks done before anything
is applied: duplicate revision ids and dangling ``down_revision`` / ``depends_on``
inside one environment, and a version table shared with the application
(``alembic_version``) or with another plugin. Running them is
:mod:`portal_boot.migrations.environment_runs`.

The version table is read from the ``env.py`` where it is a literal: a string (or a
module-level name bound to one) given as ``version_table=`` to
``context.configure(...)``; a ``configure`` call without it means Alembic's default,
``alembic_version``, which collides with the application's. When it cannot be read
(computed, passed through ``**kwargs``, or set in a module the ``env.py`` delegates
to), it is unknown until the ``env.py`` runs: the full path then runs it once the
way ``alembic current`` does (reading, writing nothing) to learn the table, and
checks the collisions before anything is applied; the warm path leaves such a run to
the full path.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from portal_boot.errors import MigrationError
from portal_boot.migrations import preflight, revisions
from portal_boot.migrations.at_heads import VERSION_TABLE
from portal_boot.migrations.revisions import RevisionFile
from portal_boot.plugins import Plugin

ENV_FILE = "env.py"
INI_FILE = "alembic.ini"


@dataclasses.dataclass(frozen=True)
class VersionTable:
    name: str
    schema: str | None = None

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


CORE_TABLE = VersionTable(VERSION_TABLE)


@dataclasses.dataclass(frozen=True)
class Environment:
    """One own-environment plugin, read and checked."""

    plugin: Plugin
    folder: Path  # holds env.py: the script location
    ini: Path | None  # its own alembic.ini, if any
    versions: Path  # where its revision files are (versions/, or the folder itself)
    files: tuple[RevisionFile, ...]
    version_table: VersionTable | None  # None: only running env.py can tell
    graph: preflight.Graph

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def short(self) -> str:
        """Its package's name (``databricks_plugin``): for ``--to NAME@base`` and table names."""
        return self.plugin.package_dir.name if self.plugin.package_dir else self.plugin.name

    @property
    def env_py(self) -> Path:
        return self.folder / ENV_FILE

    @property
    def beside_env(self) -> bool:
        """Revision files beside env.py (no versions/ folder)."""
        return self.versions == self.folder

    def describe(self, revision: str) -> str:
        return f"{revision} (plugin {self.name}, own environment)"

    def matches(self, selector: str) -> bool:
        """``--to NAME@base``: the plugin's names, or its package folder's."""
        package = self.plugin.package_dir.name if self.plugin.package_dir else None
        return self.plugin.matches(selector) or selector == package


# --- finding them --------------------------------------------------------------------


def is_own_environment(plugin: Plugin) -> bool:
    """Whether the plugin's migration folder holds an ``env.py`` of its own."""
    folder = plugin.migrations_dir
    return folder is not None and (folder / ENV_FILE).is_file()


def own_environments(plugins: Iterable[Plugin]) -> list[Plugin]:
    return [p for p in plugins if is_own_environment(p)]


def revision_paths(plugin: Plugin) -> tuple[Path, list[Path]]:
    """Where an own-environment plugin's revision files are, and the files (its
    ``env.py`` is not one). Raises MigrationError for a link out of the package, as
    for any plugin's revision files."""
    folder = plugin.migrations_dir
    assert folder is not None
    versions = folder / "versions"
    if not versions.is_dir():
        versions = folder
    found = [p for p in revisions.list_files(versions) if p.name != ENV_FILE]
    home = (plugin.package_dir or folder.parent).resolve()
    for path in [folder, versions, folder / ENV_FILE, *found]:
        real = path.resolve()
        if not real.is_relative_to(home):
            raise MigrationError(
                f"{path} (plugin {plugin.name}) is a link to {real}, outside the plugin's "
                f"package {home}: a plugin's migrations must be files of its own; reinstall "
                "the plugin, or disable it (ENABLED_PLUGINS)"
            )
    return versions, found


Reader = Callable[[Path, "Plugin | None"], RevisionFile]


def load(
    plugins: Sequence[Plugin], *, read: Reader = revisions.read_file
) -> tuple[Environment, ...]:
    """Every own-environment plugin among ``plugins``, read and checked (in plugin
    name order, the order they are upgraded in). ``read`` reads one revision file
    (the warm path passes one that never imports). Raises MigrationError (status 6)
    naming the plugin and the fix."""
    found: list[Environment] = []
    for plugin in own_environments(plugins):
        versions, paths = revision_paths(plugin)
        folder = plugin.migrations_dir
        assert folder is not None
        files = [read(path, plugin) for path in paths]
        graph = check_files(plugin, files)
        ini = folder / INI_FILE
        found.append(
            Environment(
                plugin=plugin,
                folder=folder,
                ini=ini if ini.is_file() else None,
                versions=versions,
                files=tuple(files),
                version_table=read_version_table(folder / ENV_FILE, plugin),
                graph=graph,
            )
        )
    check_tables([(e, e.version_table) for e in found])
    return tuple(found)


# --- the checks ----------------------------------------------------------------------


def check_files(plugin: Plugin, files: Sequence[RevisionFile]) -> preflight.Graph:
    """Duplicate ids and unresolved ``down_revision`` / ``depends_on`` inside one
    environment (its history stands alone: it cannot name the application's
    revisions). Returns its graph. Raises MigrationError."""
    where = f"plugin {plugin.name}'s own Alembic environment"
    by_id: dict[str, list[RevisionFile]] = {}
    for file in files:
        by_id.setdefault(file.revision, []).append(file)
    for revision, group in sorted(by_id.items()):
        if len(group) > 1:
            raise MigrationError(
                f"revision {revision} is defined twice in {where} "
                f"({' and '.join(str(f.path) for f in group)}): give one of the files another "
                "revision id or delete the stray copy, or disable the plugin (ENABLED_PLUGINS)"
            )
    labels = {label for f in files for label in f.branch_labels}
    for file in files:
        for kind, names in (
            ("down_revision", file.down_revisions),
            ("depends_on", file.depends_on),
        ):
            for name in names:
                if name in by_id or (kind == "depends_on" and name in labels):
                    continue
                raise MigrationError(
                    f"revision {file.revision} ({file.path}) has {kind} {name!r}, which no "
                    f"revision file of {where} defines (its history is its own: it cannot "
                    "name the application's or another plugin's revisions): restore the "
                    f"missing file or fix its {kind}, or disable the plugin (ENABLED_PLUGINS)"
                )
    return preflight.check_files(files)


def check_tables(tables: Sequence[tuple[Environment, VersionTable | None]]) -> None:
    """A version table shared with the application or with another plugin: their
    histories would be mixed in one table, and each would read the other's
    revisions as unknown. Unknown tables (None) are skipped. Raises MigrationError."""
    seen: dict[VersionTable, Environment] = {}
    for env, table in tables:
        if table is None:
            continue
        fix = (
            f"give context.configure(...) in {env.env_py} its own "
            f'version_table="alembic_version_{env.short}" (a new plugin version), or disable '
            "the plugin (ENABLED_PLUGINS)"
        )
        if table == CORE_TABLE:
            raise MigrationError(
                f"plugin {env.name}'s own Alembic environment records its revisions in "
                f"{table}, the application's version table: {fix}"
            )
        other = seen.get(table)
        if other is not None:
            raise MigrationError(
                f"plugins {other.name} and {env.name} both record their revisions in the "
                f"version table {table}: {fix}"
            )
        seen[table] = env


# --- the version table, read from env.py --------------------------------------------


def read_version_table(env_py: Path, plugin: Plugin) -> VersionTable | None:
    """The ``version_table`` (and ``version_table_schema``) the env.py gives
    ``context.configure``, when literal; None when only running it can tell.
    Raises MigrationError for an env.py that is not valid Python."""
    try:
        tree = ast.parse(env_py.read_bytes(), filename=str(env_py))
    except (SyntaxError, ValueError) as exc:
        line = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, SyntaxError) else str(exc)
        raise MigrationError(
            f"{env_py} (plugin {plugin.name}) is not valid Python ({line}): fix the plugin "
            "(a new version) or disable it (ENABLED_PLUGINS)"
        ) from None
    except OSError as exc:
        raise MigrationError(f"cannot read {env_py}: {exc.strerror or exc}") from None
    constants: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constants[target.id] = value.value
    answers: set[VersionTable | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_configure(node.func):
            answers.add(_table_of(node, constants))
    if len(answers) != 1:  # no configure call here, or calls that disagree
        return None
    return answers.pop()


def _is_configure(func: ast.expr) -> bool:
    """``context.configure`` or ``alembic.context.configure``."""
    if not (isinstance(func, ast.Attribute) and func.attr == "configure"):
        return False
    owner = func.value
    return (isinstance(owner, ast.Name) and owner.id == "context") or (
        isinstance(owner, ast.Attribute) and owner.attr == "context"
    )


def _table_of(call: ast.Call, constants: dict[str, object]) -> VersionTable | None:
    values: dict[str, object] = {"version_table": VERSION_TABLE, "version_table_schema": None}
    for keyword in call.keywords:
        if keyword.arg is None:  # **kwargs: anything may be in there
            return None
        if keyword.arg in values:
            value = keyword.value
            if isinstance(value, ast.Constant):
                values[keyword.arg] = value.value
            elif isinstance(value, ast.Name) and value.id in constants:
                values[keyword.arg] = constants[value.id]
            else:
                return None
    name, schema = values["version_table"], values["version_table_schema"]
    if not isinstance(name, str) or not (schema is None or isinstance(schema, str)):
        return None
    return VersionTable(name, schema)
