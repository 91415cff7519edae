"""DDL that does not stall the application (PostgreSQL).

An ``ALTER TABLE`` needs an ACCESS EXCLUSIVE lock; queued behind one long query on
that table, it makes every later query on the table queue behind *it*: the
application stalls for as long as the long query runs. So every transaction of the
upgrade sets a short ``lock_timeout`` (``--ddl-lock-timeout``, 5 s by default, 0:
off) with ``SET LOCAL``: the statement gives up instead (SQLSTATE 55P03,
``lock_not_available``), the attempt's work is rolled back, and the upgrade is tried
again after a pause with jitter, at most :data:`ATTEMPTS` times in all; then status 6
names the table and the session that held it.

While the upgrade runs, a watcher on a connection of its own looks, every fraction
of the lock timeout, whether the upgrade's backend waits for a lock, and if so for
which relation and behind which sessions (``pg_blocking_pids``): once the lock
timeout fires, the wait and its blockers are gone from the server's view.

Nothing here is session state: ``SET LOCAL`` lasts until the transaction ends, so a
transaction pooler hands no setting of ours to another client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

#: How many times the upgrade is tried when a statement hits the lock timeout.
ATTEMPTS = 5
#: The longest pause between two attempts, in seconds.
MAX_PAUSE = 30.0

LOCK_NOT_AVAILABLE = "55P03"

_WAITING_SQL = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
_BLOCKERS_SQL = """
SELECT l.locktype, l.relation::regclass::text AS relation, l.mode,
       a.pid, a.application_name, a.state, a.xact_start
FROM pg_locks l
CROSS JOIN LATERAL unnest(pg_blocking_pids(l.pid)) AS b(pid)
JOIN pg_stat_activity a ON a.pid = b.pid
WHERE l.pid = %s AND NOT l.granted
"""


def pauses(lock_timeout: float) -> Iterator[float]:
    """The pauses between attempts: the lock timeout, doubling, capped at
    :data:`MAX_PAUSE`, each drawn between half and all of that (jitter)."""
    pause = max(lock_timeout, 0.1)
    while True:
        yield min(pause, MAX_PAUSE) * random.uniform(0.5, 1.0)
        pause *= 2


def lock_not_available(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is PostgreSQL's lock_not_available."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (current, getattr(current, "orig", None)):
            if getattr(candidate, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return True
        current = current.__cause__ or current.__context__
    return False


def leaves_transaction(path: Path) -> bool:
    """Whether a revision file leaves the upgrade's transaction (Alembic's
    ``autocommit_block``). A plain text check: a mention in a comment counts too,
    which only costs that run a second connection."""
    try:
        return b"autocommit_block" in path.read_bytes()
    except OSError:
        return False


@dataclasses.dataclass
class Blocked:
    """What the upgrade's backend was last seen waiting for."""

    relation: str | None
    locktype: str
    mode: str
    blockers: list[dict[str, Any]]

    def what(self) -> str:
        if self.relation:
            return f"table {self.relation}"
        return f"a {self.locktype} lock"

    def who(self) -> str:
        return "; ".join(describe_session(b) for b in self.blockers) or "a session that ended"

    def first_pid(self) -> int | None:
        return self.blockers[0]["pid"] if self.blockers else None


def describe_session(row: dict[str, Any]) -> str:
    parts = []
    if row.get("application_name"):
        parts.append(f"application_name {row['application_name']!r}")
    if row.get("state"):
        parts.append(f"state {row['state']!r}")
    start = row.get("xact_start")
    if isinstance(start, datetime.datetime):
        parts.append(f"in a transaction since {start.isoformat(timespec='seconds')}")
    return f"pid {row['pid']}" + (f" ({', '.join(parts)})" if parts else "")


