"""Plugin migrations on a real PostgreSQL, through the CLI: both example plugins to
the heads, ENABLED_PLUGINS, every pre-flight error, a removed plugin, --sql,
downgrading one plugin's branch, and the three modes' bookkeeping."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from test_migrations_support import (
    GROUP,
    create_table,
    current,
    install_example_plugin,
    install_plugin,
    migrate_args,
    query,
    revision,
    s3_plugin,
    settings,
    snowflake_plugin,
    tables,
    tree_digest,
)

from portal_boot import migrations
from portal_boot.errors import DatabaseError, MigrationError
from portal_boot.migrations.placement import MANIFEST_NAME
from portal_boot.plugins import discover

CORE = {"portal_settings", "data_products", "alembic_version"}
S3 = {"s3_buckets", "s3_objects"}
SNOWFLAKE = {"snowflake_warehouses"}


@pytest.fixture
def versions(app: Path) -> Path:
    return app.parent / "app/database/alembic/versions"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    folder.mkdir()
    return folder


@pytest.fixture
def both(target: Path) -> Path:
    s3_plugin(target)
    snowflake_plugin(target)
    return target


def migrate(app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra_env: str):
    return portal_boot(*migrate_args(app, url, *more, target=target), env={**env, **extra_env})


def test_both_plugins_to_the_heads_then_a_no_op(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    first = migrate(app, pg_url, both, clean_env)
    assert first.returncode == 0, first.stderr
    assert tables(pg_url) == CORE | S3 | SNOWFLAKE
    assert current(pg_url) == {"s3_0002", "snowflake_0001"}
    assert (
        "applied s3_0001 (plugin s3_plugin from data-product-portal-s3-plugin 1.0.0)"
        in first.stderr
    )
    second = migrate(app, pg_url, both, clean_env)
    assert second.returncode == 0, second.stderr
    assert "nothing to do, database at heads s3_0002, snowflake_0001" in second.stderr
    assert "Running upgrade" not in second.stderr


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_the_repository_example_plugins_up_and_down(
    database: str, app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    url = pg_url if database == "postgresql" else f"sqlite:///{app.parent / 'portal.db'}"
    install_example_plugin(target, "s3_plugin")
    install_example_plugin(target, "snowflake_plugin")
    install_example_plugin(target, "databricks_plugin")  # its own Alembic environment
    up = migrate(app, url, target, clean_env)
    assert up.returncode == 0, up.stderr
    assert current(url) == {"s3_0002", "snowflake_0001"}
    assert {"s3_plugin_buckets", "snowflake_plugin_warehouses"} <= tables(url)
    assert "databricks_plugin_workspaces" in tables(url)
    own = "SELECT version_num FROM alembic_version_databricks_plugin"
    assert query(url, own) == ["databricks_0001"]
    # The plugin-removal procedure's first step, then the plugin is gone.
    down = migrate(app, url, target, clean_env, "--to", "s3_plugin@base")
    assert down.returncode == 0, down.stderr
    assert current(url) == {"core_0002", "snowflake_0001"}
    assert "s3_plugin_buckets" not in tables(url)
    assert query(url, own) == ["databricks_0001"]
    down = migrate(app, url, target, clean_env, "--to", "databricks_plugin@base")
    assert down.returncode == 0, down.stderr
    assert "databricks_plugin_workspaces" not in tables(url) and query(url, own) == []
    rest = migrate(app, url, target, clean_env, ENABLED_PLUGINS="SnowflakeTechnicalAssetConfiguration")
    assert rest.returncode == 0, rest.stderr
    assert "nothing to do, database at heads core_0002, snowflake_0001" in rest.stderr


@pytest.mark.parametrize("spelling", ["s3_plugin", "s3_plugin.schema.S3PluginConfiguration"])
def test_enabled_plugins_by_name_and_by_class_path(
    spelling: str, app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = migrate(app, pg_url, both, clean_env, ENABLED_PLUGINS=spelling)
    assert result.returncode == 0, result.stderr
    assert tables(pg_url) == CORE | S3
    assert "snowflake" not in result.stderr


def test_sql_with_plugins_prints_everything_and_applies_nothing(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = migrate(app, pg_url, both, clean_env, "--sql")
    assert result.returncode == 0, result.stderr
    for table in CORE - {"alembic_version"} | S3 | SNOWFLAKE:
        assert f"CREATE TABLE {table}" in result.stdout
    assert tables(pg_url) == set()
    down = migrate(app, pg_url, both, clean_env, "--sql", "--to", "s3_plugin@base")
    assert down.returncode == 0, down.stderr
    assert "DROP TABLE s3_objects" in down.stdout and "DROP TABLE data_products" not in down.stdout


def test_downgrading_one_plugin_branch_then_removing_the_plugin(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    s3 = s3_plugin(target)
    snowflake_plugin(target)
    assert migrate(app, pg_url, target, clean_env).returncode == 0
    down = migrate(app, pg_url, target, clean_env, "--to", "s3_plugin@base")
    assert down.returncode == 0, down.stderr
    assert "reverted s3_0002" in down.stderr and "reverted s3_0001" in down.stderr
    assert tables(pg_url) == CORE | SNOWFLAKE
    assert current(pg_url) == {"core_0002", "snowflake_0001"}
    # The documented procedure's last step: remove the plugin; the next boot is clean.
    s3.remove()
    after = migrate(app, pg_url, target, clean_env)
    assert after.returncode == 0, after.stderr
    assert "nothing to do, database at heads core_0002, snowflake_0001" in after.stderr


def test_a_removed_plugin_is_named_with_the_fix(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    s3 = s3_plugin(target)
    assert migrate(app, pg_url, target, clean_env).returncode == 0
    s3.remove()
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "the database is at revision s3_0002", "a plugin was removed",
        "portal-boot migrate --remove <the plugin>",
    )  # fmt: skip
    assert "Can't locate revision" not in result.stderr


def test_a_disabled_plugin_with_tables_is_named_with_the_command(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    assert migrate(app, pg_url, both, clean_env).returncode == 0
    result = migrate(app, pg_url, both, clean_env, ENABLED_PLUGINS="snowflake_plugin")
    assert_one_line_failure(
        result, 6, "revision s3_0002 of plugin s3_plugin", "installed but not enabled",
        "portal-boot migrate --remove s3_plugin",
    )  # fmt: skip


def test_duplicate_revision_from_a_hand_made_copy(
    app: Path, both: Path, versions: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    # What the deployment guides' `cp */migration/*.py versions/` leaves behind.
    copy = versions / "s3_0001_buckets.py"
    copy.write_bytes((both / "s3_plugin/migration/s3_0001_buckets.py").read_bytes())
    result = migrate(app, pg_url, both, clean_env)
    assert_one_line_failure(
        result, 6, "revision s3_0001 is defined twice", "plugin s3_plugin", "the application",
        f"delete {copy}", "adds the plugin's migration folder itself",
    )  # fmt: skip
    assert tables(pg_url) == set()


def test_duplicate_revision_in_two_plugins(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install_plugin(both, "rogue_plugin", {"r.py": revision("s3_0002", "core_0002")})
    result = migrate(app, pg_url, both, clean_env)
    assert_one_line_failure(
        result, 6, "revision s3_0002 is defined twice", "plugins rogue_plugin and s3_plugin",
        "ENABLED_PLUGINS",
    )  # fmt: skip
    assert tables(pg_url) == set()


def test_down_revision_that_does_not_resolve(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install_plugin(target, "future_plugin", {"f.py": revision("future_0001", "core_0009")})
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "revision future_0001 (plugin future_plugin", "down_revision 'core_0009'",
        "install the plugin version made for this one",
    )  # fmt: skip
    assert "KeyError" not in result.stderr


def test_depends_on_a_plugin_that_is_not_enabled(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    install_plugin(
        both, "reports_plugin",
        {"r.py": revision("reports_0001", None, labels=["reports"], depends_on="snowflake_plugin")},
    )  # fmt: skip
    result = migrate(app, pg_url, both, clean_env, ENABLED_PLUGINS="reports_plugin,s3_plugin")
    assert_one_line_failure(
        result, 6, "depends_on 'snowflake_plugin'", "belongs to plugin snowflake_plugin",
        "add snowflake_plugin to ENABLED_PLUGINS",
    )  # fmt: skip
    # Enabled, the branch label resolves and the order follows the dependency.
    ok = migrate(app, pg_url, both, clean_env)
    assert ok.returncode == 0, ok.stderr
    assert current(pg_url) == {"reports_0001", "s3_0002"}


def test_locations_mode_writes_nothing(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    app_before, target_before = tree_digest(app.parent), tree_digest(both)
    result = migrate(app, pg_url, both, clean_env)
    assert result.returncode == 0, result.stderr
    assert tables(pg_url) == CORE | S3 | SNOWFLAKE
    assert tree_digest(app.parent) == app_before
    assert tree_digest(both) == target_before


def _manifest(versions: Path) -> dict:
    return json.loads((versions / MANIFEST_NAME).read_text())["files"]


def test_copy_mode_bookkeeping(
    app: Path, both: Path, versions: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    mine = versions / "notes.py.txt"
    mine.write_text("an operator's file portal-boot must leave alone\n")
    first = migrate(app, pg_url, both, clean_env, "--migrations-mode", "copy")
    assert first.returncode == 0, first.stderr
    placed = {"s3_0001_buckets.py", "s3_0002_objects.py", "snowflake_0001_warehouses.py"}
    assert set(_manifest(versions)) == placed
    for name in placed:
        path = versions / name
        assert path.is_file() and not path.is_symlink()
    assert tables(pg_url) == CORE | S3 | SNOWFLAKE
    assert (versions / "s3_0001_buckets.py").read_bytes() == (
        both / "s3_plugin/migration/s3_0001_buckets.py"
    ).read_bytes()

    # Downgrade s3 before disabling it; the next run removes portal-boot's own
    # stale copies, and only those.
    down = migrate(
        app, pg_url, both, clean_env, "--migrations-mode", "copy", "--to", "s3_plugin@base"
    )
    assert down.returncode == 0, down.stderr
    result = migrate(
        app,
        pg_url,
        both,
        clean_env,
        "--migrations-mode",
        "copy",
        ENABLED_PLUGINS="snowflake_plugin",
    )
    assert result.returncode == 0, result.stderr
    assert set(_manifest(versions)) == {"snowflake_0001_warehouses.py"}
    assert not (versions / "s3_0001_buckets.py").exists()
    assert mine.read_text().startswith("an operator's file")
    assert {p.name for p in versions.glob("core_*.py")} == {
        "core_0001_portal_settings.py", "core_0002_data_products.py",
    }  # fmt: skip


def test_copy_mode_never_overwrites_a_file_it_did_not_write(
    app: Path, both: Path, versions: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    theirs = versions / "s3_0002_objects.py"
    text = revision("core_0003", "core_0002")  # same name, another revision
    theirs.write_text(text)
    result = migrate(app, pg_url, both, clean_env, "--migrations-mode", "copy")
    assert_one_line_failure(
        result, 6, str(theirs), "was not written by portal-boot", "rename or remove it"
    )
    assert theirs.read_text() == text
    assert not (versions / MANIFEST_NAME).exists()
    assert tables(pg_url) == set()


def test_copy_mode_leaves_a_copy_changed_by_hand(
    app: Path, both: Path, versions: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    assert (
        migrate(app, pg_url, both, clean_env, "--migrations-mode", "copy", "--sql").returncode == 0
    )
    assert not (versions / MANIFEST_NAME).exists()  # --sql writes nothing either
    # Core only, so that a plugin can be disabled afterwards without a downgrade.
    placed = migrate(app, pg_url, both, clean_env, "--migrations-mode", "copy", "--to", "core_0002")
    assert placed.returncode == 0, placed.stderr
    edited = versions / "snowflake_0001_warehouses.py"
    edited.write_text(edited.read_text() + "# edited by hand\n")
    result = migrate(
        app, pg_url, both, clean_env, "--migrations-mode", "copy", ENABLED_PLUGINS="s3_plugin"
    )
    assert_one_line_failure(result, 6, str(edited), "has been changed since")
    assert edited.read_text().endswith("# edited by hand\n")


def test_link_mode_then_back_to_locations(
    app: Path, both: Path, versions: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = migrate(app, pg_url, both, clean_env, "--migrations-mode", "link")
    assert result.returncode == 0, result.stderr
    link = versions / "s3_0002_objects.py"
    assert link.is_symlink()
    assert link.resolve() == (both / "s3_plugin/migration/s3_0002_objects.py").resolve()
    assert _manifest(versions)["s3_0002_objects.py"]["plugin"] == "s3_plugin"
    assert tables(pg_url) == CORE | S3 | SNOWFLAKE
    # Back in the default mode, the links would be duplicates: portal-boot
    # removes its own, the application's files stay.
    back = migrate(app, pg_url, both, clean_env)
    assert back.returncode == 0, back.stderr
    assert sorted(p.name for p in versions.iterdir() if p.name != "__pycache__") == [
        "core_0001_portal_settings.py", "core_0002_data_products.py",
    ]  # fmt: skip


def test_a_failing_plugin_revision_rolls_everything_back(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    s3_plugin(
        target,
        **{"s3_0003_bad.py": revision("s3_0003", "s3_0002", upgrade="op.execute('SELECT 1/0')")},
    )
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "revision s3_0003 (plugin s3_plugin", "DivisionByZero",
        "the database stays at no revision", "s3_0003_bad.py",
    )  # fmt: skip
    assert tables(pg_url) == set()


# --- waiting for the migrations -------------------------------------------------


def test_wait_until_at_heads_returns_once_another_process_migrated(
    app: Path, both: Path, pg_url: str
) -> None:
    plugins = discover([both], GROUP)
    outcome: dict[str, object] = {}

    def wait() -> None:
        started = time.monotonic()
        try:
            migrations.wait_until_at_heads(
                settings(app, both, db_timeout=20.0), plugins, url=pg_url
            )
            outcome["waited"] = time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive(), outcome
    migrations.migrate(settings(app, both), plugins, url=pg_url)
    waiter.join(10)
    assert "error" not in outcome, outcome
    assert 1.0 <= outcome["waited"] < 4.0  # type: ignore[operator]


def test_wait_until_at_heads_times_out_naming_what_is_pending(
    app: Path, both: Path, pg_url: str
) -> None:
    plugins = discover([both], GROUP)
    migrations.migrate(settings(app), [], url=pg_url)
    started = time.monotonic()
    with pytest.raises(
        MigrationError, match=r"3 revision\(s\) pending \(s3_0001, snowflake_0001, s3_0002\)"
    ):
        migrations.wait_until_at_heads(settings(app, both, db_timeout=1.0), plugins, url=pg_url)
    assert time.monotonic() - started < 2.5


def test_wait_until_at_heads_without_a_database(app: Path) -> None:
    from pgserver import free_port

    url = f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/db"
    with pytest.raises(DatabaseError, match="did not answer within 1 s"):
        migrations.wait_until_at_heads(settings(app, db_timeout=1.0), [], url=url)


def test_cli_serve_wait_for_migrations_times_out_with_status_6(
    app: Path, both: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = portal_boot(
        "serve", "--wait-for-migrations", "--alembic-config", str(app), "--database-url", pg_url,
        "--target", str(both), "--db-timeout", "1", env=clean_env, timeout=30,
    )  # fmt: skip
    assert_one_line_failure(result, 6, "not at the heads after 1 s", "run `portal-boot migrate`")


def test_revision_state_with_plugins(app: Path, both: Path, pg_url: str) -> None:
    plugins = discover([both], GROUP)
    migrations.migrate(settings(app, both), plugins, url=pg_url, to="core_0002")
    state = migrations.revision_state(settings(app, both), plugins, url=pg_url)
    assert state.current == ("core_0002",)
    assert state.heads == ("core_0002", "s3_0002", "snowflake_0001")
    assert state.pending == ("s3_0001", "snowflake_0001", "s3_0002")


def test_a_plugin_revision_may_import_its_package(app: Path, target: Path, pg_url: str) -> None:
    install_plugin(
        target, "models_plugin",
        {"m.py": revision(
            "models_0001", "core_0002",
            upgrade="from models_plugin.schema import ModelsPluginConfiguration as C\n"
            + create_table("models") + "\nassert C.name == 'models_plugin'",
        )},
    )  # fmt: skip
    migrations.migrate(settings(app, target), discover([target], GROUP), url=pg_url)
    assert "models" in tables(pg_url)
