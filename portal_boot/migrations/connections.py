"""The migration stage's database connections: the sync URL, a pool-less engine, and
connections that keep no session state and prepare no statement (safe through a
transaction pooler), with one-line errors naming where the database is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from portal_boot.errors import DatabaseError
from portal_boot.migrations.lock import application_name
from portal_boot.migrations.locked import pooler_problem
from portal_boot.migrations.project import first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine


def sync_url(url: str) -> str:
    from portal_boot.dburl import to_sync_url

    return to_sync_url(url)


def make_engine(url: str, purpose: str = "migrate") -> Engine:
    from sqlalchemy import create_engine, pool

    from portal_boot.dburl import parse

    parsed = parse(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "application_name" not in parsed.query:
        connect_args["application_name"] = application_name(purpose)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        # No server-side prepared statements: through a transaction pooler they stay
        # on a backend other clients get next ("_pg3_0 already exists").
        connect_args["prepare_threshold"] = None
    # NullPool: every connection is really closed when released, none outlives the step.
    return create_engine(parsed, poolclass=pool.NullPool, connect_args=connect_args)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    # No session state (SET) on it: through a transaction pooler it would stay on a
    # backend other clients get. What the upgrade needs is SET LOCAL (migrations.ddl).
    where = where_of(engine.url.render_as_string(hide_password=False))
    with database_errors(where):
        conn = engine.connect()
    try:
        yield conn
    finally:
        conn.close()


def where_of(url: str) -> str:
    """host:port/database (or the SQLite file) of ``url``, for messages."""
    from portal_boot.dburl import sync_components

    return sync_components(url).where()


@contextlib.contextmanager
def database_errors(where: str = "") -> Iterator[None]:
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        pooler = pooler_problem(str(exc.orig or exc))
        if pooler is not None:
            raise pooler from None
        at = f" at {where}" if where else ""
        raise DatabaseError(
            f"the database{at} failed: {first_line(exc)}: check that it is up and that "
            "--database-url / DATABASE_URL is right"
        ) from None
