"""URL conversion and redaction: a table of cases, and properties over generated URLs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, make_url

from portal_boot.dburl import redact, to_sync_url
from portal_boot.errors import UsageError

CASES = [
    ("postgresql+asyncpg://u:p@db:5432/portal", "postgresql+psycopg://u:p@db:5432/portal"),
    ("postgres://u:p@db/portal", "postgresql+psycopg://u:p@db/portal"),
    ("postgresql://u:p@db/portal", "postgresql+psycopg://u:p@db/portal"),
    ("postgresql+psycopg://u:p@db/portal", "postgresql+psycopg://u:p@db/portal"),
    ("postgresql+psycopg2://u:p@db/portal", "postgresql+psycopg://u:p@db/portal"),
    ("sqlite+aiosqlite:///./portal.db", "sqlite:///./portal.db"),
    ("sqlite+aiosqlite:////var/lib/portal.db", "sqlite:////var/lib/portal.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("mysql+aiomysql://u:p@db/portal", "mysql+pymysql://u:p@db/portal"),
    ("mysql+asyncmy://u:p@db:3306/portal?charset=utf8mb4", "mysql+pymysql://u:p@db:3306/portal?charset=utf8mb4"),
    ("postgresql+asyncpg://u:p@db/portal?ssl=require", "postgresql+psycopg://u:p@db/portal?sslmode=require"),
    ("postgresql+asyncpg://u:p@db/portal?ssl=verify-full&application_name=x", "postgresql+psycopg://u:p@db/portal?application_name=x&sslmode=verify-full"),
    ("postgresql+asyncpg://u:p@db/portal?ssl=true", "postgresql+psycopg://u:p@db/portal?sslmode=require"),
    # Percent-encoded specials survive exactly: p@ss/w%rd:x
    ("postgresql+asyncpg://u:p%40ss%2Fw%25rd%3Ax@db/portal", "postgresql+psycopg://u:p%40ss%2Fw%25rd%3Ax@db/portal"),
    ("postgresql+asyncpg://u@db/portal", "postgresql+psycopg://u@db/portal"),
    ("postgresql+asyncpg://db/portal", "postgresql+psycopg://db/portal"),
]


@pytest.mark.parametrize(("given_url", "expected"), CASES)
def test_to_sync_url(given_url: str, expected: str) -> None:
    assert make_url(to_sync_url(given_url)) == make_url(expected)


def test_password_with_specials_survives() -> None:
    url = URL.create("postgresql+asyncpg", "user", "p@ss/w%rd:x y", "db.example", 6543, "portal")
    out = make_url(to_sync_url(url.render_as_string(hide_password=False)))
    assert out.password == "p@ss/w%rd:x y"
    assert (out.username, out.host, out.port, out.database) == ("user", "db.example", 6543, "portal")


@pytest.mark.parametrize("bad", ["", "not a url", "://nohost", "postgresql+asyncpg://u:p@db:notaport/x"])
def test_malformed_url_is_a_usage_error_without_the_password(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        to_sync_url(bad)
    assert "notaport" not in str(info.value) or "p@db" not in str(info.value)


def test_unknown_asyncpg_ssl_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="sslmode"):
        to_sync_url("postgresql+asyncpg://u:p@db/portal?ssl=sometimes")


ASYNC_TO_SYNC = {
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
}

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
query_key = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(lambda k: k != "ssl")


@settings(max_examples=300, deadline=None)
@given(
    driver=st.sampled_from(sorted(ASYNC_TO_SYNC)),
    user=text,
    password=text,
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    database=text,
    query=st.dictionaries(query_key, text, max_size=3),
)
def test_conversion_keeps_every_component(driver, user, password, host, port, database, query) -> None:
    url = URL.create(driver, user, password, host, port, database, query)
    out = make_url(to_sync_url(url.render_as_string(hide_password=False)))
    assert out.drivername == ASYNC_TO_SYNC[driver]
    assert (out.username, out.password, out.host, out.port, out.database) == (user, password, host, port, database)
    assert dict(out.query) == query


@settings(max_examples=300, deadline=None)
@given(password=st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=3, max_size=30).filter(lambda p: p.strip() == p and " " not in p))
def test_redact_hides_any_password(password: str) -> None:
    url = URL.create("postgresql+asyncpg", "user", password, "db", 5432, "portal")
    rendered = url.render_as_string(hide_password=False)
    line = f"cannot connect to {rendered} (refused)"
    out = redact(line)
    assert "***" in out
    assert rendered not in out
    assert out.startswith("cannot connect to postgresql+asyncpg://user:***@")


def test_redact_raw_password_with_at_sign_and_conninfo() -> None:
    assert redact("postgresql://u:p@ss@db/x") == "postgresql://u:***@db/x"
    assert redact("host=db password=s3cret user=u") == "host=db password=*** user=u"
    assert redact("nothing to hide here") == "nothing to hide here"
