"""The cross-replica migration lock: only one process migrates at a time.

PostgreSQL: a transaction-level advisory lock, key :data:`LOCK_KEY`, taken by
polling ``pg_try_advisory_xact_lock`` with jitter until the deadline, inside the
transaction it guards (:func:`take_xact_lock`). It lives exactly as long as that
transaction: commit, rollback, a lost connection or a dead client end it, and a
transaction pooler (PgBouncer's transaction mode) keeps a client on one backend for
the length of a transaction, so it works through one too; a session-level lock
would stay behind on a pooled backend no client owns. Never the blocking
``pg_advisory_xact_lock``: a waiter blocked in it holds a snapshot that makes the
holder's ``CREATE INDEX CONCURRENTLY`` wait for it, a deadlock no timeout on our side
would end; a waiter rolls back between polls and holds nothing.

SQLite: an exclusive ``flock`` on a file beside the database file; the kernel
releases it when the holder dies. Other databases: no lock (a warning says so).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot.errors import DatabaseError, LockTimeout

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection

log = logging.getLogger(__name__)

#: The advisory lock key: the ASCII bytes of "portalBT" as a signed 64-bit integer.
#: Fixed and documented, so an operator can see it in ``pg_locks`` (classid
#: 0x706F7274, objid 0x616C4254) and other tools can avoid it.
LOCK_KEY = 0x706F7274616C4254

#: The SQLite lock file is ``<database file><LOCK_SUFFIX>``.
LOCK_SUFFIX = ".portal-boot-lock"

# Polling: the first retry comes quickly (a short migration by another replica
# should not cost a second), then the interval grows to a cap; jitter spreads
# replicas that started together.
_FIRST_INTERVAL = 0.05
_MAX_INTERVAL = 1.0
# How often a waiter repeats who holds the lock.
_REPORT_EVERY = 10.0

_HOLDER_SQL = """
SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start, a.state,
       a.xact_start
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = :classid AND l.objid = :objid AND l.objsubid = 1
"""


def application_name(purpose: str = "migrate") -> str:
    """What portal-boot's sessions show in ``pg_stat_activity``: the command and the
    host (the pod's name under Kubernetes), so a lock holder can be found."""
    return f"portal-boot {purpose} {socket.gethostname()}"[:63]


def _intervals() -> Iterator[float]:
    interval = _FIRST_INTERVAL
    while True:
        yield interval * random.uniform(0.5, 1.0)
        interval = min(interval * 1.6, _MAX_INTERVAL)


@contextlib.contextmanager
def migration_lock(url: URL, *, timeout: float) -> Iterator[None]:
    """Hold the migration lock of a database other than PostgreSQL for the duration
    of the block (PostgreSQL's lives in a transaction: :func:`take_xact_lock`).
    Raises LockTimeout (status 7) after ``timeout`` seconds."""
    backend = url.get_backend_name()
    assert backend != "postgresql", "PostgreSQL's lock is take_xact_lock"
    if backend == "sqlite":
        with _sqlite_lock(url, timeout):
            yield
    else:
        log.warning(
            "no cross-replica migration lock for %s databases: run portal-boot migrate from "
            "one process only (an init container or a job), with AUTO_RUN_PLUGIN_MIGRATIONS=false "
            "on the replicas",
            backend,
        )
        yield


# --- PostgreSQL ------------------------------------------------------------------


def take_xact_lock(conn: Connection, timeout: float) -> None:
    """Take the migration lock in a new transaction on ``conn`` and leave that
    transaction open: the lock is released when it ends. Between polls the attempt
    is rolled back, so a waiter holds no transaction. Raises LockTimeout (status 7)
    after ``timeout`` seconds, naming the holder."""
    from sqlalchemy import text

    if conn.in_transaction():
        conn.rollback()
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    next_report = started
    holder: dict[str, Any] | None = None
    for pause in _intervals():
        if conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}
        ).scalar():
            break
        holder = _holder(conn)
        conn.rollback()
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeout(
                f"the migration lock was not free within {timeout:g} s: held by "
                f"{_describe(holder)}: another replica is still migrating; raise --lock-timeout "
                "/ PORTAL_BOOT_LOCK_TIMEOUT, or if that session is stuck end it with "
                f"SELECT pg_terminate_backend({holder['pid'] if holder else '<pid>'})"
            )
        if now >= next_report:
            log.info("waiting for the migration lock, held by %s", _describe(holder))
            next_report = now + _REPORT_EVERY
        time.sleep(min(pause, max(deadline - now, 0.0)))
    waited = time.monotonic() - started
    if waited > 0.05:
        log.info("migration lock taken after %.1f s", waited)
    else:
        log.debug("migration lock taken")


def holds_xact_lock(conn: Connection) -> bool:
    """Whether ``conn``'s transaction still holds the migration lock (a revision that
    committed on its own, or a connection the pooler or server closed, lost it)."""
    from sqlalchemy import text

    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted AND classid = :classid "
                "AND objid = :objid AND objsubid = 1)"
            ),
            {"classid": (LOCK_KEY >> 32) & 0xFFFFFFFF, "objid": LOCK_KEY & 0xFFFFFFFF},
        ).scalar()
    )


def _holder(conn: Connection) -> dict[str, Any] | None:
    from sqlalchemy import text

    try:
        row = conn.execute(
            text(_HOLDER_SQL),
            {"classid": (LOCK_KEY >> 32) & 0xFFFFFFFF, "objid": LOCK_KEY & 0xFFFFFFFF},
        ).first()
    except Exception as exc:  # noqa: BLE001 - only describes the holder: never fatal
        log.debug("cannot tell who holds the migration lock: %s", exc)
        return None
    return dict(row._mapping) if row is not None else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a session that just ended"
    parts = [f"pid {holder['pid']}"]
    if holder.get("application_name"):
        parts.append(f"application_name {holder['application_name']!r}")
    if holder.get("client_addr"):
        parts.append(f"from {holder['client_addr']}")
    start = holder.get("backend_start")
    if isinstance(start, datetime.datetime):
        parts.append(f"connected since {start.isoformat(timespec='seconds')}")
    if holder.get("state"):
        parts.append(f"state {holder['state']}")
    return ", ".join(parts)


# --- SQLite ----------------------------------------------------------------------


def sqlite_lock_path(url: URL) -> Path | None:
    """The lock file beside the database file; ``None`` for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database + LOCK_SUFFIX).absolute()


@contextlib.contextmanager
def _sqlite_lock(url: URL, timeout: float) -> Iterator[None]:
    path = sqlite_lock_path(url)
    if path is None:  # one process owns an in-memory database anyway
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DatabaseError(
            f"cannot create the migration lock file {path} ({exc.strerror or exc}): the "
            "folder of the SQLite database must exist and be writable"
        ) from None
    held = False
    try:
        deadline = time.monotonic() + timeout
        next_report = time.monotonic()
        for pause in _intervals():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                pass
            now = time.monotonic()
            holder = _read_holder(path)
            if now >= deadline:
                raise LockTimeout(
                    f"the migration lock {path} was not free within {timeout:g} s (held by "
                    f"{holder}): another process is still migrating; raise --lock-timeout / "
                    "PORTAL_BOOT_LOCK_TIMEOUT"
                )
            if now >= next_report:
                log.info("waiting for the migration lock %s, held by %s", path, holder)
                next_report = now + _REPORT_EVERY
            time.sleep(min(pause, max(deadline - now, 0.0)))
        # Say who holds it, for the next waiter. The lock is the flock, not the text.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
    except OSError:
        return "another process"
