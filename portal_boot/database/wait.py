"""wait-db: wait until the database answers ``SELECT 1``.

Retries with tenacity (exponential backoff, full jitter, first retry within 100 ms,
capped at ``max_interval``) what waiting can cure, and stops at once on what it
cannot. PostgreSQL is probed with psycopg directly, SQLite with the stdlib, anything
else through a pool-less SQLAlchemy engine.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from portal_boot.database.probes import prober
from portal_boot.database.verdicts import FIX_URL, NotReady
from portal_boot.dburl import sync_components
from portal_boot.errors import DatabaseError

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)

# A dropped SYN is retried with a fresh connection instead of the kernel's back-off.
_ATTEMPT_CAP = 5.0
# Even the last attempt before the deadline gets this long; the deadline may slip by it.
_ATTEMPT_FLOOR = 0.05

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
    probe, tcp = prober(url, parsed, where)
    started = time.monotonic()
    deadline = started + timeout
    attempts = 0
    last: list[NotReady] = []

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        budget = min(max(deadline - time.monotonic(), _ATTEMPT_FLOOR), _ATTEMPT_CAP)
        try:
            _within(budget, probe)
        except NotReady as exc:
            log.debug("database attempt %d failed: %s", attempts, exc.detail)
            if attempts == 1:
                log.info("waiting for the database at %s (%s)", where, exc.reason)
            last[:] = [exc]
            raise

    try:
        # A ready database (every warm boot) answers the first attempt: no retry
        # machinery is imported for it.
        attempt()
    except NotReady:
        _retry(attempt, deadline, max_interval, _sleeper(tcp, last, deadline), where)
    waited = time.monotonic() - started
    log.info("the database at %s answers (waited %.2f s, %s)", where, waited, _attempts(attempts))
    return waited


def check_url(url: str) -> None:
    """Refuse now, connecting to nothing, a URL that no wait can make work: malformed,
    an unknown or missing driver, bad parameters, a SQLite file in a folder that does
    not exist. Raises UsageError."""
    parsed = sync_components(url)
    prober(url, parsed, parsed.where())


def _retry(
    attempt: Callable[[], None],
    deadline: float,
    max_interval: float,
    sleep: Callable[[float], None],
    where: str = "",
) -> None:
    import tenacity

    started = time.monotonic()
    schedule = backoff(max_interval)
    retrying = tenacity.Retrying(
        # Only NotReady: Terminated (SIGTERM), DatabaseError and UsageError go through.
        retry=tenacity.retry_if_exception_type(NotReady),
        wait=lambda state: min(schedule(state), max(deadline - time.monotonic(), 0.0)),
        stop=lambda state: time.monotonic() >= deadline,
        sleep=sleep,
        reraise=True,
    )
    # The first attempt already failed: the first retry comes within 100 ms.
    sleep(min(random.uniform(0.01, 0.1), max(deadline - time.monotonic(), 0.0)))
    try:
        retrying(attempt)
    except NotReady as exc:
        waited = time.monotonic() - started
        raise DatabaseError(
            f"the database at {where} did not answer before the deadline (last: {exc.reason}; "
            f"{waited:.1f} s after the first attempt): check that the server runs and that "
            f"the host and port in {FIX_URL} are right, or wait longer with --db-timeout / "
            "PORTAL_BOOT_DB_TIMEOUT"
        ) from None


def _sleeper(
    tcp: tuple[str, int] | None, last: list[NotReady], deadline: float
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
        raise NotReady(f"no answer within {seconds:.1f} s")
    if outcome[0] is not None:
        raise outcome[0]


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"
