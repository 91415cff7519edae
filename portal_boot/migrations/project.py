"""The application's Alembic set-up for one run: its ``alembic.ini`` and the revision
files of the application and of the enabled plugins, checked before anything runs
(running a command over them: :mod:`portal_boot.migrations.runner`).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.errors import MigrationError, UsageError
from portal_boot.migrations import placement, preflight, revisions
from portal_boot.migrations.at_heads import VERSION_TABLE
from portal_boot.migrations.revisions import RevisionFile
from portal_boot.migrations.sources import Sources
from portal_boot.plugins import Plugin

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

_CONFIG_HINT = "--alembic-config / PORTAL_BOOT_ALEMBIC_CONFIG"


@dataclasses.dataclass(frozen=True)
class Project:
    """The application's Alembic set-up and the revision files of this run."""

    sources: Sources
    app_locations: tuple[Path, ...]
    plugins: tuple[Plugin, ...]
    files: tuple[RevisionFile, ...]  # application + enabled plugins
    others: tuple[RevisionFile, ...]  # installed plugins not enabled
    graph: preflight.Graph

    @property
    def versions_dir(self) -> Path:
        """Where ``link``/``copy`` place plugin files: the first version location."""
        return self.app_locations[0]

    @property
    def plugin_files(self) -> list[RevisionFile]:
        return [f for f in self.files if f.plugin is not None]

    def describe(self, revision: str) -> str:
        file = self.graph.files.get(revision)
        return f"{revision} ({file.owner})" if file else revision


# --- the project: config and revision files ------------------------------------


def _read_config(ini: Path) -> Config:
    """Alembic's Config over the application's ini, parsed now. Raises UsageError."""
    from alembic.config import Config

    if not ini.is_file():
        raise UsageError(
            f"the Alembic configuration {ini} does not exist: point {_CONFIG_HINT} at the "
            "application's alembic.ini"
        )
    config = Config(str(ini), stdout=sys.stdout)
    try:
        # Parse now, so a broken file fails here.
        has_section = config.file_config.has_section(config.config_ini_section)
        script_location = has_section and config.get_main_option("script_location")
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the Alembic configuration {ini} ({first_line(exc)}): fix it or "
            f"point {_CONFIG_HINT} at another file"
        ) from None
    if not script_location:
        raise UsageError(
            f"{ini} has no [alembic] section with a script_location: is it the application's "
            f"alembic.ini? Fix it or point {_CONFIG_HINT} at the right file"
        )
    return config


def _app_locations(config: Config) -> tuple[Path, ...]:
    """The version locations Alembic would scan, as ScriptDirectory computes them."""
    from alembic.util import coerce_resource_to_filename

    script_location = config.get_main_option("script_location")
    assert script_location
    directory = Path(coerce_resource_to_filename(script_location)).absolute()
    if not directory.is_dir():
        raise UsageError(
            f"the script_location {directory} of {config.config_file_name} does not exist: "
            f"fix the file, or point {_CONFIG_HINT} at the application's alembic.ini"
        )
    configured = config.get_version_locations_list()
    if configured:
        return tuple(Path(coerce_resource_to_filename(p)).absolute() for p in configured)
    return (directory / "versions",)


def load(sources: Sources, plugins: Sequence[Plugin]) -> Project:
    """Read the config and every revision file of this run, and run the checks
    that need no database. Raises UsageError (the config), MigrationError."""
    from portal_boot.plugins import discover_installed

    config = _read_config(sources.alembic_config)
    locations = _app_locations(config)
    recursive = revisions.is_recursive(config.get_main_option("recursive_version_locations"))
    paths = revisions.app_files(
        locations, recursive=recursive, placed=placement.read_manifest(locations[0])
    )
    files = [revisions.read_file(path, None) for path in paths]
    for plugin in plugins:
        files += revisions.read_plugin(plugin)
    others: list[RevisionFile] = []
    enabled = {(p.distribution, p.name) for p in plugins}
    for plugin in discover_installed(sources.target, sources.entry_point_group):
        if (plugin.distribution, plugin.name) not in enabled:
            # Only to say where a missing revision lives: a broken file in a
            # plugin nobody enabled must not stop the boot.
            with contextlib.suppress(MigrationError):
                others += revisions.read_plugin(plugin)
    graph = preflight.check_files(files, others=others, mode=sources.migrations_mode)
    return Project(
        sources=sources,
        app_locations=locations,
        plugins=tuple(plugins),
        files=tuple(files),
        others=tuple(others),
        graph=graph,
    )


def files_in_place(project: Project) -> bool:
    """Whether the versions folder already holds what this run would place there."""
    mode = project.sources.migrations_mode
    wanted = project.plugin_files if mode in ("link", "copy") else []
    return placement.in_place(project.versions_dir, [f.path for f in wanted], mode)


def place_files(project: Project) -> dict[Path, RevisionFile]:
    """``link``/``copy``: place the plugin files. ``locations``: remove any that an
    earlier run in another mode placed, which would now be duplicates."""
    mode = project.sources.migrations_mode
    if mode in ("link", "copy"):
        return placement.sync(project.versions_dir, project.plugin_files, mode)
    if not files_in_place(project):
        placement.sync(project.versions_dir, [], mode)
    return {}


def current_revisions(conn: Connection, *, keep_transaction: bool = False) -> tuple[str, ...]:
    """The rows of the version table (empty when it does not exist yet). The
    transaction is rolled back after, unless ``keep_transaction`` (it holds the
    migration lock)."""
    from sqlalchemy import inspect, text

    try:
        if not inspect(conn).has_table(VERSION_TABLE):
            return ()
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return tuple(sorted(rows))
    finally:
        # Leave no transaction open: env.py must start its own on this connection.
        if not keep_transaction and conn.in_transaction():
            conn.rollback()


def first_line(exc: BaseException) -> str:
    """One line for the error message, without the SQL and parameters SQLAlchemy appends."""
    orig = getattr(exc, "orig", None)
    source = orig if isinstance(orig, BaseException) else exc
    text = str(source).strip().splitlines()
    line = text[0].strip() if text else ""
    line = f"{type(source).__name__}: {line}" if line else type(source).__name__
    return line if len(line) <= 300 else line[:297] + "..."
