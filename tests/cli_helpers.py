"""Run portal-boot as a real child process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def portal_boot(
    *args: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portal_boot", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are portal-boot's closing error line."""
    return [line for line in stderr.splitlines() if line.startswith("portal-boot: ")]


def assert_one_line_failure(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("portal-boot: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def free_http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return response.status, response.read()


def sequence(*parts: Sequence[str]) -> list[str]:
    return [item for part in parts for item in part]
