"""One connection attempt per database kind: a function that makes it in at most the
given seconds. PostgreSQL is probed with psycopg directly, SQLite with the stdlib,
anything else through a pool-less SQLAlchemy engine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.database.verdicts import FIX_URL, judge
from portal_boot.dburl import Components, libpq_conninfo, redact
from portal_boot.errors import DatabaseError, UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def prober(
    url: str, parsed: Components, where: str
) -> tuple[Callable[[float], None], tuple[str, int] | None]:
    """A function making one attempt in at most the given seconds, and the TCP
    address to knock on between attempts (None: not a single TCP host). Raises
    UsageError now for what no attempt can fix (unknown driver, bad parameters)."""
    if parsed.drivername == "postgresql+psycopg":
        conninfo = libpq_conninfo(url, **_application_name(parsed))
        if conninfo is not None:
            host = parsed.host or "localhost"
            tcp = None if host.startswith("/") else (host, parsed.port or 5432)
            return _libpq_probe(conninfo, where), tcp
    if parsed.drivername in ("sqlite", "sqlite+pysqlite") and not parsed.query:
        return _sqlite_file_probe(parsed.database, where), None
    return _sqlalchemy_prober(url, where), None


def _application_name(parsed: Components) -> dict[str, str]:
    return {} if "application_name" in parsed.query else {"application_name": "portal-boot wait-db"}


# prepare_threshold=None: no server-side prepared statements, so a transaction
# pooler (PgBouncer's transaction mode) never hands another client a backend that
# holds one of ours.


def _libpq_probe(conninfo: str, where: str) -> Callable[[float], None]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise judge(exc, where) from None

    def probe(seconds: float) -> None:
        # libpq's minimum; _within gives up earlier and this thread finishes alone.
        timeout = f" connect_timeout={max(2, math.ceil(seconds))}"
        try:
            with psycopg.connect(
                conninfo + timeout, autocommit=True, prepare_threshold=None
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise judge(exc, where) from None

    return probe


def _sqlite_file_probe(database: str | None, where: str) -> Callable[[float], None]:
    # As SQLAlchemy's pysqlite dialect: no name is an in-memory database.
    filename = database or ":memory:"
    if filename != ":memory:":
        filename = os.path.abspath(filename)
    return _sqlite_probe_for([filename], {}, where)


def _sqlalchemy_prober(url: str, where: str) -> Callable[[float], None]:
    from sqlalchemy.exc import NoSuchModuleError

    from portal_boot.dburl import parse, to_sync

    sync = to_sync(parse(url))
    try:
        dialect = sync.get_dialect()()
    except NoSuchModuleError:
        raise UsageError(
            f"unknown database driver {sync.drivername!r}: use postgresql+psycopg, sqlite or "
            f"another SQLAlchemy dialect in {FIX_URL}"
        ) from None
    backend, driver = sync.get_backend_name(), sync.get_driver_name()
    if backend == "postgresql" and driver == "psycopg":
        return _psycopg_probe(dialect, sync, where)
    if backend == "sqlite" and driver == "pysqlite":
        args, kwargs = dialect.create_connect_args(sync)  # type: ignore[attr-defined]
        return _sqlite_probe_for(args, kwargs, where)
    return _sqlalchemy_probe(sync, where)


def _psycopg_probe(dialect: object, url: URL, where: str) -> Callable[[float], None]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    # The dialect's own arguments, for what libpq_conninfo declines (several hosts).
    _, params = dialect.create_connect_args(url)  # type: ignore[attr-defined]
    params.setdefault("application_name", "portal-boot wait-db")
    try:
        make_conninfo("", **params)
    except psycopg.ProgrammingError as exc:
        raise judge(exc, where) from None

    def probe(seconds: float) -> None:
        # libpq's minimum; _within gives up earlier and this thread finishes alone.
        conninfo = make_conninfo("", **{**params, "connect_timeout": max(2, math.ceil(seconds))})
        try:
            with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise judge(exc, where) from None

    return probe


def _sqlite_probe_for(args: list[str], kwargs: dict[str, object], where: str) -> Callable[[float], None]:
    import sqlite3

    in_memory = args[0] in ("", ":memory:")
    if not kwargs.get("uri") and not in_memory and not Path(args[0]).parent.is_dir():
        raise UsageError(
            f"the folder of the SQLite database {args[0]} does not exist: create it, or fix "
            f"the path in {FIX_URL}"
        )

    def probe(seconds: float) -> None:
        try:
            conn = sqlite3.connect(*args, **{"timeout": seconds, **kwargs})
            try:
                conn.execute("SELECT 1").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if "unable to open" in str(exc):
                raise UsageError(
                    f"cannot open the SQLite database {where} ({exc}): fix the path or its "
                    f"permissions in {FIX_URL}"
                ) from None
            raise DatabaseError(f"the SQLite database {where} does not answer ({exc})") from None

    return probe


def _sqlalchemy_probe(url: URL, where: str) -> Callable[[float], None]:
    from sqlalchemy import create_engine, exc, text
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(url, poolclass=NullPool)
    except ImportError as error:
        raise UsageError(
            f"the driver of {url.drivername} is not installed ({error.name or error}): install "
            f"it in the image, or choose another driver in {FIX_URL}"
        ) from None
    except exc.ArgumentError as error:
        reason = redact(str(error))
        raise UsageError(f"the database URL is not usable ({reason}): fix {FIX_URL}") from None

    def probe(seconds: float) -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except exc.DBAPIError as error:
            raise judge(error.orig or error, where) from None

    return probe
