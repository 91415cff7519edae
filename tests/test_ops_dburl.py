"""Issue 12.6: say which database. ``db-url`` prints the parsed parts, every wait and
connection message names host:port/database, and a password holding an unencoded
``/ @ #`` gets a warning saying how to encode it. Through the CLI on a real PostgreSQL,
with a role whose password really holds them."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import psycopg
import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from sqlalchemy.engine import make_url

PASSWORD = "p@ss/w#rd"


@pytest.fixture
def odd_role(pg_url: str, pg_server) -> tuple[str, str, str, int, str]:
    """A role whose password holds '@', '/' and '#'; (user, host, port, database)."""
    admin = make_url(pg_server.admin_url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    user = f"odd_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'")
    url = make_url(pg_url)
    return user, url.host, url.port, url.database


def test_an_unencoded_password_is_warned_about_and_db_url_shows_how_it_parses(
    odd_role, clean_env: dict[str, str]
) -> None:
    user, host, port, database = odd_role
    raw = f"postgresql+asyncpg://{user}:{PASSWORD}@{host}:{port}/{database}?sslmode=disable"
    result = portal_boot("db-url", env={**clean_env, "DATABASE_URL": raw})
    assert result.returncode == 0, result.stderr
    parts = dict(
        line.strip().split(": ", 1) for line in result.stdout.splitlines()[1:]
    )
    # The '@' ends the password early: the host is what follows it, not the server.
    assert parts["driver"].strip() == "postgresql+psycopg"
    assert parts["user"].strip() == user
    assert parts["host"].strip() == "ss"
    assert parts["query keys"].strip() == "sslmode"
    assert "'/' '@'" in result.stderr and "'#'" in result.stderr
    assert "%40" in result.stderr and "%2F" in result.stderr and "%23" in result.stderr
    # What the parser took for the database name is the rest of the password: masked.
    assert parts["database"].strip().startswith("***@")
    for piece in (PASSWORD, "w#rd", "ss/w", quote(PASSWORD, safe="")):
        assert piece not in result.stdout + result.stderr
    # wait-db names where it waits: what the parser made of it (the password's pieces
    # masked), after the warning that explains it.
    waited = portal_boot("wait-db", "--db-timeout", "1", env={**clean_env, "DATABASE_URL": raw})
    last = assert_one_line_failure(waited, 5, f"the database at ***@{host}:{port}/{database}")
    assert "unencoded" in waited.stderr
    assert PASSWORD not in waited.stdout + waited.stderr and "w#rd" not in last


def test_the_encoded_url_works_and_every_message_names_the_database(
    odd_role, clean_env: dict[str, str]
) -> None:
    user, host, port, database = odd_role
    good = f"postgresql://{user}:{quote(PASSWORD, safe='')}@{host}:{port}/{database}"
    result = portal_boot("wait-db", env={**clean_env, "DATABASE_URL": good})
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert f"the database at {host}:{port}/{database} answers" in result.stderr
    parts = portal_boot("db-url", env={**clean_env, "DATABASE_URL": good})
    assert f"host:       {host}" in parts.stdout and f"database:   {database}" in parts.stdout
    # A database that does not exist: named, with host and port.
    missing = good.rsplit("/", 1)[0] + "/no_such_db"
    refused = portal_boot("wait-db", "--db-timeout", "5", env={**clean_env, "DATABASE_URL": missing})
    assert_one_line_failure(refused, 5, f"{host}:{port}/no_such_db", "does not exist")
    # A port nobody listens on: the deadline message names it.
    closed = good.replace(f":{port}/", ":1/")
    late = portal_boot("wait-db", "--db-timeout", "1", env={**clean_env, "DATABASE_URL": closed})
    assert_one_line_failure(late, 5, f"the database at {host}:1/{database}")
    assert f"waiting for the database at {host}:1/{database}" in late.stderr
    for output in (result, parts, refused, late):
        assert PASSWORD not in output.stdout + output.stderr
