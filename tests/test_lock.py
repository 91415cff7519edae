"""The migration lock and what happens when a migration is interrupted, through
real ``portal-boot migrate`` processes on a real PostgreSQL (and SQLite)."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from boot_support import until
from cli_helpers import assert_one_line_failure, portal_boot
from sqlalchemy.engine import make_url
from test_migrations_support import (
    install_plugin,
    migrate_args,
    query,
    revision,
    tables,
)

from portal_boot.migrations.lock import LOCK_KEY, LOCK_SUFFIX

CORE = {"portal_settings", "data_products", "alembic_version"}

# audit_0001 logs its own application (and may sleep, from AUDIT_SLEEP, so a test can
# catch it in the middle); audit_0002 logs its own too.
AUDIT_0001 = """
import os
op.create_table('migration_log', sa.Column('revision', sa.Text()), sa.Column('pid', sa.Integer()))
op.execute("INSERT INTO migration_log VALUES ('audit_0001', pg_backend_pid())")
op.execute(f"SELECT pg_sleep({float(os.environ.get('AUDIT_SLEEP', '0'))})")
"""
AUDIT_0002 = "op.execute(\"INSERT INTO migration_log VALUES ('audit_0002', pg_backend_pid())\")"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    install_plugin(
        folder, "audit_plugin",
        {
            "audit_0001.py": revision("audit_0001", None, labels=["audit"], depends_on="core_0002", upgrade=AUDIT_0001),
            "audit_0002.py": revision("audit_0002", "audit_0001", upgrade=AUDIT_0002),
        },
    )  # fmt: skip
    return folder


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _start(
    app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "portal_boot", *migrate_args(app, url, *more, target=target)],
        env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _until(condition: Callable[[], object], timeout: float, what: str) -> object:
    return until(condition, timeout, what, every=0.05)


def _sleeping_backend(url: str) -> list[int]:
    """Backends of the test database running audit_0001's pg_sleep."""
    return query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE 'SELECT pg_sleep(%'",
    )


def _advisory_locks(url: str, *, granted: bool = True) -> list[int]:
    return query(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = :granted "
        "AND objid = :objid AND classid = :classid",
        granted=granted, objid=LOCK_KEY & 0xFFFFFFFF, classid=LOCK_KEY >> 32,
    )  # fmt: skip


