"""The application's Alembic set-up for one run: its ``alembic.ini``, the revision
files of the application and of the enabled plugins, and running one Alembic
command over them in-process.

The application's ``env.py`` is used as it is: ``sqlalchemy.url`` is set to the
sync URL (so an ``env.py`` from Alembic's generic template works unchanged) and
portal-boot's connection is offered in ``config.attributes["connection"]``
(Alembic's "sharing a connection" recipe).
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot import migration_files, preflight
from portal_boot.errors import MigrationError, Terminated, UsageError
from portal_boot.heads import VERSION_TABLE
from portal_boot.plugins import Plugin
from portal_boot.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

_CONFIG_HINT = "--alembic-config / PORTAL_BOOT_ALEMBIC_CONFIG"


@dataclasses.dataclass(frozen=True)
class Project:
    """The application's Alembic set-up and the revision files of this run."""

    settings: Settings
    ini: Path
    app_locations: tuple[Path, ...]
    plugins: tuple[Plugin, ...]
    files: tuple[preflight.RevisionFile, ...]  # application + enabled plugins
    others: tuple[preflight.RevisionFile, ...]  # installed plugins not enabled
    graph: preflight.Graph

    @property
    def versions_dir(self) -> Path:
        """Where ``link``/``copy`` place plugin files: the first version location."""
        return self.app_locations[0]

    @property
    def plugin_files(self) -> list[preflight.RevisionFile]:
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


def load(settings: Settings, plugins: Sequence[Plugin]) -> Project:
    """Read the config and every revision file of this run, and run the checks
    that need no database. Raises UsageError (the config), MigrationError."""
    from portal_boot.plugins import discover_installed

    config = _read_config(settings.alembic_config)
    locations = _app_locations(config)
    recursive = preflight.is_recursive(config.get_main_option("recursive_version_locations"))
    paths = preflight.app_files(
        locations, recursive=recursive, placed=migration_files.read_manifest(locations[0])
    )
    files = [preflight.read_file(path, None) for path in paths]
    for plugin in plugins:
        files += preflight.read_plugin(plugin)
    others: list[preflight.RevisionFile] = []
    enabled = {(p.distribution, p.name) for p in plugins}
    for plugin in discover_installed(settings.target, settings.entry_point_group):
        if (plugin.distribution, plugin.name) not in enabled:
            # Only to say where a missing revision lives: a broken file in a
            # plugin nobody enabled must not stop the boot.
            with contextlib.suppress(MigrationError):
                others += preflight.read_plugin(plugin)
    graph = preflight.check_files(files, others=others, mode=settings.migrations_mode)
    return Project(
        settings=settings,
        ini=settings.alembic_config,
        app_locations=locations,
        plugins=tuple(plugins),
        files=tuple(files),
        others=tuple(others),
        graph=graph,
    )


def files_in_place(project: Project) -> bool:
    """Whether the versions folder already holds what this run would place there."""
    mode = project.settings.migrations_mode
    wanted = project.plugin_files if mode in ("link", "copy") else []
    return migration_files.in_place(project.versions_dir, [f.path for f in wanted], mode)


def place_files(project: Project) -> dict[Path, preflight.RevisionFile]:
    """``link``/``copy``: place the plugin files. ``locations``: remove any that an
    earlier run in another mode placed, which would now be duplicates."""
    mode = project.settings.migrations_mode
    if mode in ("link", "copy"):
        return migration_files.sync(project.versions_dir, project.plugin_files, mode)
    if not files_in_place(project):
        migration_files.sync(project.versions_dir, [], mode)
    return {}


# --- running Alembic -----------------------------------------------------------


def _alembic_config(project: Project, url: str, locations: Sequence[Path] | None) -> Config:
    """A fresh Config for one command: the sync URL, and this run's version locations."""
    from alembic.config import Config

    class _RunConfig(Config):
        def get_version_locations_list(self) -> list[str] | None:
            if locations is None:
                return super().get_version_locations_list()
            return [str(p) for p in locations]

    config = _RunConfig(str(project.ini), stdout=sys.stdout)
    config.file_config  # noqa: B018 - parse while the file name is still set
    # The generic env.py runs logging.config.fileConfig() on the ini, which would
    # replace portal-boot's handlers (and their password masking, and the JSON
    # format) and disable its loggers. portal-boot owns logging here.
    config.config_file_name = None
    # configparser reads '%' as interpolation; a URL-encoded password has them.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run_locations(project: Project) -> list[Path] | None:
    if project.settings.migrations_mode != "locations":
        return None  # the files were placed in the versions folder
    extra = [p.migrations_dir for p in project.plugins if p.migrations_dir is not None]
    return [*project.app_locations, *(d for d in extra if d not in project.app_locations)]


