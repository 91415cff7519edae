"""Whole boots through the CLI: `portal-boot run` ends with uvicorn answering HTTP in
the very process that started as portal-boot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import free_http_get
from conftest import REPO
from pgserver import free_port

PORTAL = REPO / "examples" / "portal"


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"portal-boot exited {proc.returncode}:\n{err}\n{out}")
        try:
            return free_http_get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start(args: list[str], env: dict[str, str], cwd: Path = PORTAL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "portal_boot", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def boot_env(clean_env: dict[str, str], tmp_path: Path, database_url: str, port: int) -> dict[str, str]:
    return {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": database_url,
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(tmp_path / "state" / "plugins"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": str(port),
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_run_serves_in_the_same_process(backend: str, tmp_path: Path, clean_env, request) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/portal.db"
    else:
        url = request.getfixturevalue("pg_url").replace("postgresql+psycopg", "postgresql+asyncpg")
    port = free_port()
    proc = start(["run"], boot_env(clean_env, tmp_path, url, port))
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        # exec: the process that started as portal-boot is now uvicorn.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"portal_boot.serve.launch" in cmdline
        assert b"uvicorn" in Path(f"/proc/{proc.pid}/cmdline").read_bytes() or b"app.main:app" in cmdline
    finally:
        out, err = stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM), err
    for name in ("install", "wait-db", "migrate"):
        assert f"{name}: done in" in err, err
    assert "boot: ready in" in err


def test_run_uvicorn_args_after_double_dash(tmp_path: Path, clean_env) -> None:
    port, other = free_port(), free_port()
    env = boot_env(clean_env, tmp_path, f"sqlite:///{tmp_path}/p.db", port)
    proc = start(["run", "--", "--port", str(other), "--no-access-log"], env)
    try:
        status, _ = wait_http(f"http://127.0.0.1:{other}/health", proc)
        assert status == 200
    finally:
        stop(proc)


def test_auto_migrate_false_skips_migrate(tmp_path: Path, clean_env) -> None:
    port = free_port()
    env = boot_env(clean_env, tmp_path, f"sqlite:///{tmp_path}/p.db", port)
    env["AUTO_RUN_PLUGIN_MIGRATIONS"] = "false"
    proc = start(["run"], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    finally:
        _, err = stop(proc)
    assert "migrate: skipped" in err
    import sqlite3

    tables = sqlite3.connect(tmp_path / "p.db").execute("select name from sqlite_master").fetchall()
    assert ("alembic_version",) not in tables


def test_sigterm_reaches_uvicorn_directly(tmp_path: Path, clean_env) -> None:
    port = free_port()
    proc = start(["serve"], boot_env(clean_env, tmp_path, f"sqlite:///{tmp_path}/p.db", port))
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    # uvicorn, not portal-boot's handler, got the signal: a graceful shutdown (uvicorn
    # then re-raises the signal, so it ends "killed by SIGTERM", not portal-boot's 143).
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Finished server process" in err, err
    assert "portal-boot: stopped" not in err
