"""Helpers shared by the fault, load, bad-input, secrets and PID 1 tests: real signed
wheels (one plugin whose migrations record every time they are applied), the
environment of a whole boot, and looks at processes and the database.

No tests here. Wheels come from tests/wheels.py, revision texts from
tests/test_migrations_support.py, keys from the session's ``gpg_keys``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import gpgkeys
from test_migrations_support import EXAMPLE, query, revision
from wheels import GROUP, build_plugin, build_wheel

PORTAL = EXAMPLE  # the example application: app.main:app and its alembic.ini

#: A base seed for the random moments of the fault trials; printed by every trial so
#: a failure can be replayed (PORTAL_BOOT_FAULT_SEED=... pytest ...).
BASE_SEED = os.environ.get("PORTAL_BOOT_FAULT_SEED", "issue-6")

#: Set in the environment of a boot, read by audit_0001: how long it sleeps in the
#: database (pg_sleep), after it created its table and wrote its row, so a test can
#: catch a migration in the middle.
SLEEP_VAR = "PORTAL_BOOT_TEST_MIGRATION_SLEEP"

# Each application of a revision leaves a row: (revision, pid of the portal-boot that
# applied it). Rows of a rolled-back transaction vanish with it.
_AUDIT_0001 = f"""
import os
op.create_table(
    'applied_log',
    sa.Column('revision', sa.Text(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
)
op.execute(f"INSERT INTO applied_log VALUES ('audit_0001', {{os.getpid()}})")
op.create_table('audit_events', sa.Column('id', sa.Integer(), primary_key=True))
seconds = float(os.environ.get('{SLEEP_VAR}', '0'))
if seconds > 0:
    op.execute(f"SELECT pg_sleep({{seconds}})")
"""
_AUDIT_0002 = """
import os
op.add_column('audit_events', sa.Column('kind', sa.Text()))
op.execute(f"INSERT INTO applied_log VALUES ('audit_0002', {os.getpid()})")
"""
AUDIT_REVISIONS = ("audit_0001", "audit_0002")
CORE_REVISIONS = ("core_0001", "core_0002")
AUDIT_TABLES = {"applied_log", "audit_events"}
CORE_TABLES = {"portal_settings", "data_products", "alembic_version"}


def audit_wheel(out_dir: Path, version: str = "1.0.0") -> Path:
    """portal-audit-plugin: a real wheel whose two revisions (a branch of its own on
    top of core_0002) each record their application in ``applied_log``."""
    files = {
        "audit_plugin/__init__.py": f"__version__ = {version!r}\n",
        "audit_plugin/schema.py": "class AuditPluginConfiguration:\n    name = 'audit'\n",
        "audit_plugin/migration/audit_0001_log.py": revision(
            "audit_0001",
            None,
            labels=["audit"],
            depends_on="core_0002",
            upgrade=_AUDIT_0001,
            downgrade="op.drop_table('audit_events')\nop.drop_table('applied_log')",
        ),
        "audit_plugin/migration/audit_0002_kind.py": revision(
            "audit_0002",
            "audit_0001",
            upgrade=_AUDIT_0002,
            downgrade="op.drop_column('audit_events', 'kind')",
        ),
    }
    return build_wheel(
        out_dir,
        "portal-audit-plugin",
        version,
        files,
        entry_points={
            GROUP: {"AuditPluginConfiguration": "audit_plugin.schema:AuditPluginConfiguration"}
        },
    )


def signed_wheel_folder(
    folder: Path, key: gpgkeys.Key, *, extra: int = 0, big: bool = False, audit: bool = True
) -> Path:
    """A wheel folder as an operator mounts it: the audit plugin, ``extra`` small
    plugins (verification takes ~10 ms a wheel: many make a long verify step), and
    with ``big`` one plugin of 800 modules (a long unpack and compile), every wheel
    signed by ``key``."""
    build = folder.parent / f".{folder.name}-build"
    made = []
    if audit:
        made.append(audit_wheel(build))
    made += [build_plugin(build, f"filler{i:02d}_plugin") for i in range(extra)]
    if big:
        made.append(
            build_plugin(
                build, "big_plugin",
                extra_files={f"big_plugin/mod{i:04d}.py": f"VALUE = {i}\n" for i in range(800)},
            )
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in made:
        shutil.copyfile(wheel, folder / wheel.name)
        key.sign(folder / wheel.name)
    shutil.rmtree(build)
    return folder


def trusted_key_file(key: gpgkeys.Key, path: Path) -> Path:
    if not path.exists():
        key.export(path)
    return path


def boot_env(
    clean_env: Mapping[str, str],
    *,
    url: str,
    target: Path,
    wheel_dir: Path | None = None,
    keys: Path | None = None,
    port: int | None = None,
    **more: str,
) -> dict[str, str]:
    """The environment of a ``portal-boot run`` of the example application, as a
    deployment sets it."""
    env = {
        **clean_env,
        "PORTAL_BOOT_DATABASE_URL": url,
        "PORTAL_BOOT_ALEMBIC_CONFIG": str(PORTAL / "alembic.ini"),
        "PORTAL_BOOT_TARGET": str(target),
        "PORTAL_BOOT_HOST": "127.0.0.1",
        **more,
    }
    if wheel_dir is not None:
        env["PORTAL_BOOT_WHEEL_DIR"] = str(wheel_dir)
    if keys is not None:
        env["PORTAL_BOOT_TRUSTED_KEYS"] = str(keys)
    if port is not None:
        env["PORTAL_BOOT_PORT"] = str(port)
    return env


def portal_boot_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "portal_boot", *args]


def rng(kind: str, trial: int) -> random.Random:
    """The seeded generator of one trial: the same seed, the same moments."""
    return random.Random(f"{BASE_SEED}/{kind}/{trial}")


def until(
    condition: Callable[[], object], timeout: float, what: str, every: float = 0.01
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def applied(url: str) -> list[str]:
    """Every recorded application of an audit revision (one row each), sorted."""
    with contextlib.suppress(Exception):
        return sorted(query(url, "SELECT revision FROM applied_log"))
    return []


def version_rows(url: str) -> set[str]:
    with contextlib.suppress(Exception):
        return set(query(url, "SELECT version_num FROM alembic_version"))
    return set()


def advisory_locks(url: str) -> list[int]:
    """Backends holding portal-boot's migration lock."""
    from portal_boot.migrations.lock import LOCK_KEY

    return query(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = :classid AND objid = :objid",
        classid=(LOCK_KEY >> 32) & 0xFFFFFFFF, objid=LOCK_KEY & 0xFFFFFFFF,
    )  # fmt: skip


def other_sessions(url: str) -> list[str]:
    """application_name of every other session on the test's database."""
    return query(
        url,
        "SELECT coalesce(application_name, '') FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )


def figure(text: str) -> None:
    """A measured figure for docs/guarantees.md (``pytest -s`` shows it)."""
    print(f"\nFIGURE: {text}", flush=True)


def create_database(admin_url: str) -> str:
    """A new empty database on the server of ``admin_url``; returns its sync URL."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"f_{uuid.uuid4().hex[:12]}"
    admin = make_url(admin_url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )


def sleeping_backends(url: str) -> list[int]:
    """Backends of the database running audit_0001's pg_sleep."""
    return query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE 'SELECT pg_sleep(%'",
    )


def portal_boot_sessions(url: str) -> list[str]:
    """portal-boot's sessions still open on the database (application_name tells)."""
    return [name for name in other_sessions(url) if name.startswith("portal-boot")]


def tables_now(url: str) -> set[str]:
    from test_migrations_support import tables

    return tables(url)
