"""Issue 12.7: ``migrate --sql`` over a revision that needs a live database names the
revision and says it cannot be rendered offline (status 6), through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from test_migrations_support import copy_example, migrate_args, revision, tables

_NEEDS_A_DATABASE = {
    # A data migration through a session, as the real application's do.
    "session": """
from sqlalchemy.orm import Session
session = Session(bind=op.get_bind())
count = session.execute(sa.text("SELECT count(*) FROM data_products")).scalar()
session.close()
""",
    # Reading rows with the migration's connection.
    "rows": """
rows = op.get_bind().execute(sa.text("SELECT id FROM data_products")).fetchall()
for row in rows:
    op.execute(f"UPDATE data_products SET id = {row[0]}")
""",
}


@pytest.mark.parametrize("kind", sorted(_NEEDS_A_DATABASE))
def test_sql_names_the_revision_that_needs_a_live_database(
    kind: str, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    ini = copy_example(tmp_path / "portal")
    versions = ini.parent / "app/database/alembic/versions"
    (versions / "core_0003_data.py").write_text(
        revision("core_0003", "core_0002", upgrade=_NEEDS_A_DATABASE[kind])
    )
    result = portal_boot(*migrate_args(ini, pg_url, "--sql"), env=clean_env)
    assert_one_line_failure(
        result, 6, "revision core_0003 (the application)", "cannot be rendered as SQL offline",
        "needs a live database",
    )  # fmt: skip
    assert tables(pg_url) == set()
    # Applied online, it works: the message told the truth.
    online = portal_boot(*migrate_args(ini, pg_url), env=clean_env)
    assert online.returncode == 0, online.stderr
    # The revisions before it still print.
    before = portal_boot(*migrate_args(ini, pg_url, "--sql", "--to", "core_0002"), env=clean_env)
    assert before.returncode == 0, before.stderr
    assert "CREATE TABLE data_products" in before.stdout
