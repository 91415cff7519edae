"""Running own-environment plugins (:mod:`portal_boot.migrations.environments`).

Each one's own ``env.py`` is run in-process as Alembic runs it, the way the
application's is (:mod:`portal_boot.migrations.runner`): ``sqlalchemy.url`` is the
sync URL, portal-boot's connection is offered in ``config.attributes["connection"]``,
and portal-boot owns logging (an ``alembic.ini``'s ``[loggers]`` are not applied).

Transactions: after the application and the chained plugins are upgraded and
committed, the own-environment plugins are upgraded one after another (plugin name
order), each in its own transaction, committed before the next starts. On
PostgreSQL (transactional DDL) a failure in one plugin's environment, a SIGTERM or a
``kill -9`` leaves nothing of *that* plugin applied; the application's migrations and
the plugins before it stay (they are complete and consistent on their own: the
histories are independent), the plugins after it are not run, and the next run
applies what remains. One transaction per environment rather than one for the whole
run, because an ``env.py`` written from Alembic's generic template opens a
connection of its own, which could not see (and would wait on) an uncommitted core.
Everything runs under the migration lock the caller holds.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot.errors import MigrationError, UsageError
from portal_boot.migrations.environments import Environment, VersionTable, check_tables
from portal_boot.migrations.project import first_line
from portal_boot.migrations.runner import process_state, reraise_termination

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EnvState:
    """Where one own environment's version table is."""

    env: Environment
    version_table: VersionTable
    current: tuple[str, ...]

    @property
    def heads(self) -> tuple[str, ...]:
        return self.env.graph.heads

    @property
    def pending(self) -> tuple[str, ...]:
        return self.env.graph.pending(self.current)

    def as_dict(self) -> dict[str, Any]:
        return entry(self.env.name, self.version_table, self.current, self.heads, self.pending)


def pending_names(states: Sequence[EnvState]) -> tuple[str, ...]:
    """The own environments' pending revisions, each named with its plugin."""
    return tuple(f"{r} (plugin {s.env.name})" for s in states for r in s.pending)


def describe(envs: Sequence[Environment]) -> str:
    """For the run's first log line: the plugins with their own environment, if any."""
    if not envs:
        return ""
    return f"; with their own Alembic environment: {', '.join(e.name for e in envs)}"


def log_at_heads(entries: Sequence[dict[str, Any]]) -> None:
    """The warm path's word on each own environment (``entry`` dicts)."""
    for env in entries:
        log.info(
            "migrate: plugin %s (own Alembic environment, %s) at its heads %s",
            env["plugin"], env["version_table"], ", ".join(env["current"]),
        )  # fmt: skip


def entry(
    plugin: str | None,
    table: VersionTable | str,
    current: Sequence[str],
    heads: Sequence[str],
    pending: Sequence[str],
) -> dict[str, Any]:
    """One environment in ``status --json`` (``plugin`` None: the application's)."""
    return {
        "environment": plugin or "application",
        "plugin": plugin,
        "version_table": str(table),
        "current": sorted(current),
        "heads": sorted(heads),
        "pending": list(pending),
    }


# --- where they are ---------------------------------------------------------------------


def states(
    envs: Sequence[Environment], url: str, conn: Connection, plugin_target: Path
) -> list[EnvState]:
    """Every environment's version table and its rows; a table only its env.py
    names is learned by running the env.py as ``alembic current`` does (it writes
    nothing). Raises MigrationError: a version table shared with another, a revision
    in the table that no file of the plugin defines, a failing env.py."""
    found = [_state(env, url, conn, plugin_target) for env in envs]
    check_tables([(s.env, s.version_table) for s in found])
    for state in found:
        unknown = [r for r in state.current if r not in state.env.graph.files]
        if unknown:
            raise MigrationError(
                f"the version table {state.version_table} of plugin {state.env.name} is at "
                f"revision {', '.join(unknown)}, which no file of the plugin's own Alembic "
                f"environment ({state.env.versions}) defines: install the plugin version that "
                f"wrote it, downgrade with it (portal-boot migrate --to {state.env.short}@base), "
                "or disable the plugin (ENABLED_PLUGINS)"
            )
    return found


