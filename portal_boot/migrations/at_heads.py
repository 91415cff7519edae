"""The warm path: "is the database already at the heads?", answered without
importing Alembic or SQLAlchemy.

``import alembic.config`` alone costs 75-130 ms, and the full path then makes a
SQLAlchemy engine and a connection of its own, only to find nothing pending. Here
the application's ``alembic.ini`` is read with configparser, the revision files are
listed as :func:`portal_boot.migrations.project.load` lists them and read with :mod:`ast`
(the same :mod:`portal_boot.migrations.preflight` functions), and the version table with one
query through psycopg (PostgreSQL) or sqlite3 (SQLite).

The answer is either "exactly at the heads, and the run would change nothing" or
"the full path decides". Everything this module does not model goes to the full
path, which decides and reports as before: another database or driver, a URL only
SQLAlchemy's dialect can express, a ``package:path`` location, identifiers that
need an import, any pre-flight problem, plugin files to place or remove
(``link``/``copy``), a revision no file defines, an empty database. So this check
can make a run faster, never different.

The heads are not cached: reading 52 revision files with ast takes ~8 ms on the
development VM, a content-hash cache would save ~3-7 ms of that only when it
survives between boots (not in a new container, the usual start), and a stale or
planted cache is the one way this check could wrongly say "nothing to do".
"""

from __future__ import annotations

import configparser
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from portal_boot import dburl
from portal_boot.errors import MigrationError, UsageError
from portal_boot.migrations import placement, preflight, revisions
from portal_boot.migrations.sources import Sources
from portal_boot.plugins import Plugin

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"
_SECTION = "alembic"
# alembic.config.Config._get_file_separator_char and get_version_locations_list.
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")


class AtHeads(NamedTuple):
    current: tuple[str, ...]  # the rows of the version table, sorted
    heads: tuple[str, ...]  # the heads of the revision graph, as the full path reports them
    # Own-environment plugins (portal_boot.migrations.environments), one status entry each.
    environments: tuple[dict[str, Any], ...] = ()


class Undecided(Exception):
    """The full path decides; the message says why (logged at debug level). Never
    leaves :func:`at_heads`."""


def at_heads(
    sources: Sources,
    plugins: Sequence[Plugin],
    url: str,
    *,
    timeout: float,
    purpose: str = "migrate",
    files_too: bool = True,
) -> AtHeads | None:
    """Where the database is, when nothing is pending; None when the full path must
    decide. "Nothing pending" is the full path's own test: every revision in the
    version table is defined by a file, and every file is applied (Alembic keeps
    only the heads in that table, counting ``depends_on`` too). ``url`` may be async
    or sync. With ``files_too`` (``migrate``), also None when ``link``/``copy``
    files need placing or removing. Raises nothing of its own; lets Terminated
    (SIGTERM) through."""
    started = time.monotonic()
    try:
        locations, recursive = read_locations(sources.alembic_config)
        graph = _graph(sources.migrations_mode, plugins, locations, recursive, files_too=files_too)
        envs = _environments(plugins)
        tables = [(None, VERSION_TABLE)] + [
            (e.version_table.schema, e.version_table.name) for e in envs if e.version_table
        ]
        current, *own = _current(url, tables, purpose=purpose, timeout=timeout)
    except Undecided as exc:
        log.debug("fast check: %s; the full path decides", exc)
        return None
    unknown = [r for r in current if r not in graph.files]
    pending = () if unknown else graph.pending(current)
    if not current or unknown or pending:
        log.debug(
            "fast check: the database is at %s (%s); the full path decides",
            ", ".join(current) or "no revision",
            f"not defined by any file: {', '.join(unknown)}" if unknown
            else f"{len(pending)} revision(s) pending",
        )  # fmt: skip
        return None
    entries = _own_at_heads(envs, own)
    if entries is None:
        return None
    log.debug("fast check: nothing pending, in %.1f ms", (time.monotonic() - started) * 1000)
    return AtHeads(current, graph.heads, entries)


