"""The command line: parse, build the settings once, call the boot API, map errors to exits.

This is the only module that exits. Every failure ends with one line on stderr,
``portal-boot: <Kind>: <what failed and what to change>``; a traceback only at
``--log-level debug``.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from portal_boot import __version__, logs
from portal_boot.errors import BootError, Terminated, UsageError, denied
from portal_boot.settings import Settings, resolve

log = logging.getLogger("portal_boot")


def _common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The SPEC's options, accepted after every command name. No defaults here:
    :func:`portal_boot.settings.resolve` applies flag > environment > default."""
    options = [
        click.option("--database-url", help="Database URL, async or sync driver. [PORTAL_BOOT_DATABASE_URL, DATABASE_URL, DATABASE_URL_ASYNC, *_FILE]"),
        click.option("--wheel-dir", help="Folder of signed plugin wheels (air-gapped). [PORTAL_BOOT_WHEEL_DIR]"),
        click.option("--requirement", "requirements", multiple=True, help="Pinned requirement to fetch from an index; repeatable. [PORTAL_BOOT_REQUIREMENTS, comma-separated or a JSON list]"),
        click.option("--target", help="Where plugins are installed. [PORTAL_BOOT_TARGET]"),
        click.option("--trusted-keys", help="File or folder of ASCII-armored public keys. [PORTAL_BOOT_TRUSTED_KEYS]"),
        click.option("--trusted-fingerprint", "trusted_fingerprints", multiple=True, help="Allowed full key fingerprint; repeatable. [PORTAL_BOOT_TRUSTED_FINGERPRINTS]"),
        click.option("--signatures", help="require (default) or off. [PORTAL_BOOT_SIGNATURES]"),
        click.option("--alembic-config", help="The application's alembic.ini. [PORTAL_BOOT_ALEMBIC_CONFIG]"),
        click.option("--migrations-mode", help="locations (default), link or copy. [PORTAL_BOOT_MIGRATIONS_MODE]"),
        click.option("--entry-point-group", help="Plugin entry-point group. [PORTAL_BOOT_ENTRY_POINT_GROUP]"),
        click.option("--enabled-plugins", help="Plugin names, comma-separated or a JSON list; empty means all. [ENABLED_PLUGINS]"),
        click.option("--auto-migrate/--no-auto-migrate", default=None, help="Whether run migrates. [AUTO_RUN_PLUGIN_MIGRATIONS]"),
        click.option("--db-timeout", help="Seconds to wait for the database (60). [PORTAL_BOOT_DB_TIMEOUT]"),
        click.option("--lock-timeout", help="Seconds to wait for the migration lock (300). [PORTAL_BOOT_LOCK_TIMEOUT]"),
        click.option("--ddl-lock-timeout", help="Seconds a migration statement waits for a table lock before the upgrade is retried (5; 0: off). [PORTAL_BOOT_DDL_LOCK_TIMEOUT]"),
        click.option("--migration-database-url", help="A direct (not pooled) URL used only by migrate; default: the database URL. [PORTAL_BOOT_MIGRATION_DATABASE_URL, *_FILE]"),
        click.option("--app", help="ASGI app (app.main:app). [PORTAL_BOOT_APP]"),
        click.option("--host", help="Listen address (0.0.0.0). [PORTAL_BOOT_HOST]"),
        click.option("--port", help="Listen port (8000). [PORTAL_BOOT_PORT]"),
        click.option("--log-format", help="text (default) or json (one object a line, uvicorn's lines too). [PORTAL_BOOT_LOG_FORMAT]"),
        click.option("--log-level", help="debug, info (default), warning, error. [PORTAL_BOOT_LOG_LEVEL]"),
        click.option("--no-plugins", is_flag=True, default=None, help="Install an empty generation: the explicit way to remove the last plugin (not with --wheel-dir or --requirement). [PORTAL_BOOT_NO_PLUGINS]"),
    ]
    for option in reversed(options):
        func = option(func)

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        flag_names = {
            "database_url", "wheel_dir", "requirements", "target", "trusted_keys",
            "trusted_fingerprints", "signatures", "alembic_config", "migrations_mode",
            "entry_point_group", "enabled_plugins", "auto_migrate", "db_timeout",
            "lock_timeout", "ddl_lock_timeout", "migration_database_url", "app", "host", "port", "log_format", "log_level",
        }  # fmt: skip
        flag_names.add("no_plugins")
        flags = {name: kwargs.pop(name) for name in flag_names}
        settings = _settings(flags)
        return func(settings, **kwargs)

    return wrapper