def _state(env: Environment, url: str, conn: Connection, plugin_target: Path) -> EnvState:
    if env.version_table is not None:
        return EnvState(env, env.version_table, read_table(conn, env.version_table))
    seen: dict[str, Any] = {}

    def look(heads: Any, context: Any) -> list[Any]:
        seen["table"] = VersionTable(context.version_table, context.version_table_schema)
        seen["current"] = tuple(sorted(context.get_current_heads()))
        return []

    def read(config: Config) -> None:
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(config)
        with EnvironmentContext(config, script, fn=look, dont_mutate=True):
            script.run_env()

    _run(env, url, conn, plugin_target, read, "reading its version table")
    if "table" not in seen:
        raise MigrationError(
            f"{env.env_py} (plugin {env.name}) ran no migrations (it never called "
            "context.run_migrations()): fix the plugin or disable it (ENABLED_PLUGINS)"
        )
    return EnvState(env, seen["table"], seen["current"])


def read_table(conn: Connection, table: VersionTable) -> tuple[str, ...]:
    """The rows of one version table (empty when it does not exist yet)."""
    import sqlalchemy as sa

    try:
        if not sa.inspect(conn).has_table(table.name, schema=table.schema):
            return ()
        query = sa.select(sa.column("version_num")).select_from(
            sa.table(table.name, schema=table.schema)
        )
        return tuple(sorted(conn.execute(query).scalars().all()))
    finally:
        if conn.in_transaction():  # leave none open: env.py starts its own
            conn.rollback()


# --- changing them ----------------------------------------------------------------------


def upgrade_all(
    envs: Sequence[Environment], url: str, conn: Connection, plugin_target: Path
) -> bool:
    """Upgrade every own environment with something pending to its heads, one
    transaction each (see the module's docstring). Returns whether anything was
    applied. Raises MigrationError naming the plugin; lets Terminated through."""
    changed = False
    for state in states(envs, url, conn, plugin_target):
        if state.pending:
            _command(state, url, conn, plugin_target, "upgrade", "heads")
            changed = True
    return changed


def downgrade_environment(
    env: Environment, url: str, conn: Connection, plugin_target: Path, target: str = "base"
) -> None:
    """Run one own environment's downgrades to ``target`` (``base``: every table of
    the plugin's history dropped, and its version table's rows with them; the empty
    table stays, as Alembic leaves it). For removing a plugin: call it under the
    migration lock, with the plugin still installed, ``env`` from
    ``environments.load([plugin])`` (empty when the plugin has no environment of its
    own), ``conn`` a connection of the run (``connections.connect(engine)``).
    Raises MigrationError."""
    state = next(iter(states([env], url, conn, plugin_target)))
    if not state.current:
        log.info(
            "plugin %s: its version table %s holds no revision: nothing to downgrade",
            env.name, state.version_table,
        )  # fmt: skip
        return
    _command(state, url, conn, plugin_target, "downgrade", target)


def run_target(
    env: Environment, command_name: str, target: str, url: str, conn: Connection,
    plugin_target: Path,
) -> None:  # fmt: skip
    """``--to NAME@base`` / ``NAME@heads`` for an own-environment plugin."""
    if command_name == "downgrade":
        downgrade_environment(env, url, conn, plugin_target, target)
        return
    state = next(iter(states([env], url, conn, plugin_target)))
    if not state.pending:
        log.info(
            "plugin %s: at its heads (%s), nothing to apply", env.name, ", ".join(state.current)
        )
        return
    _command(state, url, conn, plugin_target, command_name, target)


def find_target(envs: Sequence[Environment], to: str) -> tuple[Environment, str, str] | None:
    """The own environment ``--to NAME@base`` or ``NAME@heads`` names, with the
    command and Alembic's target; None when ``to`` names none (the application's
    graph then resolves it). Raises UsageError for another ``NAME@...``."""
    name, at, where = to.strip().rpartition("@")
    if not at or not name:
        return None
    env = next((e for e in envs if e.matches(name)), None)
    if env is None:
        return None
    if where == "base":
        return env, "downgrade", "base"
    if where in ("head", "heads"):
        return env, "upgrade", "heads"
    raise UsageError(
        f"--to {to}: plugin {env.name} has its own Alembic environment: give {name}@base "
        f"(downgrade all of it, before removing the plugin) or {name}@heads"
    )


