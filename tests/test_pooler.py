"""Migrations through a real PgBouncer in transaction mode (tests/pgbouncer.py), and
DDL that gives up on a busy table instead of stalling it (``--ddl-lock-timeout``)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from boot_support import figure, until
from cli_helpers import assert_one_line_failure, portal_boot
from pgbouncer import PgBouncer, binary
from pgserver import PgServer, free_port
from sqlalchemy.engine import make_url
from test_migrations_support import install_plugin, migrate_args, query, revision
from test_run import PORTAL, boot_env, start, stop, wait_http

from portal_boot.migrations.lock import LOCK_KEY

pytestmark = pytest.mark.skipif(
    binary() is None, reason="pgbouncer is not installed (scripts/test.sh installs it)"
)

AUDIT_0001 = """
import os
op.create_table('migration_log', sa.Column('revision', sa.Text()), sa.Column('pid', sa.Integer()))
op.execute("INSERT INTO migration_log VALUES ('audit_0001', pg_backend_pid())")
op.execute(f"SELECT pg_sleep({float(os.environ.get('AUDIT_SLEEP', '0'))})")
"""
AUDIT_0002 = "op.execute(\"INSERT INTO migration_log VALUES ('audit_0002', pg_backend_pid())\")"
AUDIT_0003 = "op.execute(\"INSERT INTO migration_log VALUES ('audit_0003', pg_backend_pid())\")"
# Leaves the transaction: the lock must then be held beside the work.
CONCURRENT_INDEX = """
op.execute("INSERT INTO migration_log VALUES ('index_0001', pg_backend_pid())")
with op.get_context().autocommit_block():
    op.execute("CREATE INDEX CONCURRENTLY ix_data_products_description ON data_products (description)")
