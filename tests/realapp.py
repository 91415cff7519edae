"""Helpers for the tests on tests/fixtures/realapp (the real portal's Alembic
patterns; its README says which): the application copied into a test's folder, its
plugins installed into a target as pip leaves them, and the POSTGRES_* variables
its env.py builds its URL from. No tests here."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.engine import make_url
from test_migrations_support import InstalledPlugin, install_plugin

REALAPP = Path(__file__).resolve().parent / "fixtures" / "realapp"

#: package -> (entry-point name, distribution): three different spellings of one plugin.
PLUGINS = {
    "my_plugin": ("MyPluginConfiguration", "realapp-my-plugin"),
    "other_plugin": ("OtherPluginConfiguration", "realapp-other-plugin"),
}
CORE_TABLES = {"users", "data_products", "datasets", "tags", "roles", "alembic_version"}
CORE_HEAD = "c06"
INDEX = "ix_data_products_name"


def copy_realapp(dest: Path) -> Path:
    """The application in ``dest`` (without its plugins); returns its alembic.ini."""
    shutil.copytree(
        REALAPP, dest, ignore=shutil.ignore_patterns("__pycache__", "plugins", "README.md")
    )
    return dest / "alembic.ini"


def install(target: Path, package: str) -> InstalledPlugin:
    """One of the fixture's plugins, installed into ``target`` as pip would."""
    name, distribution = PLUGINS[package]
    folder = REALAPP / "plugins" / package / "migration"
    revisions = {p.name: p.read_text() for p in sorted(folder.glob("*.py"))}
    target.mkdir(parents=True, exist_ok=True)
    return install_plugin(target, package, revisions, name=name, distribution=distribution)


def postgres_env(url: str) -> dict[str, str]:
    """The POSTGRES_* variables naming the database of ``url``."""
    parsed = make_url(url)
    return {
        "POSTGRES_SERVER": parsed.host or "localhost",
        "POSTGRES_PORT": str(parsed.port or 5432),
        "POSTGRES_USER": parsed.username or "",
        "POSTGRES_PASSWORD": parsed.password or "",
        "POSTGRES_DB": parsed.database or "",
    }


def index_state(url: str) -> str:
    """'absent', 'valid' or 'INVALID' (a CREATE INDEX CONCURRENTLY cut short)."""
    from test_migrations_support import query

    rows = query(
        url,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name",
        name=INDEX,
    )
    if not rows:
        return "absent"
    return "valid" if rows[0] else "INVALID"
