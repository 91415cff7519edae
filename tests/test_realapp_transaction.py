"""Revisions that cannot run in one transaction (tests/fixtures/realapp's c05:
``CREATE INDEX CONCURRENTLY`` in ``op.get_context().autocommit_block()``): found when
the files are read, warned about before they run, and a ``kill -9`` in the middle of
a real ``CREATE INDEX CONCURRENTLY`` followed by the next ``migrate`` resuming.
Real PostgreSQL; portal-boot as a child process, really killed."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psycopg
import pytest
from boot_support import portal_boot_argv, until
from cli_helpers import portal_boot
from realapp import CORE_HEAD, CORE_TABLES, REALAPP, copy_realapp, index_state, postgres_env
from sqlalchemy.engine import make_url
from test_migrations_support import current, migrate_args, query, revision, tables

from portal_boot.migrations.revisions import read_file

VERSIONS = REALAPP / "app/database/alembic/versions"
WARNING = (
    "revision c05 (the application) runs part of its upgrade outside the migration's transaction"
)


def test_autocommit_blocks_are_found_when_reading_the_files(tmp_path: Path) -> None:
    assert read_file(VERSIONS / "c05_index_concurrently.py", None).autocommit == (
        "upgrade", "downgrade",
    )  # fmt: skip
    assert read_file(VERSIONS / "c06_roles.py", None).autocommit == ()
    # In a helper the two functions share: counts for both; only in downgrade: that one.
    helper = tmp_path / "x1.py"
    helper.write_text(
        revision("x1", None, upgrade="_concurrently()")
        + "\n\ndef _concurrently():\n    with op.get_context().autocommit_block():\n        pass\n"
    )
    assert read_file(helper, None).autocommit == ("upgrade", "downgrade")
    down_only = tmp_path / "x2.py"
    down_only.write_text(
        revision("x2", None, downgrade="with op.get_context().autocommit_block():\n    pass")
    )
    assert read_file(down_only, None).autocommit == ("downgrade",)


def _waiting_index_builds(url: str) -> list[str]:
    return query(
        url,
        "SELECT phase FROM pg_stat_progress_create_index "
        "WHERE datname = current_database() AND phase LIKE 'waiting for%'",
    )


def _index_backends(url: str) -> list[int]:
    return query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query ILIKE '%INDEX CONCURRENTLY%'",
    )


def test_kill_9_during_create_index_concurrently_then_the_next_migrate_resumes(
    tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    app = copy_realapp(tmp_path / "realapp")
    env = {**clean_env, **postgres_env(pg_url)}
    args = migrate_args(app, pg_url, target=tmp_path / "no-plugins")
    # A transaction of the test's that holds a snapshot: CREATE INDEX CONCURRENTLY
    # waits for it ("waiting for old snapshots") before it marks the index valid.
    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    holder = psycopg.connect(libpq)
    try:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1")
        log = tmp_path / "killed.log"
        with log.open("wb") as stderr:
            child = subprocess.Popen(
                portal_boot_argv(*args), env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
            try:
                until(
                    lambda: _waiting_index_builds(pg_url), 60, "CREATE INDEX CONCURRENTLY to wait"
                )
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(30)
        killed = log.read_text()
        assert WARNING in killed, killed
        # What the server does when it notices the client is gone
        # (client_connection_check_interval; env.py's own connection does not set it).
        backends = _index_backends(pg_url)
        assert backends
        query(pg_url, "SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) pid",
              p=backends)  # fmt: skip
        until(lambda: not _index_backends(pg_url), 30, "the index build to end")
    finally:
        holder.close()
    # The documented exception: the revisions before c05 were committed when its
    # block started; c05 is not recorded, its index left INVALID; c06 never ran.
    assert current(pg_url) == {"c04"}
    assert tables(pg_url) == CORE_TABLES - {"roles"}
    assert index_state(pg_url) == "INVALID"
    # The next migrate resumes at c05 (which drops the leftover first) and completes.
    again = portal_boot(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert WARNING in again.stderr
    assert "applied c01" not in again.stderr
    assert "applied c05" in again.stderr and "applied c06" in again.stderr
    assert current(pg_url) == {CORE_HEAD}
    assert tables(pg_url) == CORE_TABLES
    assert index_state(pg_url) == "valid"


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
def test_the_warning_names_the_direction_that_breaks_the_transaction(
    direction: str, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    app = copy_realapp(tmp_path / "realapp")
    env = {**clean_env, **postgres_env(pg_url)}
    up = portal_boot(*migrate_args(app, pg_url), env=env)
    assert up.returncode == 0, up.stderr
    if direction == "upgrade":
        result = up
    else:
        result = portal_boot(*migrate_args(app, pg_url, "--to", "c04"), env=env)
        assert result.returncode == 0, result.stderr
        assert current(pg_url) == {"c04"} and index_state(pg_url) == "absent"
    assert f"runs part of its {direction} outside the migration's transaction" in result.stderr
    assert result.stderr.count("outside the migration's transaction") == 1
