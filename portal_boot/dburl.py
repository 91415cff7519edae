"""Database URLs: async to sync conversion, and redaction.

Conversion goes through SQLAlchemy's URL object, never string replacement, so a
password holding ``@ / % :`` survives. This module owns redaction: anything that
may print a URL passes through :func:`redact` first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote

from portal_boot.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# backend (+driver) -> sync drivername. A bare backend name means "no driver given".
_SYNC_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    # psycopg2 is not in the image; psycopg 3 speaks the same libpq parameters.
    "postgresql+psycopg2": "postgresql+psycopg",
    "sqlite+aiosqlite": "sqlite",
    "sqlite+pysqlite_async": "sqlite",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
    "mariadb+aiomysql": "mariadb+pymysql",
    "mariadb+asyncmy": "mariadb+pymysql",
}

# asyncpg's own connect() arguments, which libpq refuses as "invalid connection option"
# (an app's DATABASE_URL_ASYNC commonly sets prepared_statement_cache_size=0 for pgbouncer).
_ASYNCPG_ONLY = frozenset({
    "prepared_statement_cache_size", "statement_cache_size", "command_timeout",
    "max_cached_statement_lifetime", "max_cacheable_statement_size",
})  # fmt: skip

# Query parameters that hold a secret.
_QUERY_SECRETS = frozenset({"password", "sslpassword"})

# asyncpg's ssl= values -> libpq's sslmode= values.
_ASYNCPG_SSL = {
    "true": "require",
    "false": "disable",
    "disable": "disable",
    "allow": "allow",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify_ca": "verify-ca",
    "verify-full": "verify-full",
    "verify_full": "verify-full",
}


def parse(url: str) -> URL:
    """Parse a URL with SQLAlchemy; a malformed one is a :class:`UsageError`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        # The message of make_url quotes the whole URL, password included.
        raise _malformed() from None


