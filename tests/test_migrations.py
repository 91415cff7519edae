"""Core migrations: the example portal and an untouched generic-template env.py,
on a real PostgreSQL and on SQLite, through the API and through the CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from pgserver import free_port
from sqlalchemy.engine import make_url
from test_migrations_support import (
    EXAMPLE,
    copy_example,
    create_table,
    current,
    migrate_args,
    query,
    revision,
    settings,
    tables,
)

from portal_boot import migrations
from portal_boot.errors import MigrationError, UsageError

CORE_TABLES = {"portal_settings", "data_products", "alembic_version"}


@pytest.fixture
def example(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "portal")


@pytest.fixture
def generic_project(tmp_path: Path) -> Path:
    """An Alembic project made by ``alembic init`` with the generic template, its
    env.py left exactly as Alembic wrote it, plus the example's two core revisions."""
    from alembic import command
    from alembic.config import Config

    root = tmp_path / "generic"
    root.mkdir()
    ini = root / "alembic.ini"
    command.init(Config(str(ini)), str(root / "migrations"), template="generic")
    for source in (EXAMPLE / "app/database/alembic/versions").glob("core_*.py"):
        (root / "migrations/versions" / source.name).write_text(source.read_text())
    return ini


def _alembic_template(name: str) -> bytes:
    import alembic

    return (Path(alembic.__file__).parent / "templates/generic" / name).read_bytes()


# --- through the API -------------------------------------------------------------


def test_core_upgrade_to_heads_then_a_second_run_is_a_no_op(
    example: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    migrations.migrate(settings(example), [], url=pg_url)
    assert tables(pg_url) == CORE_TABLES
    assert current(pg_url) == {"core_0002"}
    applied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("applied ")]
    assert applied == ["applied core_0001 (the application)", "applied core_0002 (the application)"]

    assert _other_sessions(pg_url) == []  # every connection closed before returning

    caplog.clear()
    migrations.migrate(settings(example), [], url=pg_url)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "migrate: nothing to do, database at heads core_0002 (checked without Alembic)" in messages
    )
    assert not [m for m in messages if m.startswith("Running upgrade")]
    assert current(pg_url) == {"core_0002"}
    assert _other_sessions(pg_url) == []  # the fast check's connection is closed too


