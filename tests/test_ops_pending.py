"""Issue 12.8: a long list of pending revisions is summarised (count, first, last) by
``status`` and ``serve --wait-for-migrations``; ``--verbose``/``--json`` (status) and
``--log-level debug`` (serve) list them all. Through the CLI on a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from test_migrations_support import copy_example, revision

COUNT = 40


@pytest.fixture
def long_app(tmp_path: Path) -> Path:
    """The example application with 40 more revisions after core_0002."""
    ini = copy_example(tmp_path / "portal")
    versions = ini.parent / "app/database/alembic/versions"
    previous = "core_0002"
    for i in range(3, 3 + COUNT):
        rev = f"core_{i:04d}"
        (versions / f"{rev}_step.py").write_text(revision(rev, previous))
        previous = rev
    return ini


def _env(clean_env: dict[str, str], ini: Path, url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": url,
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(ini),
        "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
    }


def test_status_summarises_and_lists_on_request(
    long_app: Path, pg_url: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(clean_env, long_app, pg_url, tmp_path)
    short = portal_boot("status", env=env)
    assert short.returncode == 6, short.stderr
    line = next(x for x in short.stdout.splitlines() if "pending " in x and "core_" in x)
    assert f"{COUNT + 2} revisions, core_0001 ... core_{COUNT + 2:04d}" in line
    assert "core_0010" not in short.stdout
    assert "--verbose or --json lists all" in line
    verbose = portal_boot("status", "--verbose", env=env)
    assert verbose.returncode == 6
    for i in range(1, COUNT + 3):
        assert f"core_{i:04d}" in verbose.stdout
    as_json = portal_boot("status", "--json", env=env)
    assert json.loads(as_json.stdout)["revisions"]["pending"] == [
        f"core_{i:04d}" for i in range(1, COUNT + 3)
    ]


def test_serve_waiting_for_migrations_summarises(
    long_app: Path, pg_url: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    env = _env(clean_env, long_app, pg_url, tmp_path)
    result = portal_boot("serve", "--wait-for-migrations", "--db-timeout", "1", env=env)
    last = assert_one_line_failure(
        result, 6,
        f"{COUNT + 2} revision(s) pending (core_0001 ... core_{COUNT + 2:04d}; --log-level "
        "debug lists all)",
    )  # fmt: skip
    assert "core_0010" not in last
    debug = portal_boot(
        "serve", "--wait-for-migrations", "--db-timeout", "1", "--log-level", "debug", env=env
    )
    assert debug.returncode == 6
    assert "core_0010, core_0011" in debug.stderr
