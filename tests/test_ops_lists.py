"""Issue 12.2: every list variable takes a JSON list of strings as well as a comma list
(the application parses ENABLED_PLUGINS as JSON), through the CLI on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from test_migrations_support import (
    migrate_args,
    tables,
)

CORE = {"portal_settings", "data_products", "alembic_version"}


@pytest.mark.parametrize(
    "value",
    ['["s3_plugin"]', '[ "s3_plugin.schema.S3PluginConfiguration" ]', "s3_plugin", " s3_plugin , "],
)
def test_enabled_plugins_as_json_or_commas(
    value: str, app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = portal_boot(
        *migrate_args(app, pg_url, target=both), env={**clean_env, "ENABLED_PLUGINS": value}
    )
    assert result.returncode == 0, result.stderr
    assert tables(pg_url) == CORE | {"s3_buckets", "s3_objects"}


def test_json_list_of_two_and_the_empty_json_list(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    two = portal_boot(
        *migrate_args(app, pg_url, target=both),
        env={**clean_env, "ENABLED_PLUGINS": '["s3_plugin", "snowflake_plugin"]'},
    )
    assert two.returncode == 0, two.stderr
    assert "snowflake_warehouses" in tables(pg_url)
    # [] is an empty list: every installed plugin, as an empty comma list.
    again = portal_boot(
        "status", "--json", "--alembic-config", str(app), "--database-url", pg_url,
        "--target", str(both), env={**clean_env, "ENABLED_PLUGINS": "[]"},
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ENABLED_PLUGINS", '["s3_plugin",'),
        ("PORTAL_BOOT_ENABLED_PLUGINS", "[s3_plugin]"),
        ("PORTAL_BOOT_REQUIREMENTS", '["a==1", 2]'),
        ("PORTAL_BOOT_TRUSTED_FINGERPRINTS", '{"a": 1}x'),
    ],
)
def test_malformed_json_list_is_a_usage_error_naming_the_variable(
    variable: str, value: str, app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = portal_boot(
        *migrate_args(app, pg_url, target=both), env={**clean_env, variable: value}
    )
    if value.startswith("["):
        assert_one_line_failure(result, 2, variable, "JSON")
    else:  # not JSON at all: a comma list whose item is no fingerprint
        assert_one_line_failure(result, 2, variable)
    assert tables(pg_url) == set()

