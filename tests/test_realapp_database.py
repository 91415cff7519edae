"""The database portal-boot checks is the database that gets migrated, on the real
portal's env.py pattern (tests/fixtures/realapp: its env.py ignores sqlalchemy.url
and config.attributes["connection"] and builds its URL from POSTGRES_*).

- POSTGRES_* alone are a source of the database URL, built as SQLAlchemy's
  URL.create renders it (any password, unquoted), never printed;
- a URL and POSTGRES_* naming different databases are a usage error (status 2);
- an env.py that migrates a database portal-boot cannot see is caught: before any
  step when the two databases differ in revisions, after the run otherwise
  (status 6).

Real PostgreSQL, portal-boot as a child process.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from hypothesis import given, settings
from hypothesis import strategies as st
from pgserver import PgServer
from realapp import CORE_HEAD, CORE_TABLES, copy_realapp, postgres_env
from sqlalchemy.engine import URL, make_url
from test_migrations_support import current, revision, tables

from portal_boot.dburl import components, from_components

PASSWORD = "Pw$3cr3t@db/:%?#&=+ x"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return copy_realapp(tmp_path / "realapp")


def _migrate(app: Path, env: dict[str, str], *more: str):
    return portal_boot(
        "migrate", "--alembic-config", str(app), "--target", str(app.parent / "none"), *more,
        env=env,
    )  # fmt: skip


def _role(pg_server: PgServer, database: str, password: str) -> str:
    """A login role with ``password`` owning ``database``; returns the role's name."""
    import psycopg
    from psycopg import sql

    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = make_url(pg_server.admin_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
    return role


def test_postgres_components_alone_are_the_database_url(
    app: Path, pg_server: PgServer, pg_url: str, clean_env: dict[str, str]
) -> None:
    """No URL at all: portal-boot builds it from POSTGRES_* as the application's
    env.py does, so the database it checks is the one migrated; the password, full
    of URL characters, is given raw and appears nowhere."""
    db = make_url(pg_url)
    role = _role(pg_server, db.database, PASSWORD)
    env = {
        **clean_env,
        "POSTGRES_SERVER": db.host, "POSTGRES_PORT": str(db.port), "POSTGRES_USER": role,
        "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": db.database,
    }  # fmt: skip
    up = _migrate(app, env, "--log-level", "debug")
    assert up.returncode == 0, up.stderr
    assert current(pg_url) == {CORE_HEAD}
    assert tables(pg_url) == CORE_TABLES
    assert "setting database_url from POSTGRES_* (POSTGRES_SERVER" in up.stderr
    again = _migrate(app, env)
    assert again.returncode == 0, again.stderr
    assert f"nothing to do, database at heads {CORE_HEAD}" in again.stderr
    shown = portal_boot("db-url", env=env)
    assert shown.returncode == 0, shown.stderr
    # The first line is the masked URL; the parsed parts follow.
    assert (
        shown.stdout.splitlines()[0]
        == f"postgresql+psycopg://{role}:***@{db.host}:{db.port}/{db.database}"
    )
    # The password, also from a _FILE, is masked in every line, even an error.
    secret_file = app.parent / "pw"
    secret_file.write_text(PASSWORD + "\n")
    file_env = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
    file_env["POSTGRES_PASSWORD_FILE"] = str(secret_file)
    failing = _migrate(app, {**file_env, "POSTGRES_DB": "no_such_db"}, "--db-timeout", "1",
                       "--log-level", "debug")  # fmt: skip
    assert failing.returncode == 5, failing.stderr
    for result in (up, again, shown, failing):
        output = result.stdout + result.stderr
        for needle in {PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD),
                       quote(PASSWORD, safe=" +")}:  # fmt: skip
            assert needle not in output


