"""Core and plugin migrations: applied once, under the cross-replica lock.

A run: read the revision files (application + enabled plugins) and check them
(:mod:`portal_boot.migrations.preflight`); read the database's revisions; if anything is
pending, take the lock (:mod:`portal_boot.migrations.lock`; on PostgreSQL inside the
upgrade's transaction, :mod:`portal_boot.migrations.locked`), place the plugin files in the
``link``/``copy`` modes, read the revisions again (a replica that held the lock
may have done everything), and upgrade to all heads, in one transaction where
the database and the application's ``env.py`` allow it
(:mod:`portal_boot.migrations.project`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot.errors import DatabaseError, MigrationError
from portal_boot.logs import summarise
from portal_boot.migrations import at_heads, ddl, environment_runs, environments, preflight, runner
from portal_boot.migrations.connections import (
    connect,
    database_errors,
    make_engine,
    sync_url,
    where_of,
)
from portal_boot.migrations.lock import migration_lock
from portal_boot.migrations.locked import upgrade as locked_upgrade
from portal_boot.migrations.project import (
    Project,
    current_revisions,
    files_in_place,
    first_line,
    place_files,
)
from portal_boot.migrations.project import load as load_project
from portal_boot.migrations.revisions import RevisionFile
from portal_boot.migrations.sources import Sources
from portal_boot.migrations.targets import command_for, sql_command
from portal_boot.plugins import Plugin

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RevisionState:
    """Where the database is and where the revision files lead."""

    current: tuple[str, ...]  # the rows of the version table
    heads: tuple[str, ...]
    pending: tuple[str, ...]  # in the order they would be applied
    # One entry a plugin with its own Alembic environment (environment_runs.entry).
    environments: tuple[dict[str, Any], ...] = ()

    @property
    def at_heads(self) -> bool:
        return not self.pending and not any(e["pending"] for e in self.environments)

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": list(self.current),
            "heads": list(self.heads),
            "pending": list(self.pending),
            "environments": [dict(e) for e in self.environments],
        }


# --- public API ----------------------------------------------------------------


def upgrade(
    sources: Sources,
    plugins: Sequence[Plugin],
    *,
    url: str,
    db_timeout: float,
    lock_timeout: float,
    sql: bool = False,
    to: str | None = None,
    remove: str | None = None,
    ddl_lock_timeout: float = 0.0,
) -> None:
    """Apply the core and plugin migrations: to all heads, or up or down to ``to``;
    or, with ``remove``, revert exactly that plugin's revisions
    (:mod:`portal_boot.migrations.removal`).

    ``url`` is the database URL, async or sync (Alembic gets the sync one). A
    database already at the heads is noticed without Alembic (:mod:`portal_boot.migrations.at_heads`).
    With ``sql``, print the SQL on stdout instead (from an empty database, or the
    ``FROM:TO`` range given as ``to``); no connection is made. Raises UsageError
    (the Alembic config), MigrationError (a pre-flight check or a failed revision),
    LockTimeout, DatabaseError.
    """
    plain = to is None and remove is None  # to all heads
    if plain and not sql:
        found = at_heads.at_heads(sources, plugins, url, timeout=db_timeout)
        if found:
            log.info(
                "migrate: nothing to do, database at heads %s (checked without Alembic)",
                ", ".join(found.current),
            )
            environment_runs.log_at_heads(found.environments)
            return
    url = sync_url(url)
    project = load_project(sources, plugins)
    envs = environments.load(plugins)
    log.info(
        "%d revision files: the application's and those of %s (--migrations-mode %s)%s",
        len(project.files),
        ", ".join(p.name for p in plugins if not environments.is_own_environment(p))
        or "no plugin",
        sources.migrations_mode,
        environment_runs.describe(envs),
    )
    own = environment_runs.find_target(envs, to) if to is not None else None
    if remove is not None and own is None:  # --remove of a plugin with its own environment
        own = environment_runs.find_target(envs, f"{remove}@base")
    if sql:
        if own is not None:
            environment_runs.print_sql([own[0]], url, sources.target, *own[1:])
            return
        command, target = sql_command(project, to)
        if command == "downgrade" and files_in_place(project):
            from portal_boot.migrations import removal

            removal.check_sql_downgrade(project, url, target)
        runner.print_sql(project, url, command, target)
        if plain:
            environment_runs.print_sql(envs, url, sources.target)
        return
    engine = make_engine(url)
    try:
        with database_errors(where_of(url)), contextlib.ExitStack() as stack:
            conn = stack.enter_context(connect(engine))
            current = current_revisions(conn)
            preflight.check_database(project.graph, current, others=project.others)
            pending_before = project.graph.pending(current) + environment_runs.pending_names(
                environment_runs.states(envs, url, conn, sources.target)
            )
            if plain and not pending_before and files_in_place(project):
                log.info("database at the heads (%s): nothing to apply", ", ".join(current))
                return
            placed: dict[Path, RevisionFile] = {}
            # Plugins with their own environment commit one transaction each: the lock
            # then needs a transaction of its own, beside the work (locked.py).
            own_work = bool(envs) and (plain or own is not None)

            def work(conn: Connection, locked: bool) -> tuple[tuple[str, ...], ...] | None:
                nonlocal placed
                placed = place_files(project)
                if own is not None:  # --to NAME@base / NAME@heads of an own environment
                    environment_runs.run_target(*own, url, conn, sources.target)
                    return None
                # Again, now that we hold the lock: a replica that held it before us
                # may have applied everything.
                current = current_revisions(conn, keep_transaction=locked)
                preflight.check_database(project.graph, current, others=project.others)
                if plain and not project.graph.pending(current):
                    if environment_runs.upgrade_all(envs, url, conn, sources.target):
                        return None
                    if pending_before:
                        log.info(
                            "nothing left to apply: another process brought the database "
                            "to the heads"
                        )
                    else:  # the lock was only needed for the versions folder
                        log.info(
                            "database at the heads (%s): nothing to apply", ", ".join(current)
                        )
                    return None
                with runner.session(project, url, placed=placed) as session:
                    steps, destination = _steps(project, session, current, to, remove)
                    if steps is None:
                        return None
                    session.execute(
                        conn, steps, current, destination=destination,
                        commit=not locked, passthrough=ddl.lock_not_available,
                    )  # fmt: skip
                changes = current, current_revisions(conn, keep_transaction=locked)
                if plain and envs:  # then the plugins with their own environment, each committed
                    _log_changes(project, *changes)
                    environment_runs.upgrade_all(envs, url, conn, sources.target)
                    return None
                return changes

            if engine.dialect.name == "postgresql":
                changes = locked_upgrade(
                    engine, conn,
                    # Those that may run: the pending ones, or any for --to / --remove.
                    files=[project.graph.files[r].path for r in project.graph.pending(current)]
                    if plain else [f.path for f in project.files],
                    work=work,
                    lock_timeout=lock_timeout,
                    ddl_lock_timeout=ddl_lock_timeout,
                    name=lambda exc: runner.failed_name(exc, project, placed),
                    separate="plugins with their own Alembic environment commit their own "
                    "transactions" if own_work else None,
                )  # fmt: skip
            else:
                with migration_lock(engine.url, timeout=lock_timeout):
                    changes = work(conn, False)
            if changes:
                _log_changes(project, *changes)
    finally:
        engine.dispose()

def wait_until_at_heads(
    sources: Sources, plugins: Sequence[Plugin], *, url: str, timeout: float
) -> None:
    """Wait, at most ``timeout`` seconds, until the database is at the
    heads (for replicas that do not migrate themselves). Raises MigrationError on
    timeout or on a revision no file defines, DatabaseError if the database does
    not answer, UsageError for the Alembic config."""
    found = at_heads.at_heads(
        sources, plugins, url, timeout=timeout, purpose="serve", files_too=False
    )
    if found:
        log.info("database at the heads (%s), checked without Alembic", ", ".join(found.current))
        return
    from sqlalchemy.exc import DBAPIError

    url = sync_url(url)
    project = load_project(sources, plugins)
    envs = environments.load(plugins)
    engine = make_engine(url, purpose="serve")
    deadline = time.monotonic() + timeout
    next_report = time.monotonic()
    pause = 0.1
    try:
        while True:
            pending: tuple[str, ...] | None = None
            problem = ""
            try:
                with engine.connect() as conn:
                    current = current_revisions(conn)
                    own = environment_runs.states(envs, url, conn, sources.target)
            except DBAPIError as exc:  # not up yet, or restarting: keep waiting
                problem = first_line(exc)
            else:
                preflight.check_database(project.graph, current, others=project.others)
                pending = project.graph.pending(current) + environment_runs.pending_names(own)
            if pending == ():
                log.info("database at the heads (%s)", ", ".join(project.graph.heads))
                return
            now = time.monotonic()
            if now >= deadline:
                if pending is None:
                    raise DatabaseError(
                        f"the database at {where_of(url)} did not answer within {timeout:g} s "
                        f"({problem}): "
                        "check --database-url / DATABASE_URL, or raise --db-timeout / "
                        "PORTAL_BOOT_DB_TIMEOUT"
                    )
                log.debug("pending: %s", ", ".join(pending))
                listed = summarise(pending, count=False)
                if listed != ", ".join(pending):
                    listed += "; --log-level debug lists all"
                raise MigrationError(
                    f"the database is not at the heads after {timeout:g} s: "
                    f"{len(pending)} revision(s) pending ({listed}): run `portal-boot "
                    "migrate` (an init container or a job), or raise --db-timeout / "
                    "PORTAL_BOOT_DB_TIMEOUT"
                )
            if now >= next_report:
                log.info(
                    "waiting for the migrations: %s",
                    f"{len(pending)} revision(s) pending ({summarise(pending, count=False)})"
                    if pending
                    else problem,
                )
                next_report = now + 10.0
            time.sleep(min(pause * random.uniform(0.5, 1.0), max(deadline - now, 0.0)))
            pause = min(pause * 1.6, 1.0)
    finally:
        engine.dispose()


def revision_state(
    sources: Sources, plugins: Sequence[Plugin], *, url: str, timeout: float
) -> RevisionState:
    """The database's revisions, the heads, and what is pending (for ``status``).
    Raises MigrationError (a pre-flight problem), DatabaseError, UsageError."""
    found = at_heads.at_heads(
        sources, plugins, url, timeout=timeout, purpose="status", files_too=False
    )
    if found:
        return RevisionState(found.current, found.heads, (), found.environments)
    url = sync_url(url)
    project = load_project(sources, plugins)
    envs = environments.load(plugins)
    engine = make_engine(url, purpose="status")
    try:
        with database_errors(where_of(url)), connect(engine) as conn:
            current = current_revisions(conn)
            own = environment_runs.states(envs, url, conn, sources.target)
    finally:
        engine.dispose()
    preflight.check_database(project.graph, current, others=project.others)
    return RevisionState(
        current,
        project.graph.heads,
        project.graph.pending(current),
        tuple(state.as_dict() for state in own),
    )


def _steps(
    project: Project,
    session: runner.Session,
    current: Sequence[str],
    to: str | None,
    remove: str | None,
) -> tuple[list[runner.Step] | None, str | None]:
    """What this run is to do, checked before anything changes: the steps (None:
    nothing to do, logged) and the destination env.py may ask for."""
    from portal_boot.migrations import removal

    if remove is not None:
        plugin, steps = removal.steps(project, current, remove)
        if not steps:
            log.info("plugin %s has no revision applied: nothing to remove", plugin.name)
            return None, None
        return steps, None
    command, target = command_for(project, to, current)
    if not command:
        log.info(
            "the database has %s and nothing after it on its line: nothing to do "
            "(another plugin's revisions that depend on it are reverted with "
            "--remove PLUGIN)",
            target,
        )
        return None, None
    steps = session.plan(command, target, current)
    if to is not None:
        removal.check_to_base(project, to, steps)
    return steps, target


def _log_changes(project: Project, before: Sequence[str], after: Sequence[str]) -> None:
    graph = project.graph
    was, now = graph.applied(before), graph.applied(after)
    for revision in graph.pending(before):
        if revision in now:
            log.info("applied %s", project.describe(revision))
    for revision in reversed(graph.pending(after)):
        if revision in was:
            log.info("reverted %s", project.describe(revision))
    log.info("database now at %s", ", ".join(after) or "no revision (base)")
