"""wait-db: wait until the database answers ``SELECT 1``.

Retries with tenacity (exponential backoff, full jitter, first retry within 100 ms,
capped at ``max_interval``) what waiting can cure, and stops at once on what it
cannot. PostgreSQL is probed with psycopg directly, SQLite with the stdlib, anything
else through a pool-less SQLAlchemy engine.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.dburl import Components, libpq_conninfo, redact, sync_components
from portal_boot.errors import DatabaseError, UsageError

if TYPE_CHECKING:
    import tenacity
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

RETRY, FATAL, USAGE = "retry", "fatal", "usage"
_FIX_URL = "--database-url / PORTAL_BOOT_DATABASE_URL (or DATABASE_URL)"
# A dropped SYN is retried with a fresh connection instead of the kernel's back-off.
_ATTEMPT_CAP = 5.0
# Even the last attempt before the deadline gets this long; the deadline may slip by it.
_ATTEMPT_FLOOR = 0.05


@dataclass(frozen=True)
class Verdict:
    action: str  # RETRY, FATAL or USAGE
    reason: str  # short, for the log and the error line
    hint: str = ""  # what to change, for FATAL and USAGE


_CREDENTIALS = f"fix the user or password in {_FIX_URL}"
_CREATE_DB = f"create it, or fix its name in {_FIX_URL}"
_SQLSTATES = {
    "57P03": Verdict(RETRY, "the database system is starting up"),
    "57P01": Verdict(RETRY, "the server is shutting down"),
    "53300": Verdict(RETRY, "too many connections"),
    "28P01": Verdict(FATAL, "password authentication failed", _CREDENTIALS),
    "28000": Verdict(FATAL, "the server does not admit this user", _CREDENTIALS),
    "3D000": Verdict(FATAL, "the database does not exist", _CREATE_DB),
}
# libpq before the connection (psycopg resolves host names itself), and the C library.
_DNS = (
    "could not translate host name|failed to resolve host|name or service not known"
    "|temporary failure in name resolution|nodename nor servname"
)
# libpq's connection errors carry no SQLSTATE (psycopg's sqlstate is None), so
# mostly the message is all there is. First match wins; the reason is the matched
# text unless one is given.
_MESSAGES: tuple[tuple[str, str, str | None, str], ...] = (
    (r'password authentication failed for user "[^"]*"', FATAL, None, _CREDENTIALS),
    (r"no password supplied", FATAL, None, f"add the password to {_FIX_URL}"),
    (r'role "[^"]*" does not exist', FATAL, None, _CREDENTIALS),
    (r"access denied for user \S+", FATAL, None, _CREDENTIALS),  # MySQL 1045
    (r"no pg_hba\.conf entry for [^\n]*", FATAL, None,
     "allow this client in the server's pg_hba.conf, or fix the user, database or sslmode"),
    (r'database "[^"]*" does not exist', FATAL, None, _CREATE_DB),
    (r"unknown database '[^']*'", FATAL, None, _CREATE_DB),  # MySQL 1049
    (r"permission denied for database [^\n]*", FATAL, None,
     "GRANT CONNECT on the database to the user, or use another user"),
    (r"server does not support SSL[^\n]*|certificate verify failed", FATAL, None,
     f"fix sslmode in {_FIX_URL}"),
    (r'invalid connection option "[^"]*"|invalid [\w ]+ value[^\n]*', USAGE, None,
     f"fix the parameter in {_FIX_URL}"),
    (r"the database system is [\w ]+", RETRY, None, ""),
    (r"connection refused", RETRY, "connection refused", ""),
    (_DNS, RETRY, "the host name does not resolve yet", ""),
    # No Unix socket yet: the server is not up.
    (r"no such file or directory", RETRY, "no server socket yet", ""),
    (r"too many clients already|remaining connection slots are reserved", RETRY, None, ""),
)  # fmt: skip


def classify(sqlstate: str | None, message: str) -> Verdict:
    """Decide from a failed attempt whether waiting can help. Pure.

    Anything unrecognised is retried: a server whose messages are translated must
    not turn "starting up" into a failed boot; the deadline bounds the cost.
    """
    if sqlstate in _SQLSTATES:
        return _SQLSTATES[sqlstate]
    for pattern, action, reason, hint in _MESSAGES:
        found = re.search(pattern, message, re.IGNORECASE)
        if found:
            return Verdict(action, redact(reason or found[0]), hint)
    # psycopg's first line reads 'connection to server at "h", port p failed: <reason>'.
    line = (message.strip().splitlines() or ["unknown error"])[0]
    return Verdict(RETRY, redact(line.rsplit(" failed: ", 1)[-1].strip() or line))


class _NotReady(Exception):
    """One attempt failed in a way that waiting can cure."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail or reason

    @property
    def port_closed(self) -> bool:
        return self.reason in ("connection refused", "no server socket yet")

    @property
    def starting(self) -> bool:
        return self.reason.startswith("the database system is")


