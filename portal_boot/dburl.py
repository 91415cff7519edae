"""Database URLs: async to sync conversion, and redaction.

Conversion goes through SQLAlchemy's URL object, never string replacement, so a
password holding ``@ / % :`` survives. This module owns redaction: anything that
may print a URL passes through :func:`redact` first.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

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
        raise UsageError(
            "the database URL is malformed (expected driver://user:password@host:port/database): "
            "fix --database-url / PORTAL_BOOT_DATABASE_URL (or DATABASE_URL)"
        ) from None


def to_sync(url: URL) -> URL:
    """The sync-driver equivalent of a parsed URL; every other component is kept."""
    drivername = _SYNC_DRIVERS.get(url.drivername, url.drivername)
    query = dict(url.query)
    if url.drivername == "postgresql+asyncpg" and "ssl" in query:
        ssl = query.pop("ssl")
        if isinstance(ssl, tuple):
            ssl = ssl[-1]
        mode = _ASYNCPG_SSL.get(str(ssl).lower())
        if mode is None:
            raise UsageError(
                f"the database URL has ssl={ssl!r}, which has no libpq sslmode equivalent: "
                "use one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        query.setdefault("sslmode", mode)
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
    """The URL as text with its password shown as ``***``."""
    return url.render_as_string(hide_password=True)


# scheme://user:password@host: the password is everything up to the last '@' of the
# token, so an unencoded '@' in a password is still hidden whole.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^\s]*)(?P<tail>@[^@\s]*)")
_CONNINFO_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(text: str) -> str:
    """Mask every password in ``text``: URLs (``user:***@``) and libpq ``password=***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _CONNINFO_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def password_of(url: str) -> str | None:
    """The password of a URL, so logging can mask it wherever it appears."""
    try:
        return parse(url).password
    except UsageError:
        return None
