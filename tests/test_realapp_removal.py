"""Removing a plugin on the real portal's patterns (tests/fixtures/realapp): a plugin
chained onto the core head with a branch label, whose label Alembic spreads down the
core chain. ``migrate --remove PLUGIN`` reverts exactly the plugin's revisions;
``--to LABEL@base`` refuses to go below it; a plugin others depend on is kept.
Real PostgreSQL, portal-boot as a child process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from realapp import (
    CORE_HEAD,
    CORE_TABLES,
    REALAPP,
    copy_realapp,
    index_state,
    install,
    postgres_env,
)
from test_migrations_support import current, migrate_args, tables

REPO = Path(__file__).resolve().parent.parent
MY = {"my_plugin_items"}
OTHER = {"other_plugin_links"}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return copy_realapp(tmp_path / "realapp")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "target"


def migrate(app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra: str):
    # The application's env.py builds its URL from POSTGRES_*: they name the same
    # database as --database-url.
    return portal_boot(
        *migrate_args(app, url, *more, target=target),
        env={**env, **postgres_env(url), **extra},
    )


def _snapshot(url: str) -> tuple[set[str], set[str], str]:
    return tables(url), current(url), index_state(url)


def test_to_label_at_base_refuses_to_go_below_the_plugin(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install(target, "my_plugin")
    up = migrate(app, pg_url, target, clean_env)
    assert up.returncode == 0, up.stderr
    assert tables(pg_url) == CORE_TABLES | MY
    before = _snapshot(pg_url)
    assert before[1:] == ({"mp02"}, "valid")
    # Alembic's my_plugin@base lies below c05: it would drop the core's roles table
    # and index. Refused before any change, naming the first core revision and the
    # safe command.
    result = migrate(app, pg_url, target, clean_env, "--to", "my_plugin@base")
    assert_one_line_failure(
        result, 6, f"first {CORE_HEAD} (the application)", "nothing was changed",
        "portal-boot migrate --remove my_plugin",
    )  # fmt: skip
    assert _snapshot(pg_url) == before
    assert "Running downgrade" not in result.stderr


@pytest.mark.parametrize(
    "spelling", ["MyPluginConfiguration", "realapp-my-plugin", "my_plugin"],
    ids=["entry-point", "distribution", "branch-label"],
)  # fmt: skip
def test_remove_reverts_exactly_the_plugins_revisions(
    spelling: str, app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    plugin = install(target, "my_plugin")
    assert migrate(app, pg_url, target, clean_env).returncode == 0
    result = migrate(app, pg_url, target, clean_env, "--remove", spelling)
    assert result.returncode == 0, result.stderr
    # Children first, and nothing of the core: every core table, the core index,
    # the core head.
    assert result.stderr.index("reverted mp02") < result.stderr.index("reverted mp01")
    assert re.findall(r"Running downgrade (\S+) -> ", result.stderr) == ["mp02", "mp01"]
    assert tables(pg_url) == CORE_TABLES
    assert current(pg_url) == {CORE_HEAD}
    assert index_state(pg_url) == "valid"
    # Again: nothing left to remove.
    again = migrate(app, pg_url, target, clean_env, "--remove", spelling)
    assert again.returncode == 0, again.stderr
    assert "has no revision applied: nothing to remove" in again.stderr
    # The procedure's last step: uninstall; the next boot is clean.
    plugin.remove()
    after = migrate(app, pg_url, target, clean_env)
    assert after.returncode == 0, after.stderr
    assert f"nothing to do, database at heads {CORE_HEAD}" in after.stderr


def test_remove_refuses_while_another_plugin_depends_on_it(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install(target, "my_plugin")
    install(target, "other_plugin")  # depends_on = "mp01"
    assert migrate(app, pg_url, target, clean_env).returncode == 0
    before = _snapshot(pg_url)
    assert before[0] == CORE_TABLES | MY | OTHER
    refused = migrate(app, pg_url, target, clean_env, "--remove", "my_plugin")
    assert_one_line_failure(
        refused, 6, "nothing was changed", "plugin OtherPluginConfiguration: op01",
        "portal-boot migrate --remove OtherPluginConfiguration",
    )  # fmt: skip
    assert _snapshot(pg_url) == before
    # --to my_plugin@base would take op01 and core revisions with it: refused too.
    spread = migrate(app, pg_url, target, clean_env, "--to", "my_plugin@base")
    assert_one_line_failure(spread, 6, "portal-boot migrate --remove my_plugin")
    assert _snapshot(pg_url) == before
    # In the order the message gives: the dependent plugin, then the plugin.
    first = migrate(app, pg_url, target, clean_env, "--remove", "other_plugin")
    assert first.returncode == 0, first.stderr
    assert tables(pg_url) == CORE_TABLES | MY
    second = migrate(app, pg_url, target, clean_env, "--remove", "my_plugin")
    assert second.returncode == 0, second.stderr
    assert tables(pg_url) == CORE_TABLES
    assert current(pg_url) == {CORE_HEAD}


def test_remove_names_what_it_cannot_remove(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install(target, "my_plugin")
    install(target, "other_plugin")
    assert migrate(app, pg_url, target, clean_env).returncode == 0
    before = _snapshot(pg_url)
    unknown = migrate(app, pg_url, target, clean_env, "--remove", "nope")
    assert_one_line_failure(unknown, 2, "--remove nope", "MyPluginConfiguration")
    combined = migrate(app, pg_url, target, clean_env, "--remove", "my_plugin", "--to", "c04")
    assert_one_line_failure(combined, 2, "--remove cannot be combined")
    assert _snapshot(pg_url) == before


def test_readme_removal_procedure_is_the_safe_command() -> None:
    """The README's removal steps (and the deployment guide's) name --remove, never
    a --to LABEL@base, which can reach below the plugin."""
    for doc in (REPO / "README.md", REPO / "docs" / "deployment.md"):
        text = doc.read_text()
        assert "migrate --remove" in text, doc
        assert not re.search(r"migrate --to \S*@base", text), doc
    assert (REALAPP / "plugins" / "my_plugin").is_dir()


def test_sql_for_label_at_base_refuses_too(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    """The SQL --sql prints is there to be applied by hand: the same refusal."""
    install(target, "my_plugin")
    result = migrate(app, pg_url, target, clean_env, "--sql", "--to", "my_plugin@base")
    assert_one_line_failure(result, 6, "portal-boot migrate --remove my_plugin")
    assert "DROP TABLE roles" not in result.stdout
    assert tables(pg_url) == set()
