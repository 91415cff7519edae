"""wait-db against real servers: a pure table for the error classification and a
property for the backoff, direct calls of ``wait_for_database``, and the CLI as a
subprocess for exit statuses, timings, signals and what reaches stderr.

Timings print their measured figure (``pytest -s`` shows it) and assert a generous
bound: the machine is shared and noisy.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from pgserver import LocalCluster, PgServer, as_postgres, free_port
from sqlalchemy.engine import make_url

from portal_boot.database.probes import _sqlalchemy_probe
from portal_boot.database.verdicts import FATAL, RETRY, USAGE, classify
from portal_boot.database.wait import backoff, wait_for_database
from portal_boot.dburl import parse
from portal_boot.errors import DatabaseError, UsageError

WRONG_PASSWORD = "Wr0ng-pass-7f3kQ"

# --- helpers -----------------------------------------------------------------------


def with_(url: str, **parts: object) -> str:
    return make_url(url).set(**parts).render_as_string(hide_password=False)


def wait_db(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "portal_boot", "wait-db", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result, time.monotonic() - started


Spawn = Callable[..., tuple[subprocess.Popen[str], "Stderr"]]


@pytest.fixture
def spawn(clean_env: dict[str, str]) -> Iterator[Spawn]:
    """Start ``portal-boot wait-db ARGS`` in the background; killed at the end if still there."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], Stderr]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal_boot", "wait-db", *args],
            env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc, Stderr(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Stderr:
    """A running wait-db's stderr, read by a thread that notes when each line came."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def when(self, needle: str, timeout: float = 30) -> tuple[float, str]:
        """When the first line holding ``needle`` came, and that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finished = not self.reader.is_alive()
            for stamp, line in list(self.lines):
                if needle in line:
                    return stamp, line
            if finished:
                break
            time.sleep(0.01)
        raise AssertionError(f"wait-db never said {needle!r}:\n{self.text()}")


def one_error_line(result: subprocess.CompletedProcess[str], kind: str) -> str:
    """The failure said in exactly one line on stderr, naming its kind."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"portal-boot: {kind}: "), lines[0]
    return lines[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener completes the TCP handshake and then never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# --- pure: classification and schedule --------------------------------------------

# Messages as psycopg 3 (libpq 18) really gives them; its sqlstate is None for all.
REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection '
    "refused\n\tIs the server running on that host and accepting TCP/IP connections?"
)
AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
SOCKET_MISSING = (
    'connection is bad: connection to server on socket "/run/pg/.s.PGSQL.5432" failed: '
    "No such file or directory"
)
HBA = 'no pg_hba.conf entry for host "10.0.0.1", user "app", database "portal", no encryption'


@pytest.mark.parametrize(
    ("sqlstate", "message", "action", "reason"),
    [
        (None, REFUSED, RETRY, "connection refused"),
        (None, "failed to resolve host 'db': [Errno -2] Name or service not known", RETRY,
         "the host name does not resolve yet"),
        (None, "failed to resolve host 'db': [Errno -3] Temporary failure in name resolution",
         RETRY, "the host name does not resolve yet"),
        (None, 'could not translate host name "db" to address: Name or service not known',
         RETRY, "the host name does not resolve yet"),
        (None, AT + "the database system is starting up", RETRY,
         "the database system is starting up"),
        (None, AT + "the database system is not accepting connections\nDETAIL:  Hot standby "
         "mode is disabled.", RETRY, "the database system is not accepting connections"),
        (None, AT + "the database system is shutting down", RETRY,
         "the database system is shutting down"),
        (None, SOCKET_MISSING, RETRY, "no server socket yet"),
        (None, AT + "sorry, too many clients already", RETRY, "too many clients already"),
        (None, AT + 'password authentication failed for user "app"', FATAL,
         'password authentication failed for user "app"'),
        (None, AT + 'role "app" does not exist', FATAL, 'role "app" does not exist'),
        (None, AT + 'database "portal" does not exist', FATAL, 'database "portal" does not exist'),
        (None, AT + HBA, FATAL, HBA),
        (None, "connection failed: fe_sendauth: no password supplied", FATAL, "no password supplied"),
        (None, AT[:-8] + "server does not support SSL, but SSL was required", FATAL,
         "server does not support SSL, but SSL was required"),
        (None, 'invalid connection option "foo"', USAGE, 'invalid connection option "foo"'),
        (None, 'connection is bad: invalid sslmode value: "bogus"', USAGE,
         'invalid sslmode value: "bogus"'),
        (None, "(1045, \"Access denied for user 'app'@'10.0.0.1' (using password: YES)\")",
         FATAL, "Access denied for user 'app'@'10.0.0.1'"),
        (None, "(1049, \"Unknown database 'portal'\")", FATAL, "Unknown database 'portal'"),
        # A SQLSTATE, when a driver gives one, decides before the message.
        ("57P03", "FATAL:  das Datenbanksystem startet", RETRY, "the database system is starting up"),
        ("28P01", "FATAL:  Passwort-Authentifizierung", FATAL, "password authentication failed"),
        ("3D000", "FATAL:  Datenbank existiert nicht", FATAL, "the database does not exist"),
        # Unknown (here: a translated server) is retried; the deadline bounds the cost.
        (None, AT + "das Datenbanksystem startet", RETRY, "FATAL:  das Datenbanksystem startet"),
        (None, "postgresql://app:s3cret@db/x went away", RETRY, "postgresql://app:***@db/x went away"),
    ],
)  # fmt: skip
def test_classify(sqlstate: str | None, message: str, action: str, reason: str) -> None:
    verdict = classify(sqlstate, message)
    assert (verdict.action, verdict.reason) == (action, reason)
    if action != RETRY:
        assert verdict.hint, "a failure that stops the boot says what to change"


def _intervals(schedule: tenacity.wait.wait_base, attempt: int, draws: int) -> list[float]:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return [schedule(state) for _ in range(draws)]


def test_backoff_first_retry_within_100ms_then_capped_with_jitter() -> None:
    schedule = backoff(0.5)
    first = _intervals(schedule, 1, 500)
    assert 0 < min(first) and max(first) <= 0.1
    later = [w for n in range(2, 40) for w in _intervals(schedule, n, 100)]
    assert 0 < min(later) and max(later) <= 0.5
    capped = _intervals(schedule, 30, 100)
    assert max(capped) > 0.3, "the window does grow to the cap"
    assert len(set(capped)) > 50, "replicas must not retry in step"


@given(max_interval=st.floats(0.001, 30), attempt=st.integers(1, 200))
def test_backoff_never_exceeds_its_cap(max_interval: float, attempt: int) -> None:
    (interval,) = _intervals(backoff(max_interval), attempt, 1)
    assert 0 < interval <= max_interval
    if attempt == 1:
        assert interval <= 0.1


# --- direct calls -------------------------------------------------------------------


def test_ready_database_returns_the_seconds_waited(pg_url: str) -> None:
    waited = wait_for_database(pg_url, timeout=10)
    assert 0 <= waited < 10


def test_refused_until_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="portal_boot")
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseError) as failure:
        wait_for_database(f"postgresql+psycopg://app:pw@127.0.0.1:{port}/x", timeout=0.6)
    elapsed = time.monotonic() - started
    print(f"refused: gave up after {elapsed:.3f} s (deadline 0.6 s)")
    assert 0.6 <= elapsed < 1.5
    message = str(failure.value)
    assert "connection refused" in message and "--db-timeout / PORTAL_BOOT_DB_TIMEOUT" in message
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [f"waiting for the database at 127.0.0.1:{port}/x (connection refused)"]
    attempts = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "attempt" in r.getMessage()
    ]
    assert len(attempts) >= 3, "retried several times within 0.6 s"


def test_deadline_holds_when_the_server_never_answers(silent_port: int) -> None:
    # libpq's connect_timeout cannot go below 2 s: the deadline must not depend on it.
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="no answer within"):
        wait_for_database(f"postgresql+psycopg://app:pw@127.0.0.1:{silent_port}/x", timeout=1.0)
    elapsed = time.monotonic() - started
    print(f"silent server: gave up after {elapsed:.3f} s (deadline 1.0 s)")
    assert 1.0 <= elapsed < 1.9


def test_wrong_password_stops_at_once_and_is_never_logged(
    pg_url: str, pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseError, match="password authentication failed") as failure:
        wait_for_database(with_(pg_url, password=WRONG_PASSWORD), timeout=30)
    for secret in (WRONG_PASSWORD, pg_server.password):
        assert secret not in str(failure.value)
        assert secret not in caplog.text


def test_unknown_driver_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown database driver 'foo\\+bar'"):
        wait_for_database("foo+bar://x/y", timeout=5)


def test_other_backends_go_through_sqlalchemy(pg_url: str) -> None:
    # The path MySQL and others take, shown here with the one server at hand.
    _sqlalchemy_probe(parse(pg_url), "here")(5.0)
    with pytest.raises(DatabaseError, match="password authentication failed"):
        _sqlalchemy_probe(parse(with_(pg_url, password=WRONG_PASSWORD)), "here")(5.0)


# --- through the CLI ----------------------------------------------------------------


def test_cli_ready_database(pg_url: str, clean_env: dict[str, str]) -> None:
    result, elapsed = wait_db("--database-url", pg_url, env=clean_env)
    print(f"ready database: wait-db took {elapsed:.2f} s (interpreter start included)")
    assert result.returncode == 0, result.stderr
    assert "answers" in result.stderr


def test_cli_notices_a_database_that_starts_late(own_cluster: LocalCluster, spawn: Spawn) -> None:
    launched = time.monotonic()
    proc, stderr = spawn("--database-url", own_cluster.admin_url, "--db-timeout", "30")
    stderr.when("waiting for the database")  # it is up and retrying
    time.sleep(max(0.0, launched + 3 - time.monotonic()))
    own_cluster.start(wait=False)
    conninfo = own_cluster.admin_url.replace("postgresql+psycopg://", "postgresql://")
    give_up = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(conninfo, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert time.monotonic() < give_up, "the server did not start"
            time.sleep(0.005)
    ready = time.monotonic()
    assert proc.wait(30) == 0, stderr.text()
    exited = time.monotonic()
    noticed, _ = stderr.when("answers")
    print(
        f"late database: wait-db noticed it {max(0.0, noticed - ready):.3f} s and exited "
        f"{exited - ready:.3f} s after the server first answered a query"
    )
    assert exited - ready < 1.5


def test_cli_wrong_password(pg_url: str, pg_server: PgServer, clean_env: dict[str, str]) -> None:
    url = with_(pg_url, password=WRONG_PASSWORD)
    result, elapsed = wait_db("--database-url", url, "--db-timeout", "60", env=clean_env)
    print(
        f"wrong password: exit {result.returncode} after {elapsed:.2f} s (interpreter start included)"
    )
    assert result.returncode == 5
    assert elapsed < 5
    assert "password authentication failed" in one_error_line(result, "DatabaseError")
    debug, _ = wait_db("--database-url", url, "--log-level", "debug", env=clean_env)
    assert debug.returncode == 5
    for output in (result.stdout, result.stderr, debug.stdout, debug.stderr):
        assert WRONG_PASSWORD not in output and pg_server.password not in output


def test_cli_missing_database(pg_server: PgServer, clean_env: dict[str, str]) -> None:
    url = with_(pg_server.admin_url, database="no_such_db")
    result, elapsed = wait_db("--database-url", url, env=clean_env)
    assert result.returncode == 5
    assert elapsed < 5
    assert 'database "no_such_db" does not exist' in one_error_line(result, "DatabaseError")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+psycopg://app:pw@db:notaport/x", "malformed"),
        ("foo+bar://x/y", "unknown database driver"),
        ("mysql+pymysql://app:pw@db/x", "not installed"),
        # libpq checks values when it connects, after psycopg has resolved the host.
        ("postgresql+psycopg://app:pw@127.0.0.1:1/x?sslmode=bogus", "sslmode"),
    ],
)
def test_cli_unusable_url(url: str, says: str, clean_env: dict[str, str]) -> None:
    result, _ = wait_db("--database-url", url, env=clean_env)
    assert result.returncode == 2
    line = one_error_line(result, "UsageError")
    assert says in line and "--database-url" in line


def test_cli_unresolvable_host_is_retried_until_the_deadline(clean_env: dict[str, str]) -> None:
    url = "postgresql+psycopg://app:pw@no-such-host.invalid:5432/x"
    result, elapsed = wait_db("--database-url", url, "--db-timeout", "1", env=clean_env)
    print(f"unresolvable host: exit {result.returncode} after {elapsed:.2f} s")
    assert result.returncode == 5
    assert elapsed >= 1
    lines = result.stderr.splitlines()
    assert "waiting for the database at no-such-host.invalid:5432/x" in lines[0]
    assert [line for line in lines if line.startswith("portal-boot:")] == [lines[-1]]
    assert "does not resolve" in lines[-1] and "PORTAL_BOOT_DB_TIMEOUT" in lines[-1]


def test_cli_standby_refuses_with_57p03_until_promoted(
    own_cluster: LocalCluster, spawn: Spawn
) -> None:
    # A standby with hot_standby=off answers every connection with 57P03
    # ("the database system is not accepting connections") until it is promoted.
    (own_cluster.data / "standby.signal").touch()
    with open(own_cluster.data / "postgresql.auto.conf", "a") as conf:
        conf.write("hot_standby = off\n")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(own_cluster.data / "standby.signal", pw.pw_uid, pw.pw_gid)
    own_cluster.start(wait=False)
    proc, stderr = spawn("--database-url", own_cluster.admin_url, "--db-timeout", "30")
    stderr.when("the database system is not accepting connections")
    time.sleep(0.5)
    assert proc.poll() is None, "still waiting on the standby"
    promote = [str(own_cluster.bindir / "pg_ctl"), "promote", "-D", str(own_cluster.data), "-w"]
    subprocess.run(
        as_postgres(promote), cwd=own_cluster.base, check=True, capture_output=True, timeout=60
    )
    assert proc.wait(30) == 0, stderr.text()


def test_cli_sigterm_while_waiting(spawn: Spawn) -> None:
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port()}/x"
    proc, stderr = spawn("--database-url", url, "--db-timeout", "60")
    stderr.when("waiting for the database")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    elapsed = time.monotonic() - sent
    said, _ = stderr.when("stopped by SIGTERM")
    print(
        f"SIGTERM: said so {said - sent:.3f} s and exited {elapsed:.3f} s after the signal "
        "(the rest is the interpreter shutting down)"
    )
    assert code == 143
    assert elapsed < 2
    assert stderr.lines[-1][1] == "portal-boot: stopped: stopped by SIGTERM"


def test_cli_sqlite(tmp_path: Path, clean_env: dict[str, str]) -> None:
    result, _ = wait_db("--database-url", f"sqlite:///{tmp_path}/x.db", env=clean_env)
    assert result.returncode == 0, result.stderr
    missing = wait_db("--database-url", f"sqlite:///{tmp_path}/nope/x.db", env=clean_env)[0]
    assert missing.returncode == 2
    assert f"{tmp_path}/nope/x.db does not exist" in one_error_line(missing, "UsageError")


def test_cli_database_url_file(pg_url: str, tmp_path: Path, clean_env: dict[str, str]) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(pg_url + "\n")
    result, _ = wait_db(env={**clean_env, "DATABASE_URL_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
