"""The database portal-boot checks is the database that gets migrated.

An application's ``env.py`` may ignore both the URL portal-boot sets
(``sqlalchemy.url``) and the connection it offers (``config.attributes["connection"]``)
and connect wherever it likes: FastAPI's full-stack template builds its URL from
``POSTGRES_SERVER``/``POSTGRES_PORT``/``POSTGRES_DB``. Then portal-boot would check
one database and Alembic migrate another. Two checks catch it:

- before any step, the revisions Alembic read on env.py's connection must be those
  portal-boot read on its own (:func:`check_same`);
- after the run, the revisions read again on portal-boot's connection must be where
  the steps lead (:func:`check_landed`): this catches two databases that happened
  to be at the same revisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from portal_boot.errors import MigrationError
from portal_boot.migrations.preflight import Graph

if TYPE_CHECKING:
    from portal_boot.migrations.runner import Step

_FIX = (
    "the application's env.py migrated another database than the one portal-boot checks "
    "(an env.py that ignores sqlalchemy.url and config.attributes['connection'], e.g. one "
    "that builds its URL from POSTGRES_SERVER/POSTGRES_PORT/POSTGRES_DB): make the two "
    "agree: point --database-url / DATABASE_URL and POSTGRES_* at the same database, or "
    "unset the URL and let portal-boot build it from POSTGRES_*, or make env.py use "
    "config.attributes['connection'] when it is set"
)


def where(url: str) -> str:
    """host:port/database of ``url``, for messages (never the password)."""
    from portal_boot.dburl import components

    try:
        return components(url).where()
    except Exception:  # noqa: BLE001 - only for a message
        return "the configured database"


def _listed(revisions: Iterable[str]) -> str:
    return ", ".join(sorted(revisions)) or "no revision"


def check_same(alembic_heads: Sequence[str], current: Sequence[str], database: str) -> None:
    """Raise MigrationError (nothing applied yet) when the database env.py connected
    to is not at the revisions portal-boot read on ``database``."""
    if set(alembic_heads) != set(current):
        raise MigrationError(
            f"nothing was applied: the database the application's env.py connected to is at "
            f"{_listed(alembic_heads)}, but {database}, the database portal-boot checks, is "
            f"at {_listed(current)}: {_FIX}"
        )


def expected(graph: Graph, before: Sequence[str], steps: Sequence[Step]) -> set[str]:
    """Every revision the database should have once ``steps`` ran from ``before``."""
    found = graph.applied(before)
    for step in steps:
        if step.upgrade:
            found.add(step.revision)
        else:
            found.discard(step.revision)
    return found


def heads_of(graph: Graph, revisions: set[str]) -> list[str]:
    """The revisions of ``revisions`` no other one of them builds on."""
    below = {p for r in revisions if r in graph.files for p in graph.parents(r)}
    return sorted(revisions - below)


def check_landed(
    graph: Graph,
    before: Sequence[str],
    steps: Sequence[Step],
    after: Sequence[str],
    database: str,
) -> None:
    """Raise MigrationError when the versions read again on portal-boot's own
    connection (``after``) are not where ``steps`` lead from ``before``."""
    wanted = expected(graph, before, steps)
    unknown = [r for r in after if r not in graph.files]
    if not unknown and graph.applied(after) == wanted:
        return
    raise MigrationError(
        f"after running {len(steps)} step(s), {database}, the database portal-boot checks, "
        f"is at {_listed(after)}, not at {_listed(heads_of(graph, wanted))} where the run "
        f"meant to bring it: {_FIX}"
    )
