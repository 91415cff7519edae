"""Settings: flag > environment > default, the guides' names, *_FILE, and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal_boot.errors import UsageError
from portal_boot.settings import OPTIONS, Settings, resolve


def test_defaults() -> None:
    s = resolve({}, {})
    assert s.database_url is None
    assert (s.db_timeout, s.signatures, s.migrations_mode, s.app, s.port) == (
        60.0, "require", "locations", "app.main:app", 8000
    )
    assert s.entry_point_group == "data_product_portal.plugins"
    assert all(source == "default" for source in s.sources.values())


def test_flag_beats_environment_beats_default() -> None:
    env = {"PORTAL_BOOT_DB_TIMEOUT": "5"}
    assert resolve({}, env).db_timeout == 5.0
    s = resolve({"db_timeout": "7"}, env)
    assert s.db_timeout == 7.0
    assert s.sources["db_timeout"] == "--db-timeout"
    assert resolve({}, env).sources["db_timeout"] == "PORTAL_BOOT_DB_TIMEOUT"


def test_database_url_precedence() -> None:
    env = {
        "DATABASE_URL_ASYNC": "postgresql+asyncpg://a/async",
        "DATABASE_URL": "postgresql://a/plain",
        "PORTAL_BOOT_DATABASE_URL": "postgresql://a/own",
    }
    assert resolve({}, env).database_url == "postgresql://a/own"
    del env["PORTAL_BOOT_DATABASE_URL"]
    assert resolve({}, env).database_url == "postgresql://a/plain"
    del env["DATABASE_URL"]
    assert resolve({}, env).database_url == "postgresql+asyncpg://a/async"


def test_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:pw@db/x\n")
    s = resolve({}, {"DATABASE_URL_FILE": str(secret)})
    assert s.database_url == "postgresql://u:pw@db/x"
    assert s.sources["database_url"] == "DATABASE_URL_FILE"


def test_file_variant_unreadable_and_both_set(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="DATABASE_URL_FILE"):
        resolve({}, {"DATABASE_URL_FILE": str(tmp_path / "missing")})
    (tmp_path / "u").write_text("x")
    with pytest.raises(UsageError, match="both DATABASE_URL and DATABASE_URL_FILE"):
        resolve({}, {"DATABASE_URL": "x", "DATABASE_URL_FILE": str(tmp_path / "u")})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert resolve({}, {"AUTO_RUN_PLUGIN_MIGRATIONS": raw}).auto_migrate is expected


def test_lists() -> None:
    env = {"ENABLED_PLUGINS": " a.b.C , d ,,e", "PORTAL_BOOT_REQUIREMENTS": "x==1,y==2"}
    s = resolve({}, env)
    assert s.enabled_plugins == ("a.b.C", "d", "e")
    assert s.requirements == ("x==1", "y==2")
    assert resolve({}, {"ENABLED_PLUGINS": ""}).enabled_plugins == ()
    assert resolve({"requirements": ("a==1", "b==2")}, env).requirements == ("a==1", "b==2")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORTAL_BOOT_DB_TIMEOUT": "soon"}, "PORTAL_BOOT_DB_TIMEOUT"),
        ({"PORTAL_BOOT_DB_TIMEOUT": "-1"}, "PORTAL_BOOT_DB_TIMEOUT"),
        ({"PORTAL_BOOT_DB_TIMEOUT": ""}, "PORTAL_BOOT_DB_TIMEOUT"),
        ({"PORTAL_BOOT_PORT": "99999"}, "PORTAL_BOOT_PORT"),
        ({"PORTAL_BOOT_SIGNATURES": "maybe"}, "PORTAL_BOOT_SIGNATURES"),
        ({"PORTAL_BOOT_MIGRATIONS_MODE": "symlink"}, "PORTAL_BOOT_MIGRATIONS_MODE"),
        ({"AUTO_RUN_PLUGIN_MIGRATIONS": "perhaps"}, "AUTO_RUN_PLUGIN_MIGRATIONS"),
        ({"PORTAL_BOOT_TRUSTED_FINGERPRINTS": "ABCD"}, "PORTAL_BOOT_TRUSTED_FINGERPRINTS"),
        ({"PORTAL_BOOT_LOG_FORMAT": "xml"}, "PORTAL_BOOT_LOG_FORMAT"),
        ({"PORTAL_BOOT_WHEEL_DIR": "/w", "PORTAL_BOOT_REQUIREMENTS": "a==1"}, "PORTAL_BOOT_REQUIREMENTS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(UsageError, match=names):
        resolve({}, env)


def test_every_option_has_a_settings_field_and_portal_boot_variable() -> None:
    fields = set(Settings.__dataclass_fields__)
    for option in OPTIONS:
        assert option.name in fields
        assert option.envvars[0].startswith("PORTAL_BOOT_")
        assert option.flag.startswith("--")


def test_fingerprints_are_normalised() -> None:
    fpr = "abcd " * 10
    s = resolve({}, {"PORTAL_BOOT_TRUSTED_FINGERPRINTS": fpr.strip()})
    assert s.trusted_fingerprints == ("ABCD" * 10,)


def test_requirements_keep_extras_whole() -> None:
    env = {"PORTAL_BOOT_REQUIREMENTS": "a[x,y]==1, b==2"}
    assert resolve({}, env).requirements == ("a[x,y]==1", "b==2")
    assert resolve({"requirements": ("pkg[a,b]==1.0", "c==3")}, {}).requirements == ("pkg[a,b]==1.0", "c==3")


def test_unknown_home_and_nul_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="PORTAL_BOOT_WHEEL_DIR"):
        resolve({}, {"PORTAL_BOOT_WHEEL_DIR": "~no-such-user-here/wheels"})
    with pytest.raises(UsageError, match="--target"):
        resolve({"target": "/a\0b"}, {})
