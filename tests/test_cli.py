"""The CLI as users meet it: commands, precedence, one-line errors, exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot

COMMANDS = ["run", "verify", "install", "wait-db", "migrate", "serve", "status", "db-url"]
SECRET = "s3cr3t-P@ss"
URL = "postgresql+asyncpg://portal:s3cr3t-P%40ss@db.internal:5432/portal?ssl=require"


def test_help_lists_every_command(clean_env: dict[str, str]) -> None:
    result = portal_boot("--help", env=clean_env)
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout or f"  {command}\n" in result.stdout, command


def test_version(clean_env: dict[str, str]) -> None:
    result = portal_boot("--version", env=clean_env)
    assert result.returncode == 0
    assert "portal-boot" in result.stdout


def test_db_url_converts_and_masks(clean_env: dict[str, str]) -> None:
    result = portal_boot("db-url", "--database-url", URL, env=clean_env)
    assert result.returncode == 0, result.stderr
    # The masked URL first, then its parsed parts (issue 12.6).
    assert result.stdout.splitlines()[0] == "postgresql+psycopg://portal:***@db.internal:5432/portal?sslmode=require"
    assert SECRET not in result.stdout + result.stderr
    assert "s3cr3t-P%40ss" not in result.stdout + result.stderr


def test_flag_beats_variable(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "PORTAL_BOOT_DATABASE_URL": "postgresql://from-env/db"}
    assert portal_boot("db-url", env=env).stdout.splitlines()[0] == "postgresql+psycopg://from-env/db"
    result = portal_boot("db-url", "--database-url", "postgresql://from-flag/db", env=env)
    assert result.stdout.splitlines()[0] == "postgresql+psycopg://from-flag/db"


def test_guides_variable_names(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "DATABASE_URL_ASYNC": "postgresql+asyncpg://u:p@async/db"}
    assert portal_boot("db-url", env=env).stdout.splitlines()[0] == "postgresql+psycopg://u:***@async/db"
    env["DATABASE_URL"] = "postgresql://u:p@sync/db"
    assert portal_boot("db-url", env=env).stdout.splitlines()[0] == "postgresql+psycopg://u:***@sync/db"


def test_database_url_file(tmp_path: Path, clean_env: dict[str, str]) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(URL + "\n")
    env = {**clean_env, "DATABASE_URL_FILE": str(secret)}
    result = portal_boot("db-url", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("postgresql+psycopg://portal:***@db.internal")


def test_missing_database_url_is_a_usage_error(clean_env: dict[str, str]) -> None:
    result = portal_boot("db-url", env=clean_env)
    assert_one_line_failure(result, 2, "--database-url", "PORTAL_BOOT_DATABASE_URL")


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["db-url", "--database-url", "not a url"], {}, "malformed"),
        (["db-url", "--db-timeout", "soon", "--database-url", "sqlite://"], {}, "--db-timeout"),
        (["db-url"], {"PORTAL_BOOT_PORT": "http"}, "PORTAL_BOOT_PORT"),
        (["db-url"], {"PORTAL_BOOT_LOG_LEVEL": "loud"}, "PORTAL_BOOT_LOG_LEVEL"),
        (["migrate", "--no-such-flag"], {}, "--no-such-flag"),
        (["no-such-command"], {}, "no-such-command"),
        # Only arguments after -- go to uvicorn: a typo is refused before any work.
        (["run", "--wheel-dri", "/w"], {}, "--wheel-dri"),
        (["serve", "--wait-for-migratons"], {}, "--wait-for-migratons"),
        (["migrate", "--to", " ", "--database-url", "sqlite://"], {}, "--to is empty"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, env, needle, clean_env: dict[str, str]) -> None:
    result = portal_boot(*args, env={**clean_env, **env})
    assert_one_line_failure(result, 2, needle)


def test_malformed_url_never_prints_the_password(clean_env: dict[str, str]) -> None:
    result = portal_boot("wait-db", "--database-url", f"postgresql://u:{SECRET}@db:port/x", env=clean_env)
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["verify", "install"])
def test_nothing_configured_says_so_and_succeeds(command: str, clean_env: dict[str, str]) -> None:
    result = portal_boot(command, env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "nothing to verify or install" in result.stderr


def test_json_log_format_one_object_per_line(clean_env: dict[str, str]) -> None:
    import json

    result = portal_boot("install", "--log-format", "json", env=clean_env)
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "message"} <= entry.keys()


def test_json_failure_line_is_json(clean_env: dict[str, str]) -> None:
    import json

    result = portal_boot("db-url", "--log-format", "json", "--database-url", "nope", env=clean_env)
    assert result.returncode == 2
    entry = json.loads(result.stderr.strip().splitlines()[-1])
    assert entry["status"] == 2 and "malformed" in entry["message"]


def test_debug_traceback_stays_json(clean_env: dict[str, str]) -> None:
    import json

    args = ("db-url", "--log-format", "json", "--log-level", "debug", "--database-url", "nope")
    result = portal_boot(*args, env=clean_env)
    assert result.returncode == 2
    for line in result.stderr.splitlines():
        json.loads(line)
    assert "traceback" in json.loads(result.stderr.splitlines()[-1])


def test_query_password_never_printed(clean_env: dict[str, str]) -> None:
    url = "postgresql://u@db.internal/portal?password=Qu3ryS3cret"
    result = portal_boot("db-url", "--database-url", url, env=clean_env)
    assert result.returncode == 0
    assert "Qu3ryS3cret" not in result.stdout + result.stderr
    assert "password=***" in result.stdout
