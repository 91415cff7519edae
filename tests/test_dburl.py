"""URL conversion and redaction: a table of cases, and properties over generated URLs."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
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
    # asyncpg's own arguments mean nothing to libpq (which would refuse them).
    ("postgresql+asyncpg://u:p@db/portal?prepared_statement_cache_size=0&command_timeout=30", "postgresql+psycopg://u:p@db/portal"),
    ("postgresql+asyncpg://u:p@db/portal?timeout=5", "postgresql+psycopg://u:p@db/portal?connect_timeout=5"),
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
# ssl and asyncpg's own arguments are translated or dropped (tested in the table).
_TRANSLATED = {"ssl", "timeout", "command_timeout", "statement_cache_size"}
query_key = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(lambda k: k not in _TRANSLATED)


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


def test_redact_index_tokens_and_query_passwords() -> None:
    assert redact("pip from https://ghp_TOKEN123@example.org/simple") == "pip from https://***@example.org/simple"
    assert redact("postgresql://u@h/db?password=s3cret&x=1") == "postgresql://u@h/db?password=***&x=1"


def test_mask_hides_a_query_password() -> None:
    from portal_boot.dburl import mask, secrets_of

    url = "postgresql://u@h/db?password=s3cret&sslmode=require"
    assert mask(make_url(url)) == "postgresql://u@h/db?password=***&sslmode=require"
    assert secrets_of(url) == ["s3cret"]
    assert secrets_of("postgresql://u:pw@h/db") == ["pw"]


def test_redact_raw_password_with_at_sign_and_conninfo() -> None:
    assert redact("postgresql://u:p@ss@db/x") == "postgresql://u:***@db/x"
    assert redact("host=db password=s3cret user=u") == "host=db password=*** user=u"
    assert redact("nothing to hide here") == "nothing to hide here"


# --- the warm path's parser agrees with SQLAlchemy's ------------------------------------

from portal_boot.dburl import components, libpq_conninfo  # noqa: E402

url_text = st.one_of(
    st.builds(
        lambda d, u, p, h, port, db, q: URL.create(d, u, p, h, port, db, q).render_as_string(
            hide_password=False
        ),
        st.sampled_from(["postgresql+asyncpg", "postgresql", "postgres", "sqlite", "mysql+aiomysql"]),
        st.one_of(st.none(), text),
        st.one_of(st.none(), text),
        st.one_of(st.none(), st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)),
        st.one_of(st.none(), st.integers(1, 65535)),
        st.one_of(st.none(), text),
        st.dictionaries(query_key, st.one_of(text, st.lists(text, min_size=2, max_size=3).map(tuple)), max_size=3),
    ),
    # Raw strings, valid or not: both parsers must agree on accepting them too.
    st.text(st.sampled_from("abcp+:/@?&=%[]0123456789 ."), max_size=40).map(lambda t: "postgresql://" + t),
    st.text(max_size=40),
)


def _sqlalchemy_components(raw: str):
    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - any refusal counts as "malformed"
        return None
    query = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in url.query.items()}
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, query)


@settings(max_examples=500, deadline=None)
@given(raw=url_text)
def test_warm_path_parser_agrees_with_sqlalchemy(raw: str) -> None:
    expected = _sqlalchemy_components(raw)
    try:
        got = components(raw)
    except UsageError:
        assert expected is None, raw
        return
    assert expected is not None, raw
    assert (got.drivername, got.username, got.password, got.host, got.port, got.database, dict(got.query)) == expected


@settings(max_examples=300, deadline=None)
@given(
    driver=st.sampled_from(["postgresql+asyncpg", "postgresql", "postgres", "postgresql+psycopg"]),
    user=st.one_of(st.none(), text),
    password=st.one_of(st.none(), text),
    host=st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True)),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    database=st.one_of(st.none(), text),
    sslmode=st.one_of(st.none(), st.sampled_from(["require", "disable", "verify-full"])),
)
def test_libpq_conninfo_matches_sqlalchemys_psycopg_dialect(driver, user, password, host, port, database, sslmode) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    # libpq cannot carry a NUL in any parameter, whoever builds the conninfo.
    assume(not any("\x00" in (v or "") for v in (user, password, database)))
    query = {"application_name": "x y'z"}
    if sslmode:
        query["ssl" if driver == "postgresql+asyncpg" else "sslmode"] = sslmode
    raw = URL.create(driver, user, password, host, port, database, query).render_as_string(hide_password=False)
    sync = make_url(to_sync_url(raw))
    _, params = sync.get_dialect()().create_connect_args(sync)
    expected = conninfo_to_dict(make_conninfo("", **params))
    got = libpq_conninfo(raw)
    assert got is not None
    assert conninfo_to_dict(got) == expected


def test_libpq_conninfo_declines_what_it_cannot_express() -> None:
    assert libpq_conninfo("sqlite:///x.db") is None
    assert libpq_conninfo("postgresql://u@/db?host=h1&host=h2") is None
    assert "connect_timeout='2'" in libpq_conninfo("postgresql://u@h/db", connect_timeout=2)
