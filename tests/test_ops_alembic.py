"""Issue 12.1: ``portal-boot alembic ARGS``, Alembic's own command line over the
application's alembic.ini and the enabled plugins' revisions, through the CLI on a
real PostgreSQL: what the application's own ``alembic current`` cannot do once a
plugin revision is applied."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from sqlalchemy.engine import make_url
from test_migrations_support import migrate_args, tables

from portal_boot.migrations.lock import LOCK_KEY

S3 = {"s3_buckets", "s3_objects"}


@pytest.fixture
def migrated(app: Path, both: Path, pg_url: str, clean_env: dict[str, str]) -> str:
    result = portal_boot(*migrate_args(app, pg_url, target=both), env=clean_env)
    assert result.returncode == 0, result.stderr
    return pg_url


def alembic(app: Path, target: Path, url: str, env: dict[str, str], *args: str, **more: str):
    return portal_boot(
        "alembic", "--alembic-config", str(app), "--target", str(target), *args,
        env={**env, "PORTAL_BOOT_DATABASE_URL": url, **more},
    )  # fmt: skip


def test_the_applications_own_alembic_cannot_but_portal_boot_alembic_can(
    app: Path, both: Path, migrated: str, clean_env: dict[str, str]
) -> None:
    # The application's own Alembic, with the URL in its ini: it does not know the
    # plugins' revision files.
    ini = re.sub(
        r"(?m)^sqlalchemy\.url\s*=.*$", f"sqlalchemy.url = {migrated.replace('%', '%%')}",
        app.read_text(),
    )
    own_ini = app.with_name("own.ini")
    own_ini.write_text(ini)
    own = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(own_ini), "current"],
        env=clean_env, cwd=app.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert own.returncode != 0
    assert "Can't locate revision" in own.stderr
    result = alembic(app, both, migrated, clean_env, "current")
    assert result.returncode == 0, result.stderr
    for head in ("core_0002", "s3_0002 (head)", "snowflake_0001 (head)"):
        assert head in result.stdout, result.stdout
    password = make_url(migrated).password
    assert password and password not in result.stdout + result.stderr


def test_history_heads_and_show(
    app: Path, both: Path, migrated: str, clean_env: dict[str, str]
) -> None:
    history = alembic(app, both, migrated, clean_env, "history", "--indicate-current")
    assert history.returncode == 0, history.stderr
    for revision in ("core_0001", "core_0002", "s3_0001", "s3_0002", "snowflake_0001"):
        assert revision in history.stdout
    assert "(current)" in history.stdout
    heads = alembic(app, both, migrated, clean_env, "heads")
    assert heads.returncode == 0, heads.stderr
    assert "s3_0002" in heads.stdout and "snowflake_0001" in heads.stdout
    show = alembic(app, both, migrated, clean_env, "show", "s3_0001")
    assert show.returncode == 0, show.stderr
    assert "Revision ID: s3_0001" in show.stdout
    assert "s3_0001_buckets.py" in show.stdout
    unknown = alembic(app, both, migrated, clean_env, "show", "nope_0001")
    assert_one_line_failure(unknown, 6, "alembic show", "nope_0001")


def test_downgrade_and_upgrade_under_the_lock(
    app: Path, both: Path, migrated: str, clean_env: dict[str, str]
) -> None:
    down = alembic(app, both, migrated, clean_env, "downgrade", "s3_plugin@base")
    assert down.returncode == 0, down.stderr
    assert not S3 & tables(migrated)
    assert "Running downgrade s3_0002 -> s3_0001" in down.stderr
    relative = alembic(app, both, migrated, clean_env, "upgrade", "s3_plugin@+1")
    assert relative.returncode == 0, relative.stderr
    assert "s3_buckets" in tables(migrated) and "s3_objects" not in tables(migrated)
    # Another replica holds the migration lock: a write waits for it, a read does not.
    conninfo = make_url(migrated).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        blocked = alembic(app, both, migrated, clean_env, "--lock-timeout", "1", "upgrade", "heads")
        assert_one_line_failure(blocked, 7, "migration lock")
        assert "s3_objects" not in tables(migrated)
        read = alembic(app, both, migrated, clean_env, "current")
        assert read.returncode == 0, read.stderr
    up = alembic(app, both, migrated, clean_env, "upgrade", "heads")
    assert up.returncode == 0, up.stderr
    assert S3 <= tables(migrated)


def test_offline_sql_needs_no_lock_and_applies_nothing(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = alembic(app, both, pg_url, clean_env, "upgrade", "heads", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE s3_buckets" in result.stdout
    assert tables(pg_url) == set()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "no Alembic command"),
        (("revision", "-m", "x"), "writes files"),
        (("-c", "other.ini", "current"), "--alembic-config"),
        (("frobnicate",), "Alembic refused"),
    ],
)
def test_bad_alembic_arguments_are_usage_errors(
    args: tuple[str, ...], needle: str, app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = alembic(app, both, pg_url, clean_env, *args)
    assert_one_line_failure(result, 2, needle)
    assert tables(pg_url) == set()


def test_alembics_own_help(app: Path, both: Path, clean_env: dict[str, str]) -> None:
    result = portal_boot("alembic", "--", "--help", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "usage: portal-boot alembic" in result.stdout
    assert "downgrade" in result.stdout