def _other_sessions(url: str) -> list[str]:
    return query(
        url,
        "SELECT application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )


def test_revision_state_reports_current_heads_and_pending(example: Path, pg_url: str) -> None:
    before = migrations.revision_state(settings(example), [], url=pg_url)
    assert (before.current, before.heads, before.pending) == (
        (),
        ("core_0002",),
        ("core_0001", "core_0002"),
    )
    migrations.migrate(settings(example), [], url=pg_url, to="core_0001")
    middle = migrations.revision_state(settings(example), [], url=pg_url)
    assert (middle.current, middle.pending, middle.at_heads) == (
        ("core_0001",),
        ("core_0002",),
        False,
    )
    migrations.migrate(settings(example), [], url=pg_url)
    assert _other_sessions(pg_url) == []
    assert migrations.revision_state(settings(example), [], url=pg_url).as_dict() == {
        "current": ["core_0002"], "heads": ["core_0002"], "pending": [], "environments": [],
    }  # fmt: skip


def test_to_an_applied_revision_downgrades(example: Path, pg_url: str) -> None:
    migrations.migrate(settings(example), [], url=pg_url)
    migrations.migrate(settings(example), [], url=pg_url, to="core_0001")
    assert current(pg_url) == {"core_0001"}
    assert "data_products" not in tables(pg_url)
    migrations.migrate(settings(example), [], url=pg_url, to="base")
    assert tables(pg_url) == {"alembic_version"}
    assert query(pg_url, "SELECT count(*) FROM alembic_version") == [0]


def test_an_unknown_to_is_a_usage_error_naming_the_heads(example: Path, pg_url: str) -> None:
    migrations.migrate(settings(example), [], url=pg_url, to="core_0001")
    with pytest.raises(UsageError, match=r"--to core_9999: .*heads are core_0002"):
        migrations.migrate(settings(example), [], url=pg_url, to="core_9999")


def test_sql_mode_prints_the_sql_and_needs_no_database(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on this port: offline mode must not try.
    url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/nowhere"
    migrations.migrate(settings(example), [], url=url, sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE portal_settings" in out
    assert "CREATE TABLE data_products" in out
    assert "INSERT INTO alembic_version (version_num) VALUES ('core_0001')" in out
    assert out.strip().endswith("COMMIT;")  # PostgreSQL: one transaction
    # Downgrades: a range, or base (one head: the start is known without a database).
    migrations.migrate(settings(example), [], url=url, sql=True, to="core_0002:core_0001")
    out = capsys.readouterr().out
    assert "DROP TABLE data_products" in out and "portal_settings" not in out
    migrations.migrate(settings(example), [], url=url, sql=True, to="base")
    assert "DROP TABLE portal_settings" in capsys.readouterr().out


def test_generic_template_env_py_works_unchanged(generic_project: Path, pg_url: str) -> None:
    env_py = generic_project.parent / "migrations/env.py"
    assert env_py.read_bytes() == _alembic_template("env.py")
    migrations.migrate(settings(generic_project), [], url=pg_url)
    assert tables(pg_url) == CORE_TABLES
    assert env_py.read_bytes() == _alembic_template("env.py")


def test_alembic_ini_logging_does_not_take_over(
    generic_project: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The generic env.py calls logging.config.fileConfig(alembic.ini), which
    # would replace the handlers (and their password masking) and disable
    # every existing logger. portal-boot keeps logging its own.
    root = logging.getLogger()
    handlers = list(root.handlers)
    caplog.set_level(logging.INFO)
    migrations.migrate(settings(generic_project), [], url=pg_url)
    assert root.handlers == handlers
    assert not logging.getLogger("portal_boot.migrations.apply").disabled
    assert any(r.getMessage() == "applied core_0002 (the application)" for r in caplog.records)


def test_no_pycache_is_written_into_the_application(example: Path, pg_url: str) -> None:
    migrations.migrate(settings(example), [], url=pg_url)
    assert not list(example.parent.rglob("__pycache__"))


def test_a_failing_revision_is_named_and_nothing_is_applied(example: Path, pg_url: str) -> None:
    versions = example.parent / "app/database/alembic/versions"
    (versions / "core_0003_broken.py").write_text(
        revision(
            "core_0003", "core_0002",
            upgrade=create_table("audit") + "\nop.execute('SELECT * FROM no_such_table')",
        )
    )  # fmt: skip
    with pytest.raises(MigrationError) as failure:
        migrations.migrate(settings(example), [], url=pg_url)
    message = str(failure.value)
    assert message.startswith("revision core_0003 (the application) failed: UndefinedTable")
    assert "the database stays at no revision" in message
    assert str(versions / "core_0003_broken.py") in message
    assert "\n" not in message
    # One transaction: core_0001 and core_0002 went with it.
    assert tables(pg_url) == set()


def test_missing_alembic_config_is_a_usage_error(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(UsageError, match="--alembic-config / PORTAL_BOOT_ALEMBIC_CONFIG"):
        migrations.migrate(settings(tmp_path / "nope.ini"), [], url=pg_url)
    broken = tmp_path / "broken.ini"
    broken.write_text("[alembic\nscript_location = x\n")
    with pytest.raises(UsageError, match="cannot read the Alembic configuration"):
        migrations.migrate(settings(broken), [], url=pg_url)
    for name, text in (("empty.ini", "[alembic]\n"), ("other.ini", "[other]\nx = 1\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UsageError, match=r"no \[alembic\] section with a script_location"):
            migrations.migrate(settings(tmp_path / name), [], url=pg_url)


def test_sqlite_upgrade_and_no_op(example: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    migrations.migrate(settings(example), [], url=url)
    assert tables(url) == CORE_TABLES
    migrations.migrate(settings(example), [], url=url)
    assert current(url) == {"core_0002"}
    assert migrations.revision_state(settings(example), [], url=url).at_heads


# --- through the CLI -------------------------------------------------------------


def _role_with_password(pg_server, pg_url: str, password: str) -> str:
    """A login role owning the test database, with ``password``; returns its URL."""
    import psycopg
    from psycopg import sql

    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = make_url(pg_server.admin_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(f'ALTER DATABASE "{make_url(pg_url).database}" OWNER TO {role}')  # type: ignore[arg-type]
    db = make_url(pg_url)
    return (
        f"postgresql+asyncpg://{role}:{quote(password, safe='')}@{db.host}:{db.port}/{db.database}"
    )


def test_cli_migrate_with_a_password_full_of_url_characters(
    example: Path, pg_server, pg_url: str, clean_env: dict[str, str]
) -> None:
    password = "p%40ss@w/rd:50%"
    url = _role_with_password(pg_server, pg_url, password)
    result = portal_boot(
        "migrate", "--alembic-config", "alembic.ini", env={**clean_env, "DATABASE_URL_ASYNC": url},
        cwd=example.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "applied core_0002 (the application)" in result.stderr
    for secret in (password, quote(password, safe="")):
        assert secret not in result.stdout + result.stderr
    assert tables(pg_url) == CORE_TABLES
    # And directly, with the sync URL (the '%' must survive configparser).
    migrations.migrate(
        settings(example), [], url=url.replace("+asyncpg", "+psycopg"), to="core_0001"
    )
    assert current(pg_url) == {"core_0001"}


def test_cli_migrate_generic_template_then_no_op(
    generic_project: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    first = portal_boot(
        *migrate_args(generic_project, pg_url), env=clean_env, cwd=generic_project.parent
    )
    assert first.returncode == 0, first.stderr
    assert "Running upgrade core_0001 -> core_0002" in first.stderr
    second = portal_boot(
        *migrate_args(generic_project, pg_url), env=clean_env, cwd=generic_project.parent
    )
    assert second.returncode == 0, second.stderr
    assert "nothing to do, database at heads core_0002 (checked without Alembic)" in second.stderr
    assert "Running upgrade" not in second.stderr
    assert tables(pg_url) == CORE_TABLES


def test_cli_sql_prints_sql_and_changes_nothing(
    example: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = portal_boot(*migrate_args(example, pg_url, "--sql"), env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE data_products" in result.stdout
    # Logs go to stderr: stdout is SQL alone, ready for psql.
    assert "Context impl PostgresqlImpl" in result.stderr
    assert "portal-boot" not in result.stdout and "Context impl" not in result.stdout
    assert tables(pg_url) == set()


def test_cli_sqlite_example_with_json_logs(example: Path, clean_env: dict[str, str]) -> None:
    result = portal_boot(
        "migrate", "--log-format", "json",
        env={**clean_env, "PORTAL_BOOT_ALEMBIC_CONFIG": "alembic.ini", "DATABASE_URL": "sqlite:///portal.db"},
        cwd=example.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert "applied core_0002 (the application)" in [r["message"] for r in records]
    assert tables(f"sqlite:///{example.parent / 'portal.db'}") == CORE_TABLES


def test_cli_missing_alembic_config_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    result = portal_boot(
        *migrate_args(tmp_path / "missing.ini", f"sqlite:///{tmp_path / 'x.db'}"), env=clean_env
    )
    assert_one_line_failure(result, 2, "--alembic-config / PORTAL_BOOT_ALEMBIC_CONFIG")


def test_cli_failing_revision_exits_6_in_one_line(
    example: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    (example.parent / "app/database/alembic/versions/core_0003_bad.py").write_text(
        revision("core_0003", "core_0002", upgrade="op.execute('SELEC 1')")
    )
    result = portal_boot(*migrate_args(example, pg_url), env=clean_env)
    assert_one_line_failure(result, 6, "revision core_0003 (the application) failed: SyntaxError")
    assert tables(pg_url) == set()


# --- the example application --------------------------------------------------


def test_example_app_answers_health_and_lists_plugins(tmp_path: Path) -> None:
    from test_migrations_support import s3_plugin, snowflake_plugin

    target = tmp_path / "target"
    s3_plugin(target)
    snowflake_plugin(target)
    probe = (
        "import asyncio, json\n"
        "from app.main import app\n"
        "async def get(path):\n"
        "    sent = []\n"
        "    async def receive(): return {'type': 'http.request'}\n"
        "    async def send(m): sent.append(m)\n"
        "    await app({'type': 'http', 'method': 'GET', 'path': path}, receive, send)\n"
        "    return sent[0]['status'], json.loads(sent[1]['body'])\n"
        "print(json.dumps([asyncio.run(get(p)) for p in ('/health', '/health/plugins', '/nope')]))\n"
    )
    env = {"PYTHONPATH": str(target), "ENABLED_PLUGINS": "s3_plugin.schema.S3PluginConfiguration"}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    health, plugins, missing = json.loads(out)
    assert health == [200, {"status": "ok"}]
    assert plugins == [200, {"total_plugins": 1, "plugins": [{
        "name": "s3_plugin", "value": "s3_plugin.schema:S3PluginConfiguration",
        "distribution": "data-product-portal-s3-plugin", "version": "1.0.0",
    }]}]  # fmt: skip
    assert missing[0] == 404
