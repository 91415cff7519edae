"""``portal-boot alembic ARGS...``: Alembic's own command line over this run's project.

Once a plugin revision is applied, the application's own ``alembic current`` fails
("Can't locate revision"): it does not know the plugins' revision folders. This runs
Alembic's command line (its own parser, its own commands and output) with the
application's ``alembic.ini``, the enabled plugins' revision locations (the same as
``migrate`` uses), the sync URL set on the config (never in argv, never printed),
and, for the commands that change the database (``upgrade``, ``downgrade``,
``stamp``, ``ensure_version``; not with ``--sql``), the cross-replica migration lock.
The commands that write revision files (``revision``, ``merge``, ``edit``, ``init``)
are refused: they belong to the application's development tree, not a deployment.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot import logs
from portal_boot.errors import DatabaseError, MigrationError, UsageError
from portal_boot.migrations import runner
from portal_boot.migrations.lock import migration_lock
from portal_boot.migrations.project import Project, first_line
from portal_boot.migrations.project import load as load_project
from portal_boot.migrations.sources import Sources
from portal_boot.plugins import Plugin

if TYPE_CHECKING:
    from argparse import Namespace

log = logging.getLogger(__name__)

#: Commands that change the database: run under the migration lock.
WRITES = frozenset({"upgrade", "downgrade", "stamp", "ensure_version"})
#: Commands that write files into the application's tree: refused.
REFUSED = frozenset({"init", "revision", "merge", "edit", "list_templates"})


class _Scrubbed:
    """Alembic's stdout, through portal-boot's scrub filter."""

    def write(self, text: str) -> int:
        return sys.stdout.write(logs.scrub(text))

    def flush(self) -> None:
        sys.stdout.flush()


def parse(argv: Sequence[str]) -> Namespace | None:
    """Alembic's own parser over ``argv``; None when it printed its help (``--help``).
    Raises UsageError for what it refused (it printed why above)."""
    from alembic.config import CommandLine

    parser = CommandLine(prog="portal-boot alembic").parser
    try:
        options = parser.parse_args(list(argv))
    except SystemExit as exc:
        if not exc.code:
            return None
        raise UsageError(
            "Alembic refused these arguments (its message is above): see "
            "portal-boot alembic -- --help"
        ) from None
    if not hasattr(options, "cmd"):
        parser.print_usage(sys.stderr)
        raise UsageError(
            "no Alembic command: give one, e.g. portal-boot alembic current (all of them: "
            "portal-boot alembic -- --help)"
        )
    if options.config:
        raise UsageError(
            "-c/--config: portal-boot runs Alembic with the application's alembic.ini; "
            "point --alembic-config / PORTAL_BOOT_ALEMBIC_CONFIG at another file instead"
        )
    name = options.cmd[0].__name__
    if name in REFUSED:
        raise UsageError(
            f"alembic {name} writes files into the application's tree: run the "
            "application's own alembic in its development checkout; portal-boot alembic "
            "works on the deployed database"
        )
    return options


def run(
    sources: Sources,
    plugins: Sequence[Plugin],
    *,
    url: str,
    argv: Sequence[str],
    lock_timeout: float,
) -> None:
    """Run Alembic's command line ``argv`` (``url``: the sync URL). Raises UsageError,
    MigrationError (Alembic's CommandError, or a failed revision), DatabaseError,
    LockTimeout."""
    options = parse(argv)
    if options is None:
        return
    fn, positional, kwarg = options.cmd
    name = fn.__name__
    project = load_project(sources, plugins)
    with contextlib.ExitStack() as stack:
        config = runner.alembic_config(project, url, _locations(project, stack))
        config.cmd_opts = options
        config.config_ini_section = options.name
        config.stdout = _Scrubbed()  # type: ignore[assignment]
        if name in WRITES and not getattr(options, "sql", False):
            stack.enter_context(_locked(url, lock_timeout))
        stack.enter_context(runner.project_state(project))
        log.info("alembic %s (%s)", name, _revision_folders(project))
        arguments: list[Any] = [getattr(options, k, None) for k in positional]
        keywords = {k: getattr(options, k, None) for k in kwarg}
        _call(fn, config, arguments, keywords, project)


def _call(
    fn: Any, config: Any, arguments: list[Any], keywords: dict[str, Any], project: Project
) -> None:
    from alembic.util import CommandError

    from portal_boot.migrations.connections import database_errors as _database_errors

    try:
        with _database_errors():
            fn(config, *arguments, **keywords)
    except CommandError as exc:
        raise MigrationError(f"alembic {fn.__name__}: {logs.scrub(str(exc))}") from None
    except (MigrationError, UsageError, DatabaseError):
        raise
    except Exception as exc:
        runner.reraise_termination(exc)
        log.debug("alembic %s failed", fn.__name__, exc_info=True)
        failed = runner.failed_revision(exc, project.files)
        where = f"revision {failed.revision} ({failed.owner})" if failed else "the command"
        raise MigrationError(
            f"alembic {fn.__name__}: {where} failed: {first_line(exc)} (--log-level debug "
            "shows the traceback)"
        ) from None


def _locations(project: Project, stack: contextlib.ExitStack) -> list[Path] | None:
    """The version locations ``migrate`` uses; in the ``link``/``copy`` modes, a
    temporary folder of links to this run's files (nothing is placed)."""
    if project.sources.migrations_mode == "locations":
        return runner.run_locations(project)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-boot-alembic-")))
    for i, file in enumerate(project.files):
        (folder / f"{i:04d}_{file.path.name}").symlink_to(file.path.resolve())
    return [folder]


def _revision_folders(project: Project) -> str:
    plugins = [p.name for p in project.plugins if p.migrations_dir is not None]
    return f"the application's revisions and those of {', '.join(plugins) or 'no plugin'}"


@contextlib.contextmanager
def _locked(url: str, timeout: float) -> Iterator[None]:
    """The migration lock for one Alembic command. PostgreSQL: the transaction-level
    lock, held by a transaction of its own on a connection beside Alembic's (as for
    revisions that leave the transaction, migrations/locked.py), so it lives exactly
    as long as the command and dies with the process, through a pooler too."""
    from sqlalchemy import text

    from portal_boot.migrations.connections import connect as _connect
    from portal_boot.migrations.connections import make_engine as _engine
    from portal_boot.migrations.lock import take_xact_lock

    engine = _engine(url, purpose="alembic")
    try:
        if engine.dialect.name != "postgresql":
            with migration_lock(engine.url, timeout=timeout):
                yield
            return
        with _connect(engine) as lock_conn:
            take_xact_lock(lock_conn, timeout)
            lock_conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    lock_conn.rollback()  # releases the lock
    finally:
        engine.dispose()