def _sync_driver_and_query(
    drivername: str, query: Mapping[str, str | tuple[str, ...]]
) -> tuple[str, dict[str, str | tuple[str, ...]]]:
    """The sync drivername and query for an async one. Pure; shared by the SQLAlchemy
    conversion and the warm path's parser."""
    sync_driver = _SYNC_DRIVERS.get(drivername, drivername)
    out = dict(query)
    if drivername == "postgresql+asyncpg":
        for key in _ASYNCPG_ONLY & out.keys():
            del out[key]
        if "timeout" in out:
            out.setdefault("connect_timeout", out.pop("timeout"))
    if drivername == "postgresql+asyncpg" and "ssl" in out:
        ssl = out.pop("ssl")
        if isinstance(ssl, tuple):
            ssl = ssl[-1]
        mode = _ASYNCPG_SSL.get(str(ssl).lower())
        if mode is None:
            raise UsageError(
                f"the database URL has ssl={ssl!r}, which has no libpq sslmode equivalent: "
                "use one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        out.setdefault("sslmode", mode)
    return sync_driver, out


def to_sync(url: URL) -> URL:
    """The sync-driver equivalent of a parsed URL; every other component is kept."""
    drivername, query = _sync_driver_and_query(url.drivername, url.query)
    return url.set(drivername=drivername, query=query)


def to_sync_url(url: str) -> str:
    """Convert an async SQLAlchemy URL to the sync one Alembic needs.

    ``postgresql+asyncpg``, ``postgres://`` and bare ``postgresql://`` become
    ``postgresql+psycopg``; ``sqlite+aiosqlite`` becomes ``sqlite``;
    ``mysql+aiomysql``/``mysql+asyncmy`` become ``mysql+pymysql``. asyncpg's ``ssl=``
    becomes libpq's ``sslmode=``. Raises :class:`UsageError` on a malformed URL.
    """
    return to_sync(parse(url)).render_as_string(hide_password=False)


def mask(url: URL) -> str:
    """The URL as text with its password (also one given as ``?password=``) shown as ``***``."""
    query = {k: ("***" if k.lower() in _QUERY_SECRETS else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


# scheme://user:password@host: the password is everything up to the last '@' of the
# token, so an unencoded '@' in a password is still hidden whole.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^\s]*)(?P<tail>@[^@\s]*)")
# A token as the user part of a web URL (an index URL: https://TOKEN@host/simple).
_URL_TOKEN = re.compile(r"(?P<head>\bhttps?://)(?P<tok>[^:/@\s]+)(?P<tail>@)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<pw>[^&\s]*)", re.IGNORECASE)
_CONNINFO_PASSWORD = re.compile(r"(?P<head>(?<![?&\w])password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask every password in ``text``: URLs (``user:***@``) and libpq ``password=***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    text = _URL_TOKEN.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)
    return _CONNINFO_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def secrets_of(url: str) -> list[str]:
    """The password of a URL and any secret query parameter, so logging can mask
    them wherever they appear."""
    try:
        parsed = components(url)
    except UsageError:
        return []
    found = [parsed.password] if parsed.password else []
    raw = _raw_password(url)
    if raw and raw != parsed.password:
        # An unencoded '@' or '/' made the parser end the password early: the rest of
        # it is now in the host or the database name. Mask it there too.
        found.append(raw)
        found += [raw[i + 1 :] for i, c in enumerate(raw) if c in "/@#" and raw[i + 1 :]]
    for key, value in parsed.query.items():
        if key.lower() in _QUERY_SECRETS:
            found.extend(value if isinstance(value, tuple) else [value])
    return found


# --- the warm path: no SQLAlchemy import ------------------------------------------------
#
# Importing SQLAlchemy costs 200-400 ms, more than the rest of a warm boot. wait-db and
# the "nothing to migrate" check need only a libpq conninfo, so they parse the URL with
# SQLAlchemy's own grammar, copied below; tests/test_dburl.py proves the two parsers
# agree on generated URLs. Alembic still gets SQLAlchemy's URL (to_sync_url).

# sqlalchemy.engine.url._parse_url's pattern, verbatim.
_SQLALCHEMY_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class Components:
    drivername: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: Mapping[str, str | tuple[str, ...]]

    @property
    def backend(self) -> str:
        return self.drivername.split("+", 1)[0]

    def where(self) -> str:
        """host:port/database (or the SQLite file), for messages: never the password."""
        if self.backend == "sqlite":
            return self.database or ":memory:"
        host = self.host or self.query.get("host") or "localhost"
        if isinstance(host, tuple):
            host = ",".join(host)
        port = f":{self.port}" if self.port else ""
        return redact(f"{host}{port}/{self.database or ''}")


def components(url: str) -> Components:
    """Parse ``url`` as SQLAlchemy's ``make_url`` would, without importing SQLAlchemy.
    Raises :class:`UsageError` on a malformed URL."""
    match = _SQLALCHEMY_URL.match(url)
    if match is None:
        raise _malformed()
    parts = match.groupdict()
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(parts["query"] or ""):
        if key in query:
            previous = query[key]
            query[key] = (*(previous if isinstance(previous, tuple) else (previous,)), value)
        else:
            query[key] = value
    port = None
    if parts["port"] is not None:  # SQLAlchemy refuses an empty port ("h:/db") too
        try:
            port = int(parts["port"])
        except ValueError:
            raise _malformed() from None
    return Components(
        drivername=parts["name"],
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv4host"] or parts["ipv6host"],
        port=port,
        database=unquote(parts["database"]) if parts["database"] is not None else None,
        query=query,
    )


def sync_components(url: str) -> Components:
    """:func:`components` of the sync equivalent (the same mapping as :func:`to_sync`)."""
    parsed = components(url)
    drivername, query = _sync_driver_and_query(parsed.drivername, parsed.query)
    return dataclasses.replace(parsed, drivername=drivername, query=query)


def _raw_password(url: str) -> str | None:
    """The password part of ``url`` as written: from the user's ':' to the last '@'
    before the query (what the operator meant, whatever the parser makes of it)."""
    _, sep, rest = url.partition("://")
    head = rest.split("?", 1)[0]
    if not sep or "@" not in head:
        return None
    _, colon, password = head[: head.rfind("@")].partition(":")
    return password if colon else None


def unencoded_in_password(url: str) -> list[str]:
    """The characters among ``/ @ #`` that the password part of ``url`` holds
    unencoded (sorted; empty when none). Such a URL may parse with another host or
    database than meant: ``@`` ends the password early, and other parsers (libpq,
    urllib) end the authority at ``/`` or ``#``."""
    password = _raw_password(url) or ""
    return sorted({c for c in "/@#" if c in password})


_ENCODED = {"/": "%2F", "@": "%40", "#": "%23"}


def password_warning(url: str) -> str | None:
    """A warning for a password holding unencoded ``/ @ #``, saying how to encode it;
    None when there is nothing to say. Never quotes the password."""
    found = unencoded_in_password(url)
    if not found:
        return None
    chars = " ".join(f"'{c}'" for c in found)
    codes = ", ".join(f"{c} as {_ENCODED[c]}" for c in found)
    return (
        f"the password in the database URL holds {chars} unencoded: the URL may name another "
        f"host or database than you meant (portal-boot db-url shows how it parses). "
        f"Percent-encode the password ({codes}; e.g. python3 -c 'import sys, urllib.parse; "
        "print(urllib.parse.quote(sys.argv[1], safe=\"\"))' PASSWORD)"
    )


def describe(url: str) -> list[tuple[str, str]]:
    """The parsed parts of ``url`` for ``db-url``: driver, user, host, port, database and
    the query's keys (never a value: one may be a password)."""
    parsed = components(url)
    host = parsed.host or parsed.query.get("host") or ""
    if isinstance(host, tuple):
        host = ",".join(host)
    return [
        ("driver", parsed.drivername),
        ("user", parsed.username or "(none)"),
        ("password", "set (hidden)" if parsed.password else "(none)"),
        ("host", host or "(none: the default, localhost or a Unix socket)"),
        ("port", str(parsed.port) if parsed.port else "(default)"),
        ("database", parsed.database or "(none)"),
        ("query keys", ", ".join(sorted(parsed.query)) or "(none)"),
    ]


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_conninfo(url: str, **extra: str | int) -> str | None:
    """The libpq conninfo SQLAlchemy's psycopg dialect would pass for ``url`` (async or
    sync), with ``extra`` parameters added; None when this is not a psycopg URL or the
    URL needs the dialect's own handling (several hosts in ``?host=``)."""
    parsed = sync_components(url)
    if parsed.drivername != "postgresql+psycopg" or "host" in parsed.query:
        return None
    params: dict[str, str | int | None] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    for key, value in parsed.query.items():
        if isinstance(value, tuple):
            return None
        params[key] = value
    params.update(extra)
    return " ".join(
        f"{key}={_libpq_quote(str(value))}" for key, value in params.items() if value not in (None, "")
    )


def from_components(
    *,
    username: str | None,
    password: str | None,
    host: str,
    port: int | None,
    database: str | None,
    drivername: str = "postgresql+psycopg",
) -> str:
    """The URL ``sqlalchemy.engine.URL.create(...).render_as_string(hide_password=False)``
    gives for these components, without importing SQLAlchemy (its quoting, copied;
    tests/test_dburl.py proves the two equal): any password works as it is."""
    out = drivername + "://"
    if username is not None:
        out += quote(username, safe=" +")
        if password is not None:
            out += ":" + quote(password, safe=" +")
        out += "@"
    out += f"[{host}]" if ":" in host else host
    if port is not None:
        out += f":{port}"
    if database is not None:
        out += "/" + quote(database, safe=" +/")
    return out


def _malformed() -> UsageError:
    return UsageError(
        "the database URL is malformed (expected driver://user:password@host:port/database): "
        "fix --database-url / PORTAL_BOOT_DATABASE_URL (or DATABASE_URL)"
    )