@pytest.mark.parametrize(
    ("variable", "value"),
    [("POSTGRES_DB", "another_db"), ("POSTGRES_PORT", "1"), ("POSTGRES_SERVER", "db.example")],
)
def test_url_and_components_naming_different_databases_is_a_usage_error(
    variable: str, value: str, app: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    env = {**clean_env, **postgres_env(pg_url), variable: value, "DATABASE_URL": pg_url}
    result = _migrate(app, env)
    last = assert_one_line_failure(result, 2, "DATABASE_URL names", f"{variable}={value}")
    assert make_url(pg_url).password not in result.stderr + result.stdout
    assert "POSTGRES_PASSWORD" not in last  # the password's variable is not a database's name
    assert tables(pg_url) == set()


def _elsewhere_env_py(app: Path) -> None:
    """The application's env.py, reading its database name from a variable
    portal-boot knows nothing of (as from an application settings file)."""
    env_py = app.parent / "app/database/alembic/env.py"
    text = env_py.read_text()
    assert 'database=os.environ["POSTGRES_DB"]' in text
    env_py.write_text(text.replace('os.environ["POSTGRES_DB"]', 'os.environ["APP_DB_NAME"]'))


def test_env_py_migrating_another_database_fails_with_status_6(
    app: Path, pg_server: PgServer, pg_url: str, clean_env: dict[str, str]
) -> None:
    _elsewhere_env_py(app)
    other = pg_server.create_database()
    env = {**clean_env, **postgres_env(pg_url), "APP_DB_NAME": make_url(other).database}
    # Both databases empty: Alembic finds what portal-boot found; the steps run on the
    # other database; read again on portal-boot's connection, its own did not move.
    first = _migrate(app, env)
    assert_one_line_failure(
        first, 6, "is at no revision, not at c06 where the run meant to bring it",
        "env.py migrated another database", "make the two agree",
    )  # fmt: skip
    assert current(other) == {CORE_HEAD}  # what env.py did
    assert tables(pg_url) == set()
    # Now they differ: refused before any step.
    second = _migrate(app, env)
    assert_one_line_failure(
        second, 6, "nothing was applied", "connected to is at c06",
        "the database portal-boot checks, is at no revision",
    )  # fmt: skip
    assert "Running upgrade" not in second.stderr
    assert tables(pg_url) == set()
    # Made to agree: migrated, and checked.
    agreed = _migrate(app, {**env, "APP_DB_NAME": make_url(pg_url).database})
    assert agreed.returncode == 0, agreed.stderr
    assert current(pg_url) == {CORE_HEAD}


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    user=st.one_of(st.none(), _text),
    password=st.one_of(st.none(), _text),
    host=st.one_of(st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True), st.just("::1")),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    database=st.one_of(st.none(), _text),
)
def test_components_render_as_sqlalchemys_url_create(user, password, host, port, database) -> None:
    """The warm path builds the URL without SQLAlchemy: the same text URL.create
    renders, parsed back to the same components (any password, unquoted)."""
    ours = from_components(
        username=user, password=password, host=host, port=port, database=database
    )
    theirs = URL.create("postgresql+psycopg", user, password, host, port, database)
    assert ours == theirs.render_as_string(hide_password=False)
    back = make_url(ours)
    want_password = password if user is not None else None
    assert (back.username, back.password, back.host, back.port, back.database) == (
        user, want_password, host, port, database,
    )  # fmt: skip
    parsed = components(ours)
    assert (parsed.username, parsed.password, parsed.port, parsed.database) == (
        user, want_password, port, database,
    )  # fmt: skip


def test_postgres_password_is_masked_even_when_the_url_is_used(
    app: Path, pg_server: PgServer, pg_url: str, clean_env: dict[str, str]
) -> None:
    """A URL given, and POSTGRES_PASSWORD set for the application (another secret):
    a revision whose error quotes it does not get it into portal-boot's output."""
    leaky = app.parent / "app/database/alembic/versions/c07_leaky.py"
    leaky.write_text(
        revision("c07", "c06", upgrade="import os\nraise RuntimeError("
                 "f\"cannot log in with {os.environ['POSTGRES_PASSWORD']}\")")
    )  # fmt: skip
    other_secret = "An0ther:S3cret@/%"
    role = _role(pg_server, make_url(pg_url).database, other_secret)
    # portal-boot connects with the URL; the application's env.py as another role,
    # to the same database, with POSTGRES_PASSWORD.
    env = {**clean_env, **postgres_env(pg_url), "DATABASE_URL": pg_url}
    env["POSTGRES_PASSWORD"] = other_secret
    env["POSTGRES_USER"] = role
    result = _migrate(app, env, "--log-level", "debug")
    assert result.returncode == 6, result.stderr
    assert "revision c07 (the application) failed" in result.stderr
    output = result.stdout + result.stderr
    for needle in {other_secret, quote(other_secret, safe=""), quote_plus(other_secret)}:
        assert needle not in output
