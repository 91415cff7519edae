"""Issue 12.4 and 12.5, through the CLI with a real uvicorn: why the application did
not start (configuration, status 2, vs its own startup, status 8), and one JSON log
stream after the exec (uvicorn's startup, access and error lines included)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from boot_support import until
from cli_helpers import free_http_get, portal_boot
from pgserver import free_port
from sqlalchemy.engine import make_url
from test_run import PORTAL, start, stop, wait_http

_FAILING_LIFESPAN = '''
import traceback


async def app(scope, receive, send):
    """Like Starlette/FastAPI: a lifespan that raises sends startup.failed with the
    traceback, then re-raises."""
    if scope["type"] != "lifespan":
        return
    await receive()
    try:
        raise RuntimeError("could not load the model from /models/classifier.bin")
    except RuntimeError:
        await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
        raise
'''

_FAILING_IMPORT = '''
raise RuntimeError("SETTINGS_MODULE is not set")
'''


def _serve(folder: Path, clean_env: dict[str, str], app: str, port: int, *more: str):
    env = {
        **clean_env,
        "PORTAL_BOOT_TARGET": str(folder / "plugins"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": str(port),
        "PORTAL_BOOT_APP": app,
    }
    return portal_boot("serve", *more, env=env, cwd=folder, timeout=60)


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    (tmp_path / "failing_lifespan.py").write_text(_FAILING_LIFESPAN)
    (tmp_path / "failing_import.py").write_text(_FAILING_IMPORT)
    (tmp_path / "fine.py").write_text((PORTAL / "app" / "main.py").read_text())
    return tmp_path


def _last(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_applications_own_startup_failing_is_status_8(
    log_format: str, apps: Path, clean_env: dict[str, str]
) -> None:
    result = _serve(apps, clean_env, "failing_lifespan:app", free_port(), "--log-format", log_format)
    assert result.returncode == 8, result.stderr
    last = _last(result)
    if log_format == "json":
        entry = json.loads(last)
        assert entry["status"] == 8
        last = entry["message"]
    assert last.startswith("portal-boot: AppStartupError: the application failed to start")
    assert "RuntimeError: could not load the model from /models/classifier.bin" in last
    assert "UsageError" not in result.stderr


def test_an_exception_while_importing_the_application_is_status_8(
    apps: Path, clean_env: dict[str, str]
) -> None:
    result = _serve(apps, clean_env, "failing_import:app", free_port())
    assert result.returncode == 8, result.stderr
    assert "AppStartupError" in _last(result)
    assert "RuntimeError: SETTINGS_MODULE is not set" in _last(result)


@pytest.mark.parametrize("app", ["no_such_module:app", "fine:no_such_attribute"])
def test_an_app_that_cannot_be_imported_is_a_usage_error(
    app: str, apps: Path, clean_env: dict[str, str]
) -> None:
    result = _serve(apps, clean_env, app, free_port())
    assert result.returncode == 2, result.stderr
    last = _last(result)
    assert last.startswith("portal-boot: UsageError: the application cannot be imported")
    assert "--app / PORTAL_BOOT_APP" in last


def test_an_address_that_cannot_be_bound_is_a_usage_error(
    apps: Path, clean_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(apps, clean_env, "fine:app", port)
    assert result.returncode == 2, result.stderr
    last = _last(result)
    assert last.startswith("portal-boot: UsageError: the address cannot be bound")
    assert "--port / PORTAL_BOOT_PORT" in last


def test_json_is_one_stream_after_the_exec_too(
    tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    port = free_port()
    async_url = pg_url.replace("postgresql+psycopg", "postgresql+asyncpg")
    env = {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": async_url,
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": str(port),
        "PORTAL_BOOT_LOG_FORMAT": "json",
    }
    proc = start(["run"], env)
    try:
        status, _ = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert status == 200
        with pytest.raises(OSError):  # a 404: an access line with another status
            free_http_get(f"http://127.0.0.1:{port}/nope?password=hunter22")
    finally:
        out, err = stop(proc)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    loggers = {r["logger"] for r in records}
    assert {"portal_boot", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    messages = [r["message"] for r in records]
    assert any(m.startswith("Uvicorn running on http://127.0.0.1:") for m in messages)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    ok = next(r for r in access if r["path"] == "/health")
    assert ok["method"] == "GET" and ok["status"] == 200
    assert isinstance(ok["duration_ms"], (int, float)) and ok["duration_ms"] >= 0
    missing = next(r for r in access if r["path"].startswith("/nope"))
    assert missing["status"] == 404 and "hunter22" not in missing["path"]
    password = make_url(pg_url).password
    assert password and password not in out + err
    assert "hunter22" not in out + err


def test_text_stays_uvicorns_own_format(apps: Path, clean_env: dict[str, str]) -> None:
    port = free_port()
    env = {
        **clean_env,
        "PORTAL_BOOT_TARGET": str(apps / "plugins"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": str(port),
        "PORTAL_BOOT_APP": "fine:app",
    }
    proc = start(["serve"], env, cwd=apps)
    try:
        until(lambda: _answers(port), 60, "the server")
    finally:
        out, err = stop(proc)
    assert "INFO:     Uvicorn running on http://127.0.0.1:" in err
    assert '"GET /health HTTP/1.1" 200' in out


def _answers(port: int) -> bool:
    try:
        return free_http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    except OSError:
        return False