def test_eight_replicas_at_once_apply_each_revision_once(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    procs = [
        _start(app, pg_url, target, clean_env, AUDIT_SLEEP="1.0", PORTAL_BOOT_LOCK_TIMEOUT="60")
        for _ in range(8)
    ]
    results = [(p.wait(90), *p.communicate()) for p in procs]
    for code, _, stderr in results:
        assert code == 0, stderr
    assert sorted(query(pg_url, "SELECT revision FROM migration_log")) == [
        "audit_0001",
        "audit_0002",
    ]
    assert query(pg_url, "SELECT version_num FROM alembic_version") == ["audit_0002"]
    appliers = [err for _, _, err in results if "applied audit_0001" in err]
    assert len(appliers) == 1
    assert "through a connection pooler" not in appliers[0]  # a direct connection
    waiters = [err for _, _, err in results if "nothing left to apply" in err]
    assert waiters, "no replica waited for the lock: the test did not exercise it"
    assert all("waiting for the migration lock, held by pid" in err for err in waiters)
    # The rest started after the applier finished: they found the database at the
    # heads, on the fast path or on the full one.
    at_heads = sum("nothing to apply" in e or "migrate: nothing to do" in e for _, _, e in results)
    assert len(appliers) + len(waiters) + at_heads == 8


def test_lock_timeout_exits_7_naming_the_holder(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    with psycopg.connect(
        _conninfo(pg_url), autocommit=True, application_name="test-holder"
    ) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        pid = holder.info.backend_pid
        started = time.monotonic()
        result = portal_boot(
            *migrate_args(app, pg_url, "--lock-timeout", "1", target=target), env=clean_env
        )
        elapsed = time.monotonic() - started
    assert_one_line_failure(
        result, 7, f"held by pid {pid}", "application_name 'test-holder'",
        "--lock-timeout / PORTAL_BOOT_LOCK_TIMEOUT", f"pg_terminate_backend({pid})",
    )  # fmt: skip
    assert f"waiting for the migration lock, held by pid {pid}" in result.stderr
    assert elapsed < 5
    assert tables(pg_url) == set()


def test_a_waiter_polls_never_blocks_and_proceeds_once_released(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    with psycopg.connect(
        _conninfo(pg_url), autocommit=True, application_name="test-holder"
    ) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        proc = _start(app, pg_url, target, clean_env)
        # The waiter shows who it is, and no session ever queues in pg_advisory_lock
        # (a blocked waiter would make a CREATE INDEX CONCURRENTLY wait for it).
        names = _until(
            lambda: query(
                pg_url,
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'portal-boot migrate %'",
            ),
            15, "portal-boot's sessions",
        )  # fmt: skip
        assert names
        for _ in range(10):
            assert _advisory_locks(pg_url, granted=False) == []
            time.sleep(0.1)
        assert proc.poll() is None
    code, (_, stderr) = proc.wait(30), proc.communicate()
    assert code == 0, stderr
    assert "application_name 'test-holder'" in stderr
    assert "migration lock taken after" in stderr
    assert _advisory_locks(pg_url) == []  # released, connection closed
    assert query(pg_url, "SELECT count(*) FROM migration_log") == [2]


def test_sigterm_while_waiting_for_the_lock(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        proc = _start(app, pg_url, target, clean_env)
        _until(lambda: "waiting for the migration lock" in _peek(proc), 15, "the lock wait")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        assert time.monotonic() - started < 1.0
    assert code == 143
    assert proc.stderr is not None and "portal-boot: stopped" in proc.stderr.read()


_peeked: dict[int, str] = {}


def _peek(proc: subprocess.Popen[str]) -> str:
    """What a running child wrote to stderr so far (non-blocking)."""
    import os

    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    _peeked[proc.pid] = _peeked.get(proc.pid, "") + chunk.decode(errors="replace")
    return _peeked[proc.pid]


@pytest.mark.parametrize("env_py", ["example", "generic"])
def test_sigterm_mid_migration_rolls_back_and_cancels_the_statement(
    env_py: str, app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    if env_py == "generic":
        # Alembic's template as it is: env.py opens its own connection from
        # sqlalchemy.url, and that statement must be cancelled too.
        import alembic

        template = Path(alembic.__file__).parent / "templates/generic/env.py"
        (app.parent / "app/database/alembic/env.py").write_bytes(template.read_bytes())
    proc = _start(app, pg_url, target, clean_env, AUDIT_SLEEP="60")
    backend = _until(lambda: _sleeping_backend(pg_url), 20, "audit_0001's pg_sleep")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    assert time.monotonic() - started < 2.0
    _, stderr = proc.communicate()
    assert code == 143, stderr
    assert stderr.rstrip().splitlines()[-1] == "portal-boot: stopped: stopped by SIGTERM"
    # Cancelled on the server too, not left running (and holding locks) for a gone client.
    _until(lambda: not _sleeping_backend(pg_url), 2, f"backend {backend} to stop")
    assert _advisory_locks(pg_url) == []
    assert tables(pg_url) == set()  # the whole upgrade was one transaction
    again = portal_boot(*migrate_args(app, pg_url, target=target), env=clean_env)
    assert again.returncode == 0, again.stderr
    assert query(pg_url, "SELECT count(*) FROM migration_log") == [2]


def test_kill_9_mid_migration_leaves_nothing_half_applied(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    proc = _start(app, pg_url, target, clean_env, AUDIT_SLEEP="60")
    _until(lambda: _sleeping_backend(pg_url), 20, "audit_0001's pg_sleep")
    proc.kill()
    proc.wait(10)
    proc.communicate()
    # The server notices the dead client (client_connection_check_interval, set by
    # portal-boot) and rolls back instead of sleeping on with its locks.
    _until(lambda: not _sleeping_backend(pg_url), 5, "the orphaned statement to end")
    assert tables(pg_url) == set()
    assert _advisory_locks(pg_url) == []
    again = portal_boot(*migrate_args(app, pg_url, target=target), env=clean_env)
    assert again.returncode == 0, again.stderr
    assert tables(pg_url) == CORE | {"migration_log"}
    assert sorted(query(pg_url, "SELECT revision FROM migration_log")) == [
        "audit_0001",
        "audit_0002",
    ]


def test_sqlite_file_lock(app: Path, tmp_path: Path, clean_env: dict[str, str]) -> None:
    db = tmp_path / "portal.db"
    url = f"sqlite:///{db}"
    with open(f"{db}{LOCK_SUFFIX}", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on another-host\n")
        held.flush()
        result = portal_boot(*migrate_args(app, url, "--lock-timeout", "1"), env=clean_env)
    assert_one_line_failure(
        result, 7, f"{db}{LOCK_SUFFIX}", "pid 4242 on another-host", "--lock-timeout"
    )
    assert not db.exists() or tables(url) == set()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "portal_boot", *migrate_args(app, url)],
            env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]  # fmt: skip
    for proc in procs:
        code, (_, stderr) = proc.wait(60), proc.communicate()
        assert code == 0, stderr
    assert tables(url) == CORE