def _own_at_heads(envs: Sequence[Any], rows: Sequence[tuple[str, ...]]) -> tuple[Any, ...] | None:
    """The own environments' status entries when each is at its heads; else None."""
    from portal_boot.migrations.environment_runs import entry

    entries = []
    for env, current in zip(envs, rows, strict=True):
        unknown = [r for r in current if r not in env.graph.files]
        pending = () if unknown else env.graph.pending(current)
        if unknown or pending:
            log.debug(
                "fast check: plugin %s's own environment is at %s; the full path decides",
                env.name, ", ".join(current) or "no revision",
            )  # fmt: skip
            return None
        entries.append(entry(env.name, env.version_table, current, env.graph.heads, ()))
    return tuple(entries)


def _environments(plugins: Sequence[Plugin]) -> tuple[Any, ...]:
    """The own-environment plugins, read without imports; Undecided when the full
    path must read them (a problem, a version table only their env.py names)."""
    from portal_boot.migrations import environments

    try:
        envs = environments.load(plugins, read=_read)
    except (MigrationError, OSError) as exc:
        raise Undecided(f"an own-environment plugin: {exc}") from None
    for env in envs:
        if env.version_table is None:
            raise Undecided(f"plugin {env.name}'s version table is named only by running its env.py")
    return envs


# --- the files -------------------------------------------------------------------


def read_locations(ini: Path) -> tuple[tuple[Path, ...], bool]:
    """The application's version locations and whether they are searched
    recursively, as :func:`portal_boot.migrations.project.load` finds them through
    Alembic's Config (a test holds the two to the same answers). Raises Undecided
    for what only Alembic can read (a package resource, an unknown separator) and
    for any problem, which the full path then reports."""
    parser = configparser.ConfigParser({"here": ini.absolute().parent.as_posix()})
    try:
        # Alembic reads the file with the locale's encoding, and so does this.
        if not parser.read([ini], encoding="locale"):
            raise Undecided(f"cannot read {ini}")
        main = parser[_SECTION]
        script_location = main.get("script_location")
        version_locations = main.get("version_locations")
        separator = main.get("path_separator")
        if separator is None:
            separator = main.get("version_path_separator")
        recursive = revisions.is_recursive(main.get("recursive_version_locations"))
    except (configparser.Error, KeyError, OSError, UnicodeDecodeError) as exc:
        raise Undecided(f"cannot read {ini}: {type(exc).__name__}") from None
    if not script_location:
        raise Undecided(f"{ini} has no script_location")
    directory = _location(script_location)
    if not directory.is_dir():
        raise Undecided(f"the script_location {directory} does not exist")
    if not version_locations:
        return (directory / "versions",), recursive
    if separator is None:
        entries = _LEGACY_SPLIT.split(version_locations)
    elif separator in _SEPARATORS:
        entries = [x.strip() for x in version_locations.split(_SEPARATORS[separator]) if x]
    else:
        raise Undecided(f"{ini} has an unknown path_separator {separator!r}")
    return tuple(_location(entry) for entry in entries), recursive


def _location(value: str) -> Path:
    # alembic.util.coerce_resource_to_filename: a relative name with a colon is a
    # package resource, which only importlib.resources can locate.
    if not os.path.isabs(value) and ":" in value:
        raise Undecided(f"{value!r} is a package resource")
    return Path(value).absolute()


def _graph(
    mode: str,
    plugins: Sequence[Plugin],
    locations: tuple[Path, ...],
    recursive: bool,
    *,
    files_too: bool,
) -> preflight.Graph:
    versions_dir = locations[0]
    try:
        placed = placement.read_manifest(versions_dir)
        paths: list[tuple[Path, Plugin | None]] = [
            (path, None)
            for path in revisions.app_files(locations, recursive=recursive, placed=placed)
        ]
        plugin_paths = [(path, p) for p in plugins for path in revisions.plugin_files(p)]
        # The full path's own test (alembic_app.files_in_place): in the locations
        # mode, files an earlier link/copy run placed must go; else the plugin
        # files must be where link/copy would put them.
        wanted = [path for path, _ in plugin_paths] if mode in ("link", "copy") else []
        if files_too and not placement.in_place(versions_dir, wanted, mode):
            raise Undecided(f"plugin files to place or remove in {versions_dir}")
        files = [_read(path, plugin) for path, plugin in paths + plugin_paths]
        graph = preflight.check_files(files, mode=mode)
    except (MigrationError, OSError) as exc:
        raise Undecided(f"the revision files: {exc}") from None
    return graph