def _judge(exc: BaseException, where: str) -> Exception:
    """The exception to raise for a driver's error: NotReady, DatabaseError or UsageError."""
    message = str(exc)
    verdict = classify(getattr(exc, "sqlstate", None), message)
    if verdict.action == RETRY:
        return _NotReady(verdict.reason, redact(" ".join(message.split())))
    if verdict.action == USAGE:
        return UsageError(f"the database URL is not usable ({verdict.reason}): {verdict.hint}")
    return DatabaseError(
        f"the database at {where} refused the connection ({verdict.reason}): {verdict.hint}"
    )


def backoff(max_interval: float) -> tenacity.wait.wait_base:
    """The retry schedule: random in a window that doubles from 0.1 s up to
    ``max_interval``; jitter keeps replicas from knocking in step."""
    import tenacity

    return tenacity.wait_random_exponential(
        multiplier=0.1, max=max_interval, min=min(0.01, max_interval)
    )


def wait_for_database(url: str, *, timeout: float, max_interval: float = 0.5) -> float:
    """Wait until the database at ``url`` (a SQLAlchemy URL, async or sync driver)
    answers ``SELECT 1``.

    Returns the seconds waited. Raises :class:`DatabaseError` when the deadline
    passes or the server refuses us (credentials, missing database), and
    :class:`UsageError` for a malformed URL, an unknown or missing driver, or a
    SQLite file in a folder that does not exist.
    """
    parsed = sync_components(url)
    where = parsed.where()
    probe, tcp = _prober(url, parsed, where)
    started = time.monotonic()
    deadline = started + timeout
    attempts = 0
    last: list[_NotReady] = []

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        budget = min(max(deadline - time.monotonic(), _ATTEMPT_FLOOR), _ATTEMPT_CAP)
        try:
            _within(budget, probe)
        except _NotReady as exc:
            log.debug("database attempt %d failed: %s", attempts, exc.detail)
            if attempts == 1:
                log.info("waiting for the database at %s (%s)", where, exc.reason)
            last[:] = [exc]
            raise

    try:
        # A ready database (every warm boot) answers the first attempt: no retry
        # machinery is imported for it.
        attempt()
    except _NotReady:
        _retry(attempt, deadline, max_interval, _sleeper(tcp, last, deadline))
    waited = time.monotonic() - started
    log.info("the database at %s answers (waited %.2f s, %s)", where, waited, _attempts(attempts))
    return waited


def check_url(url: str) -> None:
    """Refuse now, connecting to nothing, a URL that no wait can make work: malformed,
    an unknown or missing driver, bad parameters, a SQLite file in a folder that does
    not exist. Raises UsageError."""
    parsed = sync_components(url)
    _prober(url, parsed, parsed.where())


def _retry(
    attempt: Callable[[], None],
    deadline: float,
    max_interval: float,
    sleep: Callable[[float], None],
) -> None:
    import tenacity

    started = time.monotonic()
    schedule = backoff(max_interval)
    retrying = tenacity.Retrying(
        # Only _NotReady: Terminated (SIGTERM), DatabaseError and UsageError go through.
        retry=tenacity.retry_if_exception_type(_NotReady),
        wait=lambda state: min(schedule(state), max(deadline - time.monotonic(), 0.0)),
        stop=lambda state: time.monotonic() >= deadline,
        sleep=sleep,
        reraise=True,
    )
    # The first attempt already failed: the first retry comes within 100 ms.
    sleep(min(random.uniform(0.01, 0.1), max(deadline - time.monotonic(), 0.0)))
    try:
        retrying(attempt)
    except _NotReady as exc:
        waited = time.monotonic() - started
        raise DatabaseError(
            f"the database did not answer before the deadline (last: {exc.reason}; "
            f"{waited:.1f} s after the first attempt): check that the server runs and that "
            f"the host and port in {_FIX_URL} are right, or wait longer with --db-timeout / "
            "PORTAL_BOOT_DB_TIMEOUT"
        ) from None


def _sleeper(
    tcp: tuple[str, int] | None, last: list[_NotReady], deadline: float
) -> Callable[[float], None]:
    """The pause between attempts. While the server's port is closed, the pause is
    spent knocking on the port every 15 ms (a TCP connect costs well under a
    millisecond on a LAN) and ends as soon as it opens: a database that comes up is
    noticed within tens of milliseconds, not at the next backoff step. While the
    server says it is starting up, attempts come every 50 ms (it is moments away)."""

    def sleep(seconds: float) -> None:
        why = last[0] if last else None
        if why is not None and why.starting:
            seconds = min(seconds, 0.05)
        if tcp is None or why is None or not why.port_closed:
            time.sleep(seconds)
            return
        end = min(time.monotonic() + seconds, deadline)
        while (left := end - time.monotonic()) > 0:
            if _port_open(tcp, min(left, 0.05)):
                return
            time.sleep(min(0.015, max(end - time.monotonic(), 0.0)))

    return sleep


