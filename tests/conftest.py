"""Shared fixtures: a real PostgreSQL (see tests/pgserver.py), and a clean environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import gpgkeys  # noqa: E402
from pgserver import LocalCluster, PgServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# The host sets these for everyone; portal-boot and the tests must not lean on them.
_HOST_VARS = ("PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server (sync URL, with password)."""
    return pg_server.create_database()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of the test's own, not started: for tests that stop and start it."""
    if os.environ.get("PORTAL_BOOT_TEST_DATABASE_URL"):
        pytest.skip("needs a local cluster it can stop and start")
    cluster = LocalCluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for a portal-boot child: the host's, minus portal-boot's own
    variables and the database variables, so a test states every setting it uses."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PORTAL_BOOT_")
        and k not in {"DATABASE_URL", "DATABASE_URL_ASYNC", "ENABLED_PLUGINS", "AUTO_RUN_PLUGIN_MIGRATIONS"}
        and not k.startswith("POSTGRES_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def gpg_keys() -> Iterator[gpgkeys.KeySet]:
    """Real gpg keys, made once a session: good, other, expired, revoked, subkey."""
    keys = gpgkeys.KeySet.create()
    try:
        yield keys
    finally:
        keys.close()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A copy of the example portal's application (its alembic.ini), free to change."""
    from test_migrations_support import copy_example

    return copy_example(tmp_path / "portal")


@pytest.fixture
def both(tmp_path: Path) -> Path:
    """A plugin target holding the s3 and snowflake test plugins (files, not wheels)."""
    from test_migrations_support import s3_plugin, snowflake_plugin

    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    s3_plugin(target)
    snowflake_plugin(target)
    return target