def _read(path: Path, plugin: Plugin | None) -> preflight.RevisionFile:
    try:
        values = revisions.literal_identifiers(path.read_bytes(), path)
    except (SyntaxError, ValueError) as exc:
        raise Undecided(f"{path} is not valid Python ({exc})") from None
    if values is None:
        raise Undecided(f"{path} can only be read by importing it")
    return revisions.revision_file(values, path, plugin)


# --- the database ----------------------------------------------------------------


Table = tuple[str | None, str]  # (schema, name) of a version table


def _current(
    url: str, tables: Sequence[Table], *, purpose: str, timeout: float
) -> list[tuple[str, ...]]:
    """The rows of each version table, sorted; () for one that does not exist."""
    try:
        parsed = dburl.sync_components(url)
    except UsageError as exc:
        raise Undecided(str(exc)) from None
    if parsed.drivername == "postgresql+psycopg":
        return _postgresql(url, parsed, tables, purpose=purpose, timeout=timeout)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return _sqlite(parsed, tables)
    raise Undecided(f"{parsed.drivername} databases are read through SQLAlchemy")


def _postgresql(
    url: str, parsed: dburl.Components, tables: Sequence[Table], *, purpose: str, timeout: float
) -> list[tuple[str, ...]]:
    import psycopg
    from psycopg import sql

    from portal_boot.migrations.lock import application_name

    extra: dict[str, str | int] = {"connect_timeout": max(2, math.ceil(min(timeout, 30.0)))}
    if "application_name" not in parsed.query:
        extra["application_name"] = application_name(purpose)
    conninfo = dburl.libpq_conninfo(url, **extra)
    if conninfo is None:
        raise Undecided("the URL needs SQLAlchemy's dialect to connect")
    found = []
    try:
        # No prepared statements: they would outlive this session on a pooled backend.
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            for schema, name in tables:
                where = sql.Identifier(*([schema] if schema else []), name)
                try:
                    rows = conn.execute(sql.SQL("SELECT version_num FROM {}").format(where)).fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                found.append(tuple(sorted(str(row[0]) for row in rows)))
    except psycopg.Error as exc:
        raise Undecided(f"the database: {_first_line(exc)}") from None
    return found


def _sqlite(parsed: dburl.Components, tables: Sequence[Table]) -> list[tuple[str, ...]]:
    import sqlite3

    if parsed.query:
        raise Undecided("SQLite URL parameters are the dialect's")
    if not parsed.database or parsed.database == ":memory:":
        raise Undecided("an in-memory database starts empty")
    path = os.path.abspath(parsed.database)  # as SQLAlchemy's pysqlite dialect does
    if not os.path.isfile(path):
        raise Undecided(f"no database file {path} yet")
    if any(schema for schema, _ in tables):
        raise Undecided("a version table in another SQLite schema")
    found = []
    try:
        # Read-only: this look must not create the file or take a write lock.
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
        try:
            for _, name in tables:
                quoted = '"' + name.replace('"', '""') + '"'
                try:
                    rows = conn.execute(f"SELECT version_num FROM {quoted}").fetchall()
                except sqlite3.OperationalError as exc:
                    if not str(exc).startswith("no such table"):
                        raise
                    rows = []
                found.append(tuple(sorted(str(row[0]) for row in rows)))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Undecided(f"the database: {_first_line(exc)}") from None
    return found


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return dburl.redact(f"{type(exc).__name__}: {lines[0] if lines else ''}")
