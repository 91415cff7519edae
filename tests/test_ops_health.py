"""Issue 12.9: the image's HEALTHCHECK asks ``PORTAL_BOOT_HEALTH_PATH`` (default
/health). The HEALTHCHECK command is taken from Dockerfile.base as it is and run against
a real uvicorn served by ``portal-boot serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from boot_support import until
from cli_helpers import free_http_get
from deploy import dockerfiles, drift, paths
from pgserver import free_port
from test_run import PORTAL, start, stop


def _healthcheck_argv() -> list[str]:
    image = dockerfiles.base_image()
    argv = json.loads(image.healthcheck[image.healthcheck.index("CMD") + 3 :].strip())
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _answers(port: int) -> bool:
    try:
        return free_http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    except OSError:
        return False


@pytest.fixture
def served(tmp_path: Path, clean_env: dict[str, str]):
    port = free_port()
    env = {
        **clean_env,
        "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        "PORTAL_BOOT_PORT": str(port),
    }
    proc = start(["serve"], env, cwd=PORTAL)
    try:
        until(lambda: _answers(port) or proc.poll() is not None, 60, "the server")
        assert proc.poll() is None, stop(proc)
        yield port
    finally:
        stop(proc)


def test_the_images_healthcheck_asks_the_configured_path(served: int, clean_env) -> None:
    assert dockerfiles.base_image().env["PORTAL_BOOT_HEALTH_PATH"] == "/health"
    argv = _healthcheck_argv()
    base = {**clean_env, "PORTAL_BOOT_PORT": str(served)}

    def check(**env: str) -> int:
        return subprocess.run(argv, env={**base, **env}, capture_output=True, timeout=30).returncode

    assert check() == 0  # the default, /health
    assert check(PORTAL_BOOT_HEALTH_PATH="/health/plugins") == 0
    # An application without that path: the check fails (as /health did on the real app).
    assert check(PORTAL_BOOT_HEALTH_PATH="/api/v2/version") != 0


def test_drift_accepts_the_image_variable() -> None:
    assert drift.is_known_variable("PORTAL_BOOT_HEALTH_PATH")
    assert not drift.is_known_variable("PORTAL_BOOT_HEALTH_PATHS")
    for path in (*paths.DOCKERFILES, paths.DOCS):
        assert drift.mention_problems(path, path.read_text()) == []
