"""Stage 4: the core and plugin migrations, applied once under the cross-replica lock.

The stage's entry functions, over the settings; everything in this package below
them takes a :class:`~portal_boot.migrations.sources.Sources` or plain values.
Reading order: :mod:`.apply` (the driver: ``migrate``, waiting for another replica's
migrations, the state for ``status``), :mod:`.at_heads` (the warm path's "nothing to
do", without Alembic), :mod:`.revisions` and :mod:`.preflight` (the files and the
checks made before anything is applied), :mod:`.project` and :mod:`.runner` (Alembic
in-process: steps planned, checked, then run), :mod:`.landing` (the database checked
is the database migrated), :mod:`.removal` (``--remove``: one plugin's revisions and
nothing else), :mod:`.lock` (one migrator at a time), :mod:`.locked` (PostgreSQL's
upgrade under that lock, through a pooler or not), :mod:`.ddl` (the DDL lock timeout
and its retries), :mod:`.placement` (the ``link``/``copy`` modes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from portal_boot.migrations.sources import Sources
from portal_boot.settings import Settings

if TYPE_CHECKING:
    from portal_boot.migrations.apply import RevisionState
    from portal_boot.plugins import Plugin

__all__ = [
    "alembic",
    "alembic_wants_database",
    "has_own_environment",
    "migrate",
    "revision_state",
    "sources_from",
    "wait_until_at_heads",
]


def sources_from(settings: Settings) -> Sources:
    """The part of the settings this stage uses to find the revision files."""
    return Sources(
        alembic_config=settings.alembic_config,
        migrations_mode=settings.migrations_mode,
        target=settings.target,
        entry_point_group=settings.entry_point_group,
    )


def migrate(
    settings: Settings,
    plugins: Sequence[Plugin],
    *,
    url: str,
    sql: bool = False,
    to: str | None = None,
    remove: str | None = None,
) -> None:
    """Apply the core and plugin migrations: to all heads, or up or down to ``to``;
    with ``sql``, print the SQL instead; with ``remove``, revert exactly that
    plugin's revisions. Raises UsageError, MigrationError,
    LockTimeout, DatabaseError."""
    from portal_boot.migrations import apply

    apply.upgrade(
        sources_from(settings),
        plugins,
        url=url,
        db_timeout=settings.db_timeout,
        lock_timeout=settings.lock_timeout,
        ddl_lock_timeout=settings.ddl_lock_timeout,
        sql=sql,
        to=to,
        remove=remove,
    )


def wait_until_at_heads(settings: Settings, plugins: Sequence[Plugin], *, url: str) -> None:
    """Wait, at most ``--db-timeout``, until another process has brought the database
    to the heads. Raises MigrationError, DatabaseError, UsageError."""
    from portal_boot.migrations import apply

    apply.wait_until_at_heads(sources_from(settings), plugins, url=url, timeout=settings.db_timeout)


def revision_state(settings: Settings, plugins: Sequence[Plugin], *, url: str) -> RevisionState:
    """For ``status``: the database's revisions, the heads, what is pending."""
    from portal_boot.migrations import apply

    return apply.revision_state(sources_from(settings), plugins, url=url, timeout=settings.db_timeout)


def alembic(
    settings: Settings, plugins: Sequence[Plugin], *, url: str, argv: Sequence[str]
) -> None:
    """``portal-boot alembic ARGS``: Alembic's own command line over the application's
    alembic.ini, the enabled plugins' revisions and the sync ``url``; commands that
    change the database hold the migration lock. Raises UsageError, MigrationError,
    DatabaseError, LockTimeout."""
    from portal_boot.migrations import alembic_cli

    alembic_cli.run(
        sources_from(settings), plugins, url=url, argv=argv, lock_timeout=settings.lock_timeout
    )


def alembic_wants_database(argv: Sequence[str]) -> bool:
    """Whether ``portal-boot alembic ARGS`` runs a command (False: Alembic printed its
    help or usage, which needs no database)."""
    from portal_boot.migrations import alembic_cli

    return alembic_cli.parse(argv) is not None


def has_own_environment(plugin: Plugin) -> bool:
    """Whether ``plugin`` brings its own Alembic environment (an env.py in its
    migration folder), for ``status``."""
    from portal_boot.migrations.environments import is_own_environment

    return is_own_environment(plugin)