def _port_open(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _within(seconds: float, probe: Callable[[float], None]) -> None:
    """Run one probe, giving up after ``seconds``.

    In a helper thread because libpq counts its connect timeout in whole seconds
    (at least 2) and resolves host names without a timeout: the deadline and a
    SIGTERM (``Thread.join`` is interruptible) must not wait for either.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            probe(seconds)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=run, name="portal-boot-wait-db", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise _NotReady(f"no answer within {seconds:.1f} s")
    if outcome[0] is not None:
        raise outcome[0]


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _prober(
    url: str, parsed: Components, where: str
) -> tuple[Callable[[float], None], tuple[str, int] | None]:
    """A function making one attempt in at most the given seconds, and the TCP
    address to knock on between attempts (None: not a single TCP host). Raises
    UsageError now for what no attempt can fix (unknown driver, bad parameters)."""
    if parsed.drivername == "postgresql+psycopg":
        conninfo = libpq_conninfo(url, **_application_name(parsed))
        if conninfo is not None:
            host = parsed.host or "localhost"
            tcp = None if host.startswith("/") else (host, parsed.port or 5432)
            return _libpq_probe(conninfo, where), tcp
    if parsed.drivername in ("sqlite", "sqlite+pysqlite") and not parsed.query:
        return _sqlite_file_probe(parsed.database, where), None
    return _sqlalchemy_prober(url, where), None


def _application_name(parsed: Components) -> dict[str, str]:
    return {} if "application_name" in parsed.query else {"application_name": "portal-boot wait-db"}


def _libpq_probe(conninfo: str, where: str) -> Callable[[float], None]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise _judge(exc, where) from None

    def probe(seconds: float) -> None:
        # libpq's minimum; _within gives up earlier and this thread finishes alone.
        timeout = f" connect_timeout={max(2, math.ceil(seconds))}"
        try:
            with psycopg.connect(conninfo + timeout, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise _judge(exc, where) from None

    return probe


def _sqlite_file_probe(database: str | None, where: str) -> Callable[[float], None]:
    # As SQLAlchemy's pysqlite dialect: no name is an in-memory database.
    filename = database or ":memory:"
    if filename != ":memory:":
        filename = os.path.abspath(filename)
    return _sqlite_probe_for([filename], {}, where)


def _sqlalchemy_prober(url: str, where: str) -> Callable[[float], None]:
    from sqlalchemy.exc import NoSuchModuleError

    from portal_boot.dburl import parse, to_sync

    sync = to_sync(parse(url))
    try:
        dialect = sync.get_dialect()()
    except NoSuchModuleError:
        raise UsageError(
            f"unknown database driver {sync.drivername!r}: use postgresql+psycopg, sqlite or "
            f"another SQLAlchemy dialect in {_FIX_URL}"
        ) from None
    backend, driver = sync.get_backend_name(), sync.get_driver_name()
    if backend == "postgresql" and driver == "psycopg":
        return _psycopg_probe(dialect, sync, where)
    if backend == "sqlite" and driver == "pysqlite":
        args, kwargs = dialect.create_connect_args(sync)  # type: ignore[attr-defined]
        return _sqlite_probe_for(args, kwargs, where)
    return _sqlalchemy_probe(sync, where)


def _psycopg_probe(dialect: object, url: URL, where: str) -> Callable[[float], None]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    # The dialect's own arguments, for what libpq_conninfo declines (several hosts).
    _, params = dialect.create_connect_args(url)  # type: ignore[attr-defined]
    params.setdefault("application_name", "portal-boot wait-db")
    try:
        make_conninfo("", **params)
    except psycopg.ProgrammingError as exc:
        raise _judge(exc, where) from None

    def probe(seconds: float) -> None:
        # libpq's minimum; _within gives up earlier and this thread finishes alone.
        conninfo = make_conninfo("", **{**params, "connect_timeout": max(2, math.ceil(seconds))})
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise _judge(exc, where) from None

    return probe


def _sqlite_probe_for(args: list[str], kwargs: dict[str, object], where: str) -> Callable[[float], None]:
    import sqlite3

    in_memory = args[0] in ("", ":memory:")
    if not kwargs.get("uri") and not in_memory and not Path(args[0]).parent.is_dir():
        raise UsageError(
            f"the folder of the SQLite database {args[0]} does not exist: create it, or fix "
            f"the path in {_FIX_URL}"
        )

    def probe(seconds: float) -> None:
        try:
            conn = sqlite3.connect(*args, **{"timeout": seconds, **kwargs})
            try:
                conn.execute("SELECT 1").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if "unable to open" in str(exc):
                raise UsageError(
                    f"cannot open the SQLite database {where} ({exc}): fix the path or its "
                    f"permissions in {_FIX_URL}"
                ) from None
            raise DatabaseError(f"the SQLite database {where} does not answer ({exc})") from None

    return probe


def _sqlalchemy_probe(url: URL, where: str) -> Callable[[float], None]:
    from sqlalchemy import create_engine, exc, text
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(url, poolclass=NullPool)
    except ImportError as error:
        raise UsageError(
            f"the driver of {url.drivername} is not installed ({error.name or error}): install "
            f"it in the image, or choose another driver in {_FIX_URL}"
        ) from None
    except exc.ArgumentError as error:
        reason = redact(str(error))
        raise UsageError(f"the database URL is not usable ({reason}): fix {_FIX_URL}") from None

    def probe(seconds: float) -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except exc.DBAPIError as error:
            raise _judge(error.orig or error, where) from None

    return probe
