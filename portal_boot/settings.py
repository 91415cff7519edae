"""One frozen settings object, built once from flags > environment > defaults.

:func:`resolve` is a pure function of the parsed flags and an environment mapping.
It returns the settings and, for every option, where its value came from, so the
boot can log "db_timeout=5 (from PORTAL_BOOT_DB_TIMEOUT)". After it, no module
reads ``os.environ``: children get ``settings.environ`` (a copy) explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from portal_boot.errors import UsageError
from portal_boot.values import (
    as_app,
    as_bool,
    as_choice,
    as_fingerprints,
    as_list,
    as_log_level,
    as_path,
    as_port,
    as_requirements,
    as_seconds,
    as_seconds_or_off,
    as_text,
)

DEFAULT_ENTRY_POINT_GROUP = "data_product_portal.plugins"
DEFAULT_TARGET = "/var/lib/portal-boot/plugins"


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    wheel_dir: Path | None = None
    requirements: tuple[str, ...] = ()
    target: Path = Path(DEFAULT_TARGET)
    trusted_keys: Path | None = None
    trusted_fingerprints: tuple[str, ...] = ()
    signatures: str = "require"
    alembic_config: Path = Path("alembic.ini")
    migrations_mode: str = "locations"
    entry_point_group: str = DEFAULT_ENTRY_POINT_GROUP
    db_timeout: float = 60.0
    lock_timeout: float = 300.0
    # The upgrade transaction's lock_timeout (0: off), and a URL only migrate uses.
    ddl_lock_timeout: float = 5.0
    migration_database_url: str | None = None
    app: str = "app.main:app"
    host: str = "0.0.0.0"
    port: int = 8000
    log_format: str = "text"
    log_level: str = "info"
    enabled_plugins: tuple[str, ...] = ()
    auto_migrate: bool = True
    no_plugins: bool = False  # install an empty generation (the explicit "no plugins")
    # A frozen copy of the environment the process started with; the only
    # environment children (pip, gpg, uvicorn) are ever given, after filtering.
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def require_database_url(self) -> str:
        if not self.database_url:
            raise UsageError(
                "no database URL: pass --database-url or set PORTAL_BOOT_DATABASE_URL "
                "(or DATABASE_URL / DATABASE_URL_FILE, or POSTGRES_SERVER with POSTGRES_USER, "
                "POSTGRES_PASSWORD, POSTGRES_PORT, POSTGRES_DB)"
            )
        return self.database_url


@dataclasses.dataclass(frozen=True)
class Option:
    name: str  # the Settings field
    flag: str
    envvars: tuple[str, ...]  # in precedence order
    parse: Callable[[str, str], Any]


OPTIONS: tuple[Option, ...] = (
    Option(
        "database_url",
        "--database-url",
        ("PORTAL_BOOT_DATABASE_URL", "DATABASE_URL", "DATABASE_URL_ASYNC"),
        as_text,
    ),
    Option("wheel_dir", "--wheel-dir", ("PORTAL_BOOT_WHEEL_DIR",), as_path),
    Option("requirements", "--requirement", ("PORTAL_BOOT_REQUIREMENTS",), as_requirements),
    Option("target", "--target", ("PORTAL_BOOT_TARGET",), as_path),
    Option("trusted_keys", "--trusted-keys", ("PORTAL_BOOT_TRUSTED_KEYS",), as_path),
    Option(
        "trusted_fingerprints",
        "--trusted-fingerprint",
        ("PORTAL_BOOT_TRUSTED_FINGERPRINTS",),
        as_fingerprints,
    ),
    Option("signatures", "--signatures", ("PORTAL_BOOT_SIGNATURES",), as_choice("require", "off")),
    Option("alembic_config", "--alembic-config", ("PORTAL_BOOT_ALEMBIC_CONFIG",), as_path),
    Option(
        "migrations_mode",
        "--migrations-mode",
        ("PORTAL_BOOT_MIGRATIONS_MODE",),
        as_choice("locations", "link", "copy"),
    ),
    Option(
        "entry_point_group", "--entry-point-group", ("PORTAL_BOOT_ENTRY_POINT_GROUP",), as_text
    ),
    Option("db_timeout", "--db-timeout", ("PORTAL_BOOT_DB_TIMEOUT",), as_seconds),
    Option("lock_timeout", "--lock-timeout", ("PORTAL_BOOT_LOCK_TIMEOUT",), as_seconds),
    Option(
        "ddl_lock_timeout",
        "--ddl-lock-timeout",
        ("PORTAL_BOOT_DDL_LOCK_TIMEOUT",),
        as_seconds_or_off,
    ),
    Option(
        "migration_database_url",
        "--migration-database-url",
        ("PORTAL_BOOT_MIGRATION_DATABASE_URL",),
        as_text,
    ),
    Option("app", "--app", ("PORTAL_BOOT_APP",), as_app),
    Option("host", "--host", ("PORTAL_BOOT_HOST",), as_text),
    Option("port", "--port", ("PORTAL_BOOT_PORT",), as_port),
    Option("log_format", "--log-format", ("PORTAL_BOOT_LOG_FORMAT",), as_choice("text", "json")),
    Option("log_level", "--log-level", ("PORTAL_BOOT_LOG_LEVEL",), as_log_level),
    Option(
        "enabled_plugins",
        "--enabled-plugins",
        ("PORTAL_BOOT_ENABLED_PLUGINS", "ENABLED_PLUGINS"),
        as_list,
    ),
    Option(
        "auto_migrate",
        "--auto-migrate",
        ("PORTAL_BOOT_AUTO_MIGRATE", "AUTO_RUN_PLUGIN_MIGRATIONS"),
        as_bool,
    ),
)

OPTIONS += (Option("no_plugins", "--no-plugins", ("PORTAL_BOOT_NO_PLUGINS",), as_bool),)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def _read_env(option: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The raw value and its source from the first variable (or its ``_FILE``) that is set."""
    for var in option.envvars:
        file_var = f"{var}_FILE"
        direct, via_file = environ.get(var), environ.get(file_var)
        if direct is not None and via_file is not None:
            raise UsageError(f"both {var} and {file_var} are set: unset one of them")
        if direct is not None:
            return direct, var
        if via_file is not None:
            path = Path(via_file)
            try:
                content = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(
                    f"{file_var}={via_file}: cannot read the file ({exc.strerror or exc})"
                ) from None
            # Secrets files usually end with a newline; a value never does.
            return content.strip(), file_var
    return None


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Build the settings: a flag (not ``None``) wins over the environment, which wins
    over the default.

    ``flags`` maps Settings field names to the values click parsed (strings, or tuples
    for repeatable flags). Raises :class:`UsageError` naming the flag and variable.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        flag_value = flags.get(option.name)
        if isinstance(flag_value, tuple) and not flag_value:
            flag_value = None
        if flag_value is not None:
            where = option.flag
            if isinstance(flag_value, tuple):
                # A repeatable flag: each occurrence is one item, parsed on its own.
                values[option.name] = tuple(
                    item for value in flag_value for item in option.parse(value, where)
                )
            elif isinstance(flag_value, str):
                values[option.name] = option.parse(flag_value, where)
            else:
                values[option.name] = flag_value
            sources[option.name] = where
            continue
        found = _read_env(option, environ)
        if found is not None:
            raw, var = found
            values[option.name] = option.parse(raw, var)
            sources[option.name] = var
        else:
            sources[option.name] = "default"
    parts = _postgres_components(environ)
    if parts:
        if values.get("database_url") is None:
            built = _url_from_components(parts)
            if built is not None:
                values["database_url"] = built
                sources["database_url"] = "POSTGRES_* (" + ", ".join(v[1] for v in parts.values()) + ")"
        else:
            _check_same_database(values["database_url"], sources["database_url"], parts)
    settings = Settings(
        **values,
        environ=MappingProxyType(dict(environ)),
        sources=MappingProxyType(sources),
    )
    _check_consistency(settings)
    return settings