def _settings(flags: dict[str, Any]) -> Settings:
    settings = resolve(flags, os.environ)
    logs.configure(settings.log_format, settings.log_level)
    _current["settings"] = settings
    from portal_boot.dburl import secrets_of

    for url in (settings.database_url, settings.migration_database_url, *_index_urls(settings)):
        for secret in secrets_of(url or ""):
            logs.add_secret(secret)
    from portal_boot.dburl import password_warning

    warning = password_warning(settings.database_url or "")
    if warning:
        log.warning(warning)
    from portal_boot.settings import postgres_secrets

    for secret in postgres_secrets(settings.environ):
        logs.add_secret(secret)
    for name, source in settings.sources.items():
        if source != "default":
            log.debug("setting %s from %s", name, source)
    return settings


def _index_urls(settings: Settings) -> list[str]:
    """pip's index URLs, whose credentials are secrets too."""
    urls = []
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls.extend(settings.environ.get(name, "").split())
    return urls


_current: dict[str, Settings] = {}

_uvicorn_args = click.argument("uvicorn_args", nargs=-1, type=click.UNPROCESSED)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="portal-boot")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Boot a plugin-extensible ASGI backend: verify signed plugin wheels, install
    them, wait for the database, migrate core and plugins once, exec uvicorn.

    With no command, does `run`. Every option is also an environment variable
    (shown in brackets); a flag wins over the environment.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@cli.command()
@_common_options
@_uvicorn_args
def run(settings: Settings, uvicorn_args: tuple[str, ...] = ()) -> None:
    """verify, install, wait-db, migrate, then exec uvicorn (args after -- go to uvicorn)."""
    from portal_boot import boot

    boot.run(settings, uvicorn_args=uvicorn_args)


@cli.command()
@_common_options
def verify(settings: Settings) -> None:
    """Check every wheel's signature; installs nothing."""
    from portal_boot import boot

    boot.verify(settings)


@cli.command()
@_common_options
def install(settings: Settings) -> None:
    """Verify, then install the plugin wheels into the target."""
    from portal_boot import boot

    boot.install(settings)


@cli.command("wait-db")
@_common_options
def wait_db(settings: Settings) -> None:
    """Wait until the database answers SELECT 1."""
    from portal_boot import boot

    boot.wait_db(settings)


@cli.command()
@_common_options
@click.option("--sql", is_flag=True, help="Print the SQL; apply nothing (a revision that needs a live database: status 6, named).")
@click.option("--to", "to", metavar="REV", help="Upgrade or downgrade to REV (e.g. a revision id, or LABEL@head).")
@click.option("--remove", "remove", metavar="PLUGIN", help="Revert exactly PLUGIN's revisions (entry-point name, distribution or branch label), before uninstalling it.")
def migrate(settings: Settings, sql: bool, to: str | None, remove: str | None) -> None:
    """Wait for the database, then apply core and plugin migrations under a lock."""
    from portal_boot import boot

    if to is not None and not to.strip():
        raise UsageError(
            "--to is empty: give a revision id, LABEL@base, LABEL@head, heads or base"
        )
    if remove is not None and not remove.strip():
        raise UsageError("--remove is empty: give a plugin's entry-point name, distribution or branch label")
    if remove is not None and (to is not None or sql):
        raise UsageError("--remove cannot be combined with --to or --sql: give one of them")
    boot.migrate(settings, sql=sql, to=to, remove=remove)


@cli.command()
@_common_options
@click.option("--wait-for-migrations", is_flag=True, help="First wait until the database is at the heads.")
@_uvicorn_args
def serve(settings: Settings, wait_for_migrations: bool, uvicorn_args: tuple[str, ...] = ()) -> None:
    """Exec uvicorn with the installed plugins importable (args after -- go to uvicorn).

    After the exec: status 2 if the app cannot be imported or the address cannot be
    bound, 8 if the application's own startup (lifespan) fails."""
    from portal_boot import boot

    boot.serve(settings, uvicorn_args=uvicorn_args, wait_for_migrations=wait_for_migrations)