def _command(
    state: EnvState, url: str, conn: Connection, plugin_target: Path, command_name: str,
    target: str,
) -> None:  # fmt: skip
    from alembic import command

    env = state.env

    def run(config: Config) -> None:
        getattr(command, command_name)(config, target)
        if conn.in_transaction():  # an env.py that left its transaction to us
            conn.commit()

    log.info(
        "plugin %s (own Alembic environment, version table %s): %s to %s",
        env.name, state.version_table, command_name, target,
    )  # fmt: skip
    _run(env, url, conn, plugin_target, run, f"{command_name} to {target}", state.version_table)
    after = read_table(conn, state.version_table)
    was, now = env.graph.applied(state.current), env.graph.applied(after)
    for revision in env.graph.pending(state.current):
        if revision in now:
            log.info("applied %s", env.describe(revision))
    for revision in reversed(env.graph.pending(after)):
        if revision in was:
            log.info("reverted %s", env.describe(revision))
    log.info("plugin %s now at %s", env.name, ", ".join(after) or "no revision (base)")


def print_sql(
    envs: Sequence[Environment], url: str, plugin_target: Path, command_name: str = "upgrade",
    target: str = "heads",
) -> None:  # fmt: skip
    """Offline mode, each environment after the other: its SQL (from an empty
    database, or ``command_name``/``target``) on stdout; nothing connects."""
    from alembic import command

    for env in envs:
        destination = target
        if command_name == "downgrade" and ":" not in target:
            heads = env.graph.heads
            if len(heads) != 1:
                raise UsageError(
                    f"--sql --to {env.name}@base: the plugin's environment has "
                    f"{len(heads)} heads ({', '.join(heads) or 'none'}): printing a downgrade "
                    "needs one starting point"
                )
            destination = f"{heads[0]}:{target}"
        table = env.version_table or "(named by its env.py)"
        print(f"-- plugin {env.name}: its own Alembic environment, version table {table}")
        sys.stdout.flush()

        def run(config: Config, destination: str = destination) -> None:
            getattr(command, command_name)(config, destination, sql=True)

        _run(env, url, None, plugin_target, run, f"printing the SQL of {command_name}")


# --- Alembic, in-process ----------------------------------------------------------------


def _run(
    env: Environment,
    url: str,
    conn: Connection | None,
    plugin_target: Path,
    action: Callable[[Config], None],
    what: str,
    table: VersionTable | None = None,
) -> None:
    with contextlib.ExitStack() as stack:
        locations = [env.versions]
        if env.beside_env:
            # Alembic would load env.py itself as a revision: give it a folder of
            # links to the revision files alone.
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-boot-env-"))
            )
            for file in env.files:
                (folder / file.path.name).symlink_to(file.path.resolve())
            locations = [folder]
        config = _config(env, url, locations)
        if conn is not None:
            config.attributes["connection"] = conn
        stack.enter_context(process_state(plugin_target))
        try:
            action(config)
        except Exception as exc:
            reraise_termination(exc)
            log.debug("plugin %s: %s failed", env.name, what, exc_info=True)
            raise _failure(exc, env, conn, what, table) from None


def _config(env: Environment, url: str, locations: Sequence[Path]) -> Config:
    from alembic.config import Config

    class _EnvConfig(Config):
        def get_version_locations_list(self) -> list[str] | None:
            return [str(p) for p in locations]

    config = _EnvConfig(str(env.ini) if env.ini else None, stdout=sys.stdout)
    try:
        config.file_config  # noqa: B018 - parse while the file name is still set
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise MigrationError(
            f"cannot read {env.ini} (plugin {env.name}): {first_line(exc)}: fix the plugin "
            "(a new version) or disable it (ENABLED_PLUGINS)"
        ) from None
    config.config_file_name = None  # its [loggers] would replace portal-boot's handlers
    config.set_main_option("script_location", str(env.folder).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _failure(
    exc: Exception, env: Environment, conn: Connection | None, what: str,
    table: VersionTable | None,
) -> MigrationError:  # fmt: skip
    by_path = {str(f.path.resolve()): f for f in env.files}
    failed = None
    tb = exc.__traceback__
    while tb is not None:
        failed = by_path.get(str(Path(tb.tb_frame.f_code.co_filename).resolve())) or failed
        tb = tb.tb_next
    stays = ""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.rollback()
            if table is not None:
                now = read_table(conn, table)
                stays = f"; its version table {table} stays at {', '.join(now) or 'no revision'}"
    fix = (
        "fix the plugin (a new version) or the database, or disable the plugin "
        "(ENABLED_PLUGINS), then run portal-boot migrate again"
    )
    if failed is not None:
        return MigrationError(
            f"revision {failed.revision} of plugin {env.name}'s own Alembic environment "
            f"failed ({failed.path}): {first_line(exc)}{stays}: {fix}"
        )
    return MigrationError(
        f"plugin {env.name}'s own Alembic environment ({env.env_py}) failed while {what}: "
        f"{first_line(exc)}{stays}: {fix}"
    )