# --- the database URL from POSTGRES_* components ------------------------------------
#
# FastAPI's full-stack template (and the applications made from it) configure the
# database as components; their env.py builds its URL from them. The lowest
# precedence source of the database URL, and checked against a URL given as well.

POSTGRES_VARS = (
    "POSTGRES_SERVER", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
)  # fmt: skip


def _postgres_components(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The POSTGRES_* variables set (directly or as ``_FILE``): name -> (value, source)."""
    found = {}
    for var in POSTGRES_VARS:
        raw = _read_env(Option(var, "", (var,), as_text), environ)
        if raw is not None:
            found[var] = (as_text(raw[0], raw[1]), raw[1])
    return found


def postgres_secrets(environ: Mapping[str, str]) -> list[str]:
    """POSTGRES_PASSWORD (or the content of its _FILE), to be masked in every output."""
    try:
        found = _postgres_components(environ).get("POSTGRES_PASSWORD")
    except UsageError:
        return []
    return [found[0]] if found else []


def _url_from_components(parts: dict[str, tuple[str, str]]) -> str | None:
    from portal_boot.dburl import from_components

    if "POSTGRES_SERVER" not in parts:
        return None
    if "POSTGRES_PASSWORD" in parts and "POSTGRES_USER" not in parts:
        raise UsageError(
            f"{parts['POSTGRES_PASSWORD'][1]} is set without POSTGRES_USER: set the user too"
        )
    port = parts.get("POSTGRES_PORT")
    return from_components(
        username=parts.get("POSTGRES_USER", (None,))[0],
        password=parts.get("POSTGRES_PASSWORD", (None,))[0],
        host=parts["POSTGRES_SERVER"][0],
        port=as_port(*port) if port else None,
        database=parts.get("POSTGRES_DB", (None,))[0],
    )


def _check_same_database(url: str, where: str, parts: dict[str, tuple[str, str]]) -> None:
    """A URL and POSTGRES_* components that name different databases: a usage error
    naming both (the application's env.py may follow the components)."""
    from portal_boot.dburl import sync_components

    named = {k: v for k, v in parts.items() if k in ("POSTGRES_SERVER", "POSTGRES_PORT", "POSTGRES_DB")}
    if not named:
        return
    try:
        given = sync_components(url)
    except UsageError:
        return  # reported as a malformed URL where it is used
    pairs = []
    if given.backend != "postgresql":
        pairs.append((f"a {given.backend} database", ", ".join(v[1] for v in named.values())))
    else:
        port = str(given.port or 5432)
        checks = (
            ("POSTGRES_SERVER", (given.host or "").lower(), lambda v: v.lower(), f"host {given.host}"),
            ("POSTGRES_PORT", port, lambda v: v.strip(), f"port {port}"),
            ("POSTGRES_DB", given.database or "", lambda v: v, f"database {given.database}"),
        )
        for var, have, norm, said in checks:
            if var in named and norm(named[var][0]) != have:
                pairs.append((said, f"{named[var][1]}={named[var][0]}"))
    if pairs:
        said = "; ".join(f"{where} names {a} but {b}" for a, b in pairs)
        raise UsageError(
            f"the database URL and the POSTGRES_* components name different databases "
            f"({said}): the application's env.py may migrate the one POSTGRES_* names: make "
            f"them agree, or unset one of {where} and "
            f"{', '.join(v[1] for v in named.values())}"
        )


def _check_consistency(settings: Settings) -> None:
    if settings.wheel_dir is not None and settings.requirements:
        raise UsageError(
            "both a wheel folder (--wheel-dir / PORTAL_BOOT_WHEEL_DIR) and requirements "
            "(--requirement / PORTAL_BOOT_REQUIREMENTS) are set: an air-gapped folder and "
            "an index are exclusive, unset one of them"
        )
    if settings.no_plugins and (settings.wheel_dir is not None or settings.requirements):
        raise UsageError(
            "--no-plugins / PORTAL_BOOT_NO_PLUGINS installs an empty generation, but a wheel "
            "folder (--wheel-dir / PORTAL_BOOT_WHEEL_DIR) or requirements "
            "(--requirement / PORTAL_BOOT_REQUIREMENTS) are set too: unset one of them"
        )
    if settings.trusted_fingerprints and settings.signatures == "off":
        raise UsageError(
            "--trusted-fingerprint / PORTAL_BOOT_TRUSTED_FINGERPRINTS is set but signatures "
            "are off (--signatures / PORTAL_BOOT_SIGNATURES): remove one of them"
        )