"""
ADD_COLUMN = "op.add_column('data_products', sa.Column('note', sa.Text()))"


@pytest.fixture(scope="module")
def bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    pooler = PgBouncer(pg_server.admin_url, pg_server.password, pool_size=3)
    try:
        yield pooler
    finally:
        pooler.close()


def _audit_plugin(target: Path, **more: str) -> None:
    files = {
        "audit_0001.py": revision("audit_0001", None, labels=["audit"], depends_on="core_0002", upgrade=AUDIT_0001),
        "audit_0002.py": revision("audit_0002", "audit_0001", upgrade=AUDIT_0002),
    }  # fmt: skip
    files.update(more)
    install_plugin(target, "audit_plugin", files)


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _advisory_locks(url: str) -> list[int]:
    return query(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = :objid "
        "AND classid = :classid",
        objid=LOCK_KEY & 0xFFFFFFFF, classid=LOCK_KEY >> 32,
    )  # fmt: skip


def _start(app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "portal_boot", *migrate_args(app, url, *more, target=target)],
        env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "replicas", [8, pytest.param(16, marks=pytest.mark.slow)], ids=["8-replicas", "16-replicas"]
)
def test_replicas_migrate_through_pgbouncer_once_and_leave_no_lock(
    replicas: int, bouncer: PgBouncer, app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    _audit_plugin(target)
    pooled = bouncer.url(pg_url)
    procs = [
        _start(app, pooled, target, clean_env, AUDIT_SLEEP="1.0", PORTAL_BOOT_LOCK_TIMEOUT="120")
        for _ in range(replicas)
    ]
    results = [(p.wait(180), *p.communicate()) for p in procs]
    codes = [code for code, _, _ in results]
    assert codes == [0] * replicas, "\n".join(err for _, _, err in results)
    assert sorted(query(pg_url, "SELECT revision FROM migration_log")) == ["audit_0001", "audit_0002"]
    assert query(pg_url, "SELECT version_num FROM alembic_version") == ["audit_0002"]
    appliers = [err for _, _, err in results if "applied audit_0001" in err]
    waiters = [err for _, _, err in results if "nothing left to apply" in err]
    assert len(appliers) == 1
    assert "migrating through a connection pooler" in appliers[0]
    assert waiters, "no replica waited for the lock: the test did not exercise it"
    assert all("waiting for the migration lock, held by pid" in err for err in waiters)
    assert _advisory_locks(pg_url) == []  # nothing left on a pooled backend
    figure(
        f"pgbouncer transaction mode, pool of 3: {replicas} concurrent migrate, statuses "
        f"{codes}, 1 applier, {len(waiters)} waited, 0 advisory locks left"
    )

    # Right after: a new revision is applied at once, no lock left in the way.
    _audit_plugin(target, **{"audit_0003.py": revision("audit_0003", "audit_0002", upgrade=AUDIT_0003)})
    again = portal_boot(*migrate_args(app, pooled, "--lock-timeout", "5", target=target), env=clean_env)
    assert again.returncode == 0, again.stderr
    assert "waiting for the migration lock" not in again.stderr
    assert query(pg_url, "SELECT version_num FROM alembic_version") == ["audit_0003"]
    assert _advisory_locks(pg_url) == []


def test_a_revision_outside_the_transaction_through_pgbouncer(
    bouncer: PgBouncer, app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    _audit_plugin(target, **{
        "index_0001.py": revision("index_0001", "audit_0002", upgrade=CONCURRENT_INDEX),
    })  # fmt: skip
    pooled = bouncer.url(pg_url)
    procs = [
        _start(app, pooled, target, clean_env, AUDIT_SLEEP="0.5", PORTAL_BOOT_LOCK_TIMEOUT="120")
        for _ in range(4)
    ]
    results = [(p.wait(180), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 4, "\n".join(err for _, _, err in results)
    assert sorted(query(pg_url, "SELECT revision FROM migration_log")) == [
        "audit_0001", "audit_0002", "index_0001",
    ]  # fmt: skip
    assert query(
        pg_url,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_data_products_description'::regclass",
    ) == [True]
    assert any("leave the transaction" in err for _, _, err in results)
    assert _advisory_locks(pg_url) == []


@pytest.mark.parametrize("lock", ["in-the-transaction", "beside-the-work"])
def test_kill_9_through_pgbouncer_leaves_no_lock_behind(
    lock: str, bouncer: PgBouncer, app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    more = {}
    if lock == "beside-the-work":  # a revision leaves the transaction: a lock transaction
        more["index_0001.py"] = revision("index_0001", "audit_0002", upgrade=CONCURRENT_INDEX)
    _audit_plugin(target, **more)
    pooled = bouncer.url(pg_url)
    proc = _start(app, pooled, target, clean_env, AUDIT_SLEEP="60")
    until(lambda: _sleeping(pg_url), 30, "audit_0001's pg_sleep")
    assert _advisory_locks(pg_url)  # held, through the pooler
    proc.kill()
    proc.wait(10)
    proc.communicate()
    # PgBouncer closes a server connection whose client left mid-transaction; the
    # server rolls back and the lock goes with it.
    until(lambda: not _advisory_locks(pg_url), 10, "the lock to go")
    again = portal_boot(*migrate_args(app, pooled, "--lock-timeout", "10", target=target), env=clean_env)
    assert again.returncode == 0, again.stderr
    assert "waiting for the migration lock" not in again.stderr
    assert sorted(query(pg_url, "SELECT revision FROM migration_log")) == sorted(
        ["audit_0001", "audit_0002", *(["index_0001"] if more else [])]
    )
    assert _advisory_locks(pg_url) == []


def _sleeping(url: str) -> list[int]:
    return query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'active' AND query LIKE 'SELECT pg_sleep(%'",
    )


def test_wait_db_status_and_serve_through_pgbouncer(
    bouncer: PgBouncer, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    pooled = bouncer.url(pg_url)
    port = free_port()
    env = boot_env(clean_env, tmp_path, pooled, port)
    waited = portal_boot("wait-db", env=env, cwd=PORTAL)
    assert waited.returncode == 0, waited.stderr
    before = portal_boot("status", env=env, cwd=PORTAL)
    assert before.returncode == 6, before.stdout + before.stderr  # migrations to apply
    proc = start(["run"], env)
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert status == 200, body
    finally:
        stop(proc)
    after = portal_boot("status", env=env, cwd=PORTAL)
    assert after.returncode == 0, after.stdout + after.stderr
    port = free_port()
    proc = start(["serve", "--wait-for-migrations"], boot_env(clean_env, tmp_path, pooled, port))
    try:
        status, _ = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert status == 200
    finally:
        stop(proc)
    assert _advisory_locks(pg_url) == []


def test_statement_pooling_is_refused_in_one_line(
    pg_server: PgServer, app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    statement = PgBouncer(pg_server.admin_url, pg_server.password, pool_mode="statement")
    try:
        result = portal_boot(*migrate_args(app, statement.url(pg_url), target=tmp_path / "t"), env=clean_env)
    finally:
        statement.close()
    assert_one_line_failure(
        result, 2, "PgBouncer in statement pooling mode", "PORTAL_BOOT_MIGRATION_DATABASE_URL"
    )
    # And the direct URL named there works.
    direct = portal_boot(
        *migrate_args(app, statement.url(pg_url), target=tmp_path / "t"),
        env={**clean_env, "PORTAL_BOOT_MIGRATION_DATABASE_URL": pg_url},
    )
    assert direct.returncode == 0, direct.stderr
    assert query(pg_url, "SELECT version_num FROM alembic_version") == ["core_0002"]
    # migrate needs no other URL, and never shows that one's password, even at debug level.
    alone = portal_boot(
        "migrate", "--alembic-config", str(app), "--target", str(tmp_path / "t"),
        env={**clean_env, "PORTAL_BOOT_MIGRATION_DATABASE_URL": pg_url, "PORTAL_BOOT_LOG_LEVEL": "debug"},
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    assert pg_server.password not in alone.stdout + alone.stderr


# --- the DDL lock timeout --------------------------------------------------------


def _lines(stream) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _busy_table(url: str) -> psycopg.Connection:
    """A session holding ACCESS SHARE on data_products in an open transaction, as a
    long report would."""
    holder = psycopg.connect(_conninfo(url), application_name="test-long-report")
    holder.execute("SELECT count(*) FROM data_products").fetchone()
    return holder


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_ddl_waits_for_a_busy_table_without_stalling_it_and_succeeds_once_free(
    through: str, bouncer: PgBouncer, app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    url = bouncer.url(pg_url) if through == "pgbouncer" else pg_url
    target = tmp_path / "target"
    target.mkdir()
    assert portal_boot(*migrate_args(app, url, target=target), env=clean_env).returncode == 0
    install_plugin(target, "note_plugin", {
        "note_0001.py": revision("note_0001", None, labels=["note"], depends_on="core_0002", upgrade=ADD_COLUMN),
    })  # fmt: skip
    holder = _busy_table(pg_url)
    holder_pid = holder.info.backend_pid
    try:
        proc = _start(app, url, target, clean_env, "--ddl-lock-timeout", "1")
        lines = _lines(proc.stderr)
        seen = []
        while True:
            line = lines.get(timeout=60)
            assert line, "migrate ended before retrying:\n" + "".join(seen)
            seen.append(line)
            if "attempt 1 of 5 rolled back" in line:
                break
        assert "table data_products" in line and f"pid {holder_pid}" in line, line
        assert "'test-long-report'" in line
        holder.commit()  # the report ends
        code = proc.wait(60)
        rest = "".join(iter(lambda: lines.get(timeout=10), ""))
    finally:
        holder.close()
    assert code == 0, "".join(seen) + rest
    assert "applied note_0001" in rest
    assert "note" in query(
        pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'data_products'"
    )
    assert _advisory_locks(pg_url) == []


def test_ddl_on_a_table_that_stays_busy_fails_with_status_6_naming_the_blocker(
    app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    assert portal_boot(*migrate_args(app, pg_url, target=target), env=clean_env).returncode == 0
    install_plugin(target, "note_plugin", {
        "note_0001.py": revision("note_0001", None, labels=["note"], depends_on="core_0002", upgrade=ADD_COLUMN),
    })  # fmt: skip
    holder = _busy_table(pg_url)
    try:
        result = portal_boot(
            *migrate_args(app, pg_url, "--ddl-lock-timeout", "0.2", target=target), env=clean_env
        )
        pid = holder.info.backend_pid
        # While portal-boot tried, the report went on: it was never cancelled.
        assert holder.execute("SELECT 1").fetchone() == (1,)
    finally:
        holder.close()
    last = assert_one_line_failure(
        result, 6, "revision note_0001 (plugin note_plugin ", "table data_products",
        f"pid {pid}", "'test-long-report'", "5 attempts", f"pg_terminate_backend({pid})",
    )  # fmt: skip
    assert "--ddl-lock-timeout / PORTAL_BOOT_DDL_LOCK_TIMEOUT" in last
    assert result.stderr.count("rolled back (queries on it waited at most that long)") == 4
    assert query(pg_url, "SELECT version_num FROM alembic_version") == ["core_0002"]
    assert "note" not in query(
        pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'data_products'"
    )
    assert _advisory_locks(pg_url) == []


def test_ddl_lock_timeout_0_waits_as_long_as_it_takes(
    app: Path, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    assert portal_boot(*migrate_args(app, pg_url, target=target), env=clean_env).returncode == 0
    install_plugin(target, "note_plugin", {
        "note_0001.py": revision("note_0001", None, labels=["note"], depends_on="core_0002", upgrade=ADD_COLUMN),
    })  # fmt: skip
    holder = _busy_table(pg_url)
    try:
        proc = _start(app, pg_url, target, clean_env, "--ddl-lock-timeout", "0")
        # Queued for the table's lock, with no timeout of its own (0: off).
        until(
            lambda: query(
                pg_url,
                "SELECT pid FROM pg_locks WHERE relation = 'data_products'::regclass "
                "AND mode = 'AccessExclusiveLock' AND NOT granted",
            ),
            30, "the ALTER TABLE to queue",
        )  # fmt: skip
        holder.commit()
        code = proc.wait(60)
        _, stderr = proc.communicate()
    finally:
        holder.close()
    assert code == 0, stderr
    assert "rolled back" not in stderr
    assert "applied note_0001" in stderr
