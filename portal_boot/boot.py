"""The boot API: one function per command, over a :class:`Settings`.

``run`` chains verify -> install -> wait-db -> migrate -> serve, each step logged
with its duration. Heavy modules are imported inside the functions that need
them, so a command pays only for what it uses.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from portal_boot.logs import step
from portal_boot.settings import Settings

if TYPE_CHECKING:
    from portal_boot.plugins import Plugin
    from portal_boot.status import Report

log = logging.getLogger("portal_boot")


def _nothing_to_install(settings: Settings) -> bool:
    if settings.no_plugins:
        log.info("no plugins (--no-plugins / PORTAL_BOOT_NO_PLUGINS): nothing to verify")
        return True
    if settings.wheel_dir is None and not settings.requirements:
        log.info(
            "no plugins configured (neither --wheel-dir / PORTAL_BOOT_WHEEL_DIR nor "
            "--requirement / PORTAL_BOOT_REQUIREMENTS): nothing to verify or install"
        )
        return True
    return False


def _warn_if_unsigned(settings: Settings) -> None:
    if settings.signatures == "off":
        log.warning(
            "SIGNATURE CHECKING IS OFF (--signatures / PORTAL_BOOT_SIGNATURES=off): plugin "
            "wheels are installed without verifying who built them"
        )


def verify(settings: Settings) -> None:
    """Check every wheel's signature; install nothing. Raises SignatureError."""
    if _nothing_to_install(settings):
        return
    _warn_if_unsigned(settings)
    from portal_boot import wheels

    wheels.verify(settings)


def install(settings: Settings) -> None:
    """Verify, then install into a fresh generation of the target (with
    ``--no-plugins``, an empty one). Raises SignatureError or InstallError; the
    previous generation stays in use."""
    if settings.no_plugins:
        from portal_boot import wheels

        wheels.install_nothing(settings)
        return
    if _nothing_to_install(settings):
        return
    _warn_if_unsigned(settings)
    from portal_boot import wheels

    wheels.install(settings)


def sync_url(settings: Settings) -> str:
    """The sync URL for Alembic. Raises UsageError when missing or malformed."""
    from portal_boot.dburl import to_sync_url

    return to_sync_url(settings.require_database_url())


def db_url(settings: Settings) -> str:
    """The sync URL, password masked, then its parsed parts (driver, user, host,
    port, database, query keys) one a line."""
    from portal_boot.dburl import describe, mask, parse

    url = sync_url(settings)
    parts = describe(url)
    width = max(len(name) for name, _ in parts)
    return "\n".join(
        [mask(parse(url)), *(f"  {name + ':':<{width + 1}} {value}" for name, value in parts)]
    )


def wait_db(settings: Settings) -> None:
    """Wait until the database answers. Raises DatabaseError or UsageError."""
    from portal_boot.database import wait_for_database

    # The URL as given: wait-db converts it itself without importing SQLAlchemy.
    wait_for_database(settings.require_database_url(), timeout=settings.db_timeout)


def enabled_plugins(settings: Settings) -> list[Plugin]:
    """The installed plugins that ENABLED_PLUGINS selects (all when it is empty)."""
    from portal_boot.plugins import discover_installed, select

    found = discover_installed(settings.target, settings.entry_point_group)
    return select(found, settings.enabled_plugins)


def migrate(
    settings: Settings,
    *,
    sql: bool = False,
    to: str | None = None,
    wait: bool = True,
    remove: str | None = None,
) -> None:
    """Wait for the database (unless only printing SQL, or the caller just did), then
    apply core and plugin migrations under the cross-replica lock. Raises
    MigrationError, LockTimeout, DatabaseError."""
    from portal_boot import migrations

    plugins = enabled_plugins(settings)
    # As given, async or sync: a database at the heads is noticed without SQLAlchemy,
    # which makes the sync URL only when Alembic runs. A direct URL for migrations
    # (past a pooler), when one is given, is waited for too, even right after wait-db.
    url = settings.migration_database_url or settings.require_database_url()
    if not sql and (wait or url != settings.database_url):
        from portal_boot.database import wait_for_database

        with _blaming_the_migration_url(url != settings.database_url):
            wait_for_database(url, timeout=settings.db_timeout)
    migrations.migrate(settings, plugins, url=url, sql=sql, to=to, remove=remove)


def alembic(settings: Settings, argv: Sequence[str]) -> None:
    """Alembic's own command line over the application's and the enabled plugins'
    revisions, with the sync URL (never printed) and, for the commands that change the
    database, the migration lock."""
    from portal_boot import migrations

    if not migrations.alembic_wants_database(argv):  # Alembic printed its help
        return
    migrations.alembic(settings, enabled_plugins(settings), url=sync_url(settings), argv=argv)


@contextlib.contextmanager
def _blaming_the_migration_url(blame: bool = True) -> Iterator[None]:
    """Errors about PORTAL_BOOT_MIGRATION_DATABASE_URL name it, not the database URL."""
    from portal_boot.database import FIX_URL
    from portal_boot.errors import BootError

    try:
        yield
    except BootError as exc:
        if not blame:
            raise
        hint = "--migration-database-url / PORTAL_BOOT_MIGRATION_DATABASE_URL"
        message = str(exc)
        message = (
            message.replace(FIX_URL, hint)
            if FIX_URL in message
            else f"the migration database URL ({hint}): {message}"
        )
        raise type(exc)(message) from None


def serve(
    settings: Settings, *, uvicorn_args: Sequence[str] = (), wait_for_migrations: bool = False
) -> NoReturn:
    """Exec uvicorn with the installed plugins importable. Never returns."""
    from portal_boot import serve as server
    from portal_boot import wheels

    wheels.refuse_unsigned_generation(settings.target, settings.signatures)
    if wait_for_migrations:
        from portal_boot import migrations

        with step("wait-for-migrations"):
            wait_db(settings)
            migrations.wait_until_at_heads(
                settings, enabled_plugins(settings), url=settings.require_database_url()
            )
    plugin_path = wheels.current_generation(settings.target) or settings.target
    server.exec_uvicorn(settings, plugin_path, uvicorn_args)


def run(settings: Settings, *, uvicorn_args: Sequence[str] = ()) -> NoReturn:
    """verify -> install -> wait-db -> migrate -> serve."""
    started = time.monotonic()
    # Fail on a URL no wait can fix (malformed, unknown driver) before doing any work.
    from portal_boot.database import check_url

    check_url(settings.require_database_url())
    if settings.migration_database_url and settings.auto_migrate:
        with _blaming_the_migration_url():
            check_url(settings.migration_database_url)
    with step("install"):
        install(settings)
    with step("wait-db"):
        wait_db(settings)
    if settings.auto_migrate:
        with step("migrate"):
            migrate(settings, wait=False)
    else:
        log.info("migrate: skipped (AUTO_RUN_PLUGIN_MIGRATIONS=false)")
    log.info(
        "boot: ready in %d ms, starting uvicorn",
        round((time.monotonic() - started) * 1000),
        extra={"step": "boot", "event": "summary"},
    )
    serve(settings, uvicorn_args=uvicorn_args)


def status(settings: Settings) -> Report:
    """What is there and what is pending."""
    from portal_boot.status import collect

    return collect(settings)
