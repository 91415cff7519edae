"""PostgreSQL: the upgrade under the migration lock, on a direct connection or
through a transaction pooler (PgBouncer's ``pool_mode = transaction``).

The lock is transaction-level (:func:`portal_boot.migrations.lock.take_xact_lock`),
so it lives exactly as long as a transaction; which transaction depends on the
revisions to run:

- **All of them stay in the upgrade's transaction** (the usual case): the lock is
  taken in that transaction, on the connection Alembic gets, and the upgrade runs in
  it. One connection, one transaction: commit, rollback, SIGTERM or a dead client
  end the lock and the work together, and a pooler keeps the transaction on one
  backend. A statement that hits the DDL lock timeout rolls back to a savepoint
  taken after the lock, so the retry keeps the lock (:mod:`.ddl`).
- **Some leave it** (Alembic's ``autocommit_block``, e.g. ``CREATE INDEX
  CONCURRENTLY``): the lock is held by a transaction of its own, on a second
  connection, open (idle) for the whole upgrade; the revisions run on the first, in
  and out of transactions as they need. It never takes a snapshot or a table lock,
  so a ``CONCURRENTLY`` statement does not wait for it, and it dies with the
  process: the server (or the pooler, which closes a backend whose client left
  mid-transaction) rolls it back. Its server-side idle timeout is switched off in
  it; a pooler's own ``idle_transaction_timeout`` must be off or longer than the
  migration (PgBouncer's default is off).

A pooler in statement mode cannot hold a transaction at all: see
:func:`pooler_problem`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from portal_boot.errors import MigrationError, UsageError
from portal_boot.migrations import ddl
from portal_boot.migrations.lock import holds_xact_lock, take_xact_lock

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

DIRECT_URL_HINT = "--migration-database-url / PORTAL_BOOT_MIGRATION_DATABASE_URL"


def upgrade(
    engine: Engine,
    conn: Connection,
    *,
    files: Sequence[Path],
    work: Callable[[Connection, bool], T],
    lock_timeout: float,
    ddl_lock_timeout: float,
    name: Callable[[BaseException], str],
    separate: str | None = None,
) -> T:
    """Take the migration lock, run ``work(conn, in_locked_transaction)`` and
    commit; retried on the DDL lock timeout. ``files`` are the revision files the
    run may execute; ``name`` names the revision an error came from; ``separate``,
    why the work commits transactions of its own whatever the files say (plugins
    with their own Alembic environment), which puts the lock beside it too. Raises
    LockTimeout, MigrationError; lets Terminated through."""
    leaving = [path for path in files if ddl.leaves_transaction(path)]
    guard = ddl.Guard(engine, ddl_lock_timeout)

    def fail(exc: BaseException, blocked: ddl.Blocked | None) -> Exception:
        pid = blocked.first_pid() if blocked else None
        return MigrationError(
            f"{name(exc)}: {blocked.what() if blocked else 'a lock'} stayed locked by "
            f"{blocked.who() if blocked else 'a session the watcher did not see'} through "
            f"{ddl.ATTEMPTS} attempts of {ddl_lock_timeout:g} s (--ddl-lock-timeout / "
            "PORTAL_BOOT_DDL_LOCK_TIMEOUT); each was rolled back"
            + (
                ", nothing of this run is applied"
                if not leaving
                else " (revisions committed before it stay applied)"
            )
            + ": end that transaction"
            + (f" (SELECT pg_terminate_backend({pid}))" if pid else "")
            + " or wait until it is over, then run portal-boot migrate again"
        )

    with guard.on(conn):
        if not leaving and not separate:
            return _in_one_transaction(conn, guard, work, lock_timeout, fail, name)
        if leaving:
            log.info(
                "%d revision file(s) leave the transaction (autocommit_block: %s): the "
                "migration lock is held by a transaction of its own for the whole upgrade",
                len(leaving),
                ", ".join(p.name for p in leaving),
            )
        else:
            log.debug("the migration lock is held beside the work: %s", separate)
        return _beside_the_work(engine, conn, guard, work, lock_timeout, fail, name)


def _in_one_transaction(
    conn: Connection,
    guard: ddl.Guard,
    work: Callable[[Connection, bool], T],
    lock_timeout: float,
    fail: Callable[[BaseException, ddl.Blocked | None], Exception],
    name: Callable[[BaseException], str],
) -> T:
    take_xact_lock(conn, lock_timeout)

    def attempt() -> T:
        savepoint = conn.begin_nested()
        try:
            result = work(conn, True)
        except BaseException:
            if savepoint.is_active:
                savepoint.rollback()
            raise
        if savepoint.is_active:
            savepoint.commit()
        return result

    result = ddl.retrying(attempt, guard, on_retry=lambda: None, fail=fail, name=name)
    if not conn.in_transaction() or not holds_xact_lock(conn):
        raise MigrationError(
            "a revision ended portal-boot's transaction (a COMMIT of its own?), and with it "
            "the migration lock: another replica may have run revisions at the same time; "
            "check the database, and use op.get_context().autocommit_block() for "
            "statements that must run outside a transaction"
        )
    conn.commit()
    return result


def _beside_the_work(
    engine: Engine,
    conn: Connection,
    guard: ddl.Guard,
    work: Callable[[Connection, bool], T],
    lock_timeout: float,
    fail: Callable[[BaseException, ddl.Blocked | None], Exception],
    name: Callable[[BaseException], str],
) -> T:
    from sqlalchemy import text

    if conn.in_transaction():
        conn.rollback()
    with engine.connect() as lock_conn:
        take_xact_lock(lock_conn, lock_timeout)
        lock_conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))

        def attempt() -> T:
            result = work(conn, False)
            if conn.in_transaction():
                conn.commit()
            return result

        def undo() -> None:
            if conn.in_transaction():
                conn.rollback()

        try:
            result = ddl.retrying(attempt, guard, on_retry=undo, fail=fail, name=name)
            try:
                held = holds_xact_lock(lock_conn)
            except Exception:  # noqa: BLE001 - a closed connection holds nothing
                held = False
            if not held:
                raise MigrationError(
                    "the migration lock's transaction was closed during the upgrade (a "
                    "pooler's idle_transaction_timeout, or the server's): another replica "
                    "may have run revisions at the same time; check the database, and give "
                    f"{DIRECT_URL_HINT} a direct URL or lengthen that timeout"
                )
        finally:
            with contextlib.suppress(Exception):
                lock_conn.rollback()  # releases the lock
    return result


def pooler_problem(message: str) -> UsageError | None:
    """One line naming the pooler and the fix, for an error only a pooler gives
    (PgBouncer in statement mode refuses the transactions migrations need)."""
    if "statement pooling mode" in message or "transaction blocks not allowed" in message:
        return UsageError(
            "the database URL goes through PgBouncer in statement pooling mode, which "
            "refuses the transactions a migration needs: give migrate a direct URL with "
            f"{DIRECT_URL_HINT}, or a pool in transaction mode"
        )
    return None