class Guard:
    """The lock timeout on every transaction of one connection, and the watcher
    that sees what it waits for."""

    def __init__(self, engine: Engine, lock_timeout: float) -> None:
        self.engine = engine
        self.lock_timeout = lock_timeout
        self.backend_pid: int | None = None  # of the current transaction
        # A pooler answers the connection with a backend pid of its own (PgBouncer:
        # a random one); a TCP proxy or NAT does not touch it.
        self.pooled: bool | None = None
        self.last: Blocked | None = None
        self._stop = threading.Event()

    # --- SET LOCAL on every transaction ------------------------------------------

    def _on_begin(self, conn: Connection) -> None:
        driver = conn.connection.driver_connection
        if driver is None or getattr(driver, "autocommit", True):
            return  # an autocommit_block: no transaction to set anything in
        settings = [("idle_in_transaction_session_timeout", "0")]
        if self.lock_timeout > 0:
            settings.append(("lock_timeout", f"{max(1, round(self.lock_timeout * 1000))}ms"))
        if driver.info.server_version >= 140000:
            # If portal-boot dies (kill -9) mid-statement, the server checks the
            # socket every second and aborts, instead of running the statement to
            # its end with the locks it holds.
            settings.append(("client_connection_check_interval", "1000"))
        calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
        params = [value for pair in settings for value in pair]
        # psycopg begins the transaction with this statement: SET LOCAL, in one trip.
        row = driver.execute(f"SELECT pg_backend_pid(), {calls}", params).fetchone()
        self.backend_pid = row[0] if row else None
        if self.pooled is None and self.backend_pid is not None:
            self.pooled = driver.info.backend_pid != self.backend_pid
            if self.pooled:
                log.info(
                    "migrating through a connection pooler (the backend pid it gave, %d, is "
                    "not the server's, %d): transaction-level lock, no prepared statements, "
                    "SET LOCAL only",
                    driver.info.backend_pid,
                    self.backend_pid,
                )

    @contextlib.contextmanager
    def on(self, conn: Connection) -> Iterator[None]:
        """Set the lock timeout in every transaction ``conn`` begins, and watch it."""
        from sqlalchemy import event

        event.listen(conn, "begin", self._on_begin)
        watcher = None
        if self.lock_timeout > 0:
            watcher = threading.Thread(target=self._watch, name="ddl-lock-watch", daemon=True)
            watcher.start()
        try:
            yield
        finally:
            event.remove(conn, "begin", self._on_begin)
            self._stop.set()
            if watcher is not None:
                watcher.join(2.0)

    # --- the watcher ---------------------------------------------------------------

    def _watch(self) -> None:
        every = min(0.5, max(self.lock_timeout / 4, 0.02))
        try:
            # psycopg itself, not a pooled SQLAlchemy connection: when the server goes
            # away, the pool would log its failed reset with a traceback.
            import psycopg

            from portal_boot.migrations.lock import application_name

            args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            kwargs.setdefault("application_name", application_name("migrate"))
            kwargs.pop("context", None)
            with psycopg.connect(
                *args, **kwargs, autocommit=True, prepare_threshold=None
            ) as driver:
                while not self._stop.wait(every):
                    pid = self.backend_pid
                    if pid is None:
                        continue
                    row = driver.execute(_WAITING_SQL, (pid,)).fetchone()
                    if not row or row[0] != "Lock":
                        continue
                    rows = driver.execute(_BLOCKERS_SQL, (pid,)).fetchall()
                    if rows:
                        first = rows[0]
                        self.last = Blocked(
                            relation=first[1],
                            locktype=first[0],
                            mode=first[2],
                            blockers=[
                                {
                                    "pid": r[3],
                                    "application_name": r[4],
                                    "state": r[5],
                                    "xact_start": r[6],
                                }
                                for r in rows
                            ],
                        )
        except Exception as exc:  # noqa: BLE001 - it only describes: never fatal
            log.debug("the lock watcher stopped: %s", exc)

    def take_last(self) -> Blocked | None:
        last, self.last = self.last, None
        return last


def retrying(
    attempt: Callable[[], Any],
    guard: Guard,
    *,
    on_retry: Callable[[], None],
    fail: Callable[[BaseException, Blocked | None], Exception],
    name: Callable[[BaseException], str],
) -> Any:
    """Run ``attempt`` until it does not hit the lock timeout, at most
    :data:`ATTEMPTS` times; ``on_retry`` undoes a failed attempt's work. ``fail``
    makes the final error; ``name`` names what failed (a revision)."""
    schedule = pauses(guard.lock_timeout)
    for number in range(1, ATTEMPTS + 1):
        guard.take_last()
        try:
            return attempt()
        except Exception as exc:
            if not lock_not_available(exc):
                raise
            blocked = guard.take_last()
            on_retry()
            if number == ATTEMPTS:
                raise fail(exc, blocked) from None
            pause = next(schedule)
            log.warning(
                "%s: %s stayed locked for the lock timeout (%g s, --ddl-lock-timeout) by %s: "
                "attempt %d of %d rolled back (queries on it waited at most that long); "
                "again in %.1f s",
                name(exc),
                blocked.what() if blocked else "a lock",
                guard.lock_timeout,
                blocked.who() if blocked else "a session the watcher did not see",
                number,
                ATTEMPTS,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")