@cli.command(
    "alembic",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@_common_options
@click.argument("alembic_args", nargs=-1, type=click.UNPROCESSED)
def alembic_command(settings: Settings, alembic_args: tuple[str, ...] = ()) -> None:
    """Alembic's own command line (current, history, heads, show REV, upgrade, downgrade,
    stamp...) with the application's alembic.ini, the enabled plugins' revisions and
    the sync URL (never printed); upgrade, downgrade and stamp hold the migration lock.

    portal-boot's options come before the Alembic command, everything after it is
    Alembic's (portal-boot alembic --database-url URL history -v). Alembic's own help:
    portal-boot alembic -- --help."""
    from portal_boot import boot

    boot.alembic(settings, alembic_args)


@cli.command()
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every pending revision).")
@click.option("--verbose", is_flag=True, help="List every pending revision (else: count, first, last).")
def status(settings: Settings, as_json: bool, verbose: bool) -> None:
    """Show wheels, plugins, database and revisions; exit 0 only if nothing is pending
    (else 3 bad signature, 4 install pending, 5 database unreachable, 6 migrations pending)."""
    from portal_boot import boot

    report = boot.status(settings)
    # Scrubbed like every log line: the report quotes URLs and error messages.
    if as_json:
        click.echo(logs.scrub(json.dumps(report.as_dict(), indent=2)))
    else:
        click.echo(logs.scrub(report.as_text(verbose=verbose)))
    if report.pending:
        raise _Pending(report.exit_code)


@cli.command("db-url")
@_common_options
def db_url(settings: Settings) -> None:
    """Print the sync URL Alembic will use, password masked as ***, then how it parses:
    driver, user, host, port, database, query keys."""
    from portal_boot import boot

    click.echo(logs.scrub(boot.db_url(settings)))


class _Pending(Exception):
    """status found something pending: exit with the status of the step that would
    act on it (3 signatures, 4 install, 5 database, 6 migrations), no error line."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _redeliver(unraisable: Any) -> None:
    """``sys.unraisablehook``. A SIGTERM that lands while a finalizer runs (python-gnupg's
    ``Popen.__del__``) raises Terminated where no exception can propagate: Python would
    print "Exception ignored" and go on as if no signal had come. Deliver it again in
    10 ms, to whatever runs then (raising here would be swallowed the same way)."""
    if isinstance(unraisable.exc_value, Terminated):
        signal.signal(signal.SIGALRM, _on_sigterm)
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        return
    sys.__unraisablehook__(unraisable)


def _fail(exc: BaseException, code: int, kind: str) -> int:
    signal.setitimer(signal.ITIMER_REAL, 0)  # a SIGTERM _redeliver would send is moot now
    settings = _current.get("settings")
    debug = settings is not None and settings.log_level == "debug"
    trace = None
    if debug and not isinstance(exc, Terminated):
        trace = logs.scrub("".join(traceback.format_exception(exc)))
    line = logs.scrub(f"portal-boot: {kind}: {exc}")
    if settings is not None and settings.log_format == "json":
        entry: dict[str, Any] = {"level": "error", "message": line, "status": code}
        if trace:
            entry["traceback"] = trace
        line = json.dumps(entry)
    elif trace:
        sys.stderr.write(trace)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return code


def _internal(exc: Exception) -> int:
    return _fail(
        exc,
        1,
        f"internal error ({type(exc).__name__}; rerun with --log-level debug for the "
        "traceback and please report it)",
    )


# Permission denied, operation not permitted, read-only file system.
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _redeliver
    try:
        cli.main(args=argv, prog_name="portal-boot", standalone_mode=False)
        code = 0
    except Terminated as exc:
        code = _fail(exc, exc.exit_code, "stopped")
    except BootError as exc:
        code = _fail(exc, exc.exit_code, type(exc).__name__)
    except _Pending as exc:
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        code = _fail(KeyboardInterrupt("interrupted"), 130, "stopped")
    except click.ClickException as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        code = _fail(UsageError(f"{exc.format_message()}{hint}"), 2, "UsageError")
    except KeyboardInterrupt:
        code = _fail(KeyboardInterrupt("interrupted"), 130, "stopped")
    except OSError as exc:
        if exc.errno in _DENIED:
            # A permission problem no step named itself: the user's to fix, not a bug.
            code = _fail(UsageError(denied(exc, "cannot access")), 2, "UsageError")
        else:
            code = _internal(exc)
    except Exception as exc:  # a bug: say so in one line, traceback at debug level
        code = _internal(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # Interpreter shutdown after importing SQLAlchemy costs 0.1-0.4 s, and everything
    # is flushed and every step cleaned up in its own finally: leave at once.
    os._exit(code)