@contextlib.contextmanager
def _process_state(project: Project) -> Iterator[None]:
    """What Alembic's loading of env.py and the revision files needs, undone after."""
    saved_path, saved_bytecode = list(sys.path), sys.dont_write_bytecode
    # Loading env.py and the revisions would write __pycache__ folders into the
    # application and the plugins (read-only in an image, byte-for-byte checked
    # in tests).
    sys.dont_write_bytecode = True
    target = str(project.settings.target.absolute())
    if project.settings.target.is_dir() and target not in sys.path:
        # Plugin revisions may import their package; appended, so the image's own
        # packages win, as in the served application.
        sys.path.append(target)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = saved_bytecode


def run(
    project: Project,
    url: str,
    conn: Connection,
    command_name: str,
    target: str,
    *,
    placed: dict[Path, preflight.RevisionFile],
) -> None:
    """Run ``alembic.command.<command_name>(config, target)`` on ``conn`` and commit.
    Raises MigrationError naming the failed revision; lets Terminated through."""
    from alembic import command

    config = _alembic_config(project, url, _run_locations(project))
    config.attributes["connection"] = conn
    log.info("%s to %s", command_name, target)
    with _process_state(project):
        try:
            getattr(command, command_name)(config, target)
            if conn.in_transaction():  # an env.py that left its transaction to us
                conn.commit()
        except Exception as exc:
            reraise_termination(exc)
            log.debug("migration failed", exc_info=True)
            raise _failure(exc, project, conn, placed) from None


def reraise_termination(exc: BaseException) -> None:
    """A SIGTERM in the middle of a statement can surface as a cleanup error
    (the connection was invalidated) with the Terminated as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Terminated):
            raise exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _failure(
    exc: Exception, project: Project, conn: Connection, placed: dict[Path, preflight.RevisionFile]
) -> MigrationError:
    by_path = {str(f.path.resolve()): f for f in project.files}
    by_path.update({str(path.resolve()): f for path, f in placed.items()})
    failed = None
    tb = exc.__traceback__
    while tb is not None:
        file = by_path.get(str(Path(tb.tb_frame.f_code.co_filename).resolve()))
        failed = file or failed
        tb = tb.tb_next
    stays = ""
    with contextlib.suppress(Exception):
        conn.rollback()
        current = current_revisions(conn)
        stays = f"; the database stays at {', '.join(current) or 'no revision'}"
    if failed is not None:
        return MigrationError(
            f"revision {failed.revision} ({failed.owner}) failed: {first_line(exc)}{stays}: "
            f"fix {failed.path} or the database, then run portal-boot migrate again"
        )
    return MigrationError(
        f"the migration failed: {first_line(exc)}{stays}: fix the cause (see the log above; "
        "--log-level debug shows the traceback), then run portal-boot migrate again"
    )


def print_sql(project: Project, url: str, command_name: str, target: str) -> None:
    """Offline mode: Alembic writes the SQL of ``command_name`` to ``target`` (a
    ``FROM:TO`` range or a destination) to stdout; nothing connects."""
    from alembic import command

    with contextlib.ExitStack() as stack:
        locations = _run_locations(project)
        if project.settings.migrations_mode != "locations":
            # Show what link/copy would place, without writing into the versions
            # folder: a temporary folder of links to this run's revision files.
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-boot-sql-"))
            )
            for i, file in enumerate(project.files):
                (folder / f"{i:04d}_{file.path.name}").symlink_to(file.path.resolve())
            locations = [folder]
        config = _alembic_config(project, url, locations)
        stack.enter_context(_process_state(project))
        try:
            getattr(command, command_name)(config, target, sql=True)
        except Exception as exc:
            reraise_termination(exc)
            log.debug("printing the SQL failed", exc_info=True)
            raise MigrationError(
                f"printing the SQL for {target} failed: {first_line(exc)}: check the "
                "revision named, or give --to FROM:TO"
            ) from None


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The rows of the version table (empty when it does not exist yet)."""
    from sqlalchemy import inspect, text

    try:
        if not inspect(conn).has_table(VERSION_TABLE):
            return ()
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return tuple(sorted(rows))
    finally:
        # Leave no transaction open: env.py must start its own on this connection.
        if conn.in_transaction():
            conn.rollback()


def first_line(exc: BaseException) -> str:
    """One line for the error message, without the SQL and parameters SQLAlchemy appends."""
    orig = getattr(exc, "orig", None)
    source = orig if isinstance(orig, BaseException) else exc
    text = str(source).strip().splitlines()
    line = text[0].strip() if text else ""
    line = f"{type(source).__name__}: {line}" if line else type(source).__name__
    return line if len(line) <= 300 else line[:297] + "..."
