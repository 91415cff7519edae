"""Plugins that bring their own Alembic environment (a migration folder with an
env.py and a version table of their own), on a real PostgreSQL, through the CLI:
both kinds of plugin in one boot, a second boot that is a no-op, removing the
own-environment plugin, a broken env.py, every pre-flight check, status, --sql and
--wait-for-migrations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from test_migrations_support import (
    create_table,
    current,
    drop_table,
    install_example_plugin,
    install_plugin,
    migrate_args,
    query,
    revision,
    s3_plugin,
    settings,
    tables,
)

from portal_boot import migrations
from portal_boot.errors import MigrationError
from portal_boot.migrations.environments import VersionTable, read_version_table
from portal_boot.plugins import discover

CORE = {"portal_settings", "data_products", "alembic_version"}
S3 = {"s3_buckets", "s3_objects"}
DATABRICKS = {"databricks_plugin_workspaces", "alembic_version_databricks_plugin"}
LAKE = {"lake_tables", "lake_views", "alembic_version_lake"}
GROUP = "data_product_portal.plugins"


def env_py(configure: str = 'version_table="alembic_version_lake"', prelude: str = "") -> str:
    """An env.py in the shape of Alembic's generic template, using the connection
    portal-boot offers; ``configure`` is what goes into both context.configure calls."""
    return f"""\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
{prelude}

def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, {configure})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is None:
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {{}}), prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        connection = engine.connect()
    context.configure(connection=connection, {configure})
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""


def lake_revisions(**extra: str) -> dict[str, str]:
    """Two revisions of the lake plugin's own history, beside its env.py (no versions/)."""
    return {
        "lake_0001_tables.py": revision(
            "lake_0001", None,
            upgrade=create_table("lake_tables"), downgrade=drop_table("lake_tables"),
        ),
        "lake_0002_views.py": revision(
            "lake_0002", "lake_0001",
            upgrade=create_table("lake_views"), downgrade=drop_table("lake_views"),
        ),
        **extra,
    }  # fmt: skip


def lake_plugin(target: Path, env: str | None = None, **files: str):
    """An own-environment plugin without alembic.ini, revisions beside env.py."""
    return install_plugin(target, "lake_plugin", {"env.py": env or env_py(), **lake_revisions(), **files})


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    folder.mkdir()
    return folder


@pytest.fixture
def mixed(target: Path) -> Path:
    """A chained plugin (s3), the repository's Databricks example (own environment,
    alembic.ini, versions/) and the lake plugin (own environment, revisions beside env.py)."""
    s3_plugin(target)
    install_example_plugin(target, "databricks_plugin")
    lake_plugin(target)
    return target


def migrate(app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra: str):
    return portal_boot(*migrate_args(app, url, *more, target=target), env={**env, **extra})


def status(app: Path, url: str, target: Path, env: dict[str, str]):
    return portal_boot(
        "status", "--json", "--alembic-config", str(app), "--database-url", url,
        "--target", str(target), env=env,
    )  # fmt: skip


def rows(url: str, table: str) -> set[str]:
    return set(query(url, f"SELECT version_num FROM {table}"))


def test_both_kinds_in_one_boot_then_a_no_op(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    first = migrate(app, pg_url, mixed, clean_env)
    assert first.returncode == 0, first.stderr
    assert tables(pg_url) == CORE | S3 | DATABRICKS | LAKE
    assert current(pg_url) == {"s3_0002"}  # the application's table holds only its own history
    assert rows(pg_url, "alembic_version_databricks_plugin") == {"databricks_0001"}
    assert rows(pg_url, "alembic_version_lake") == {"lake_0002"}
    log = first.stderr
    # The application and the chained plugins first, then each own environment.
    assert log.index("applied s3_0002") < log.index("applied databricks_0001") < log.index(
        "applied lake_0002"
    )
    assert "version table alembic_version_databricks_plugin" in log

    second = migrate(app, pg_url, mixed, clean_env)
    assert second.returncode == 0, second.stderr
    assert "nothing to do, database at heads s3_0002 (checked without Alembic)" in second.stderr
    assert "Running upgrade" not in second.stderr
    assert "at its heads databricks_0001" in second.stderr

    report = status(app, pg_url, mixed, clean_env)
    assert report.returncode == 0, report.stdout + report.stderr
    revisions = json.loads(report.stdout)["revisions"]
    assert revisions["current"] == ["s3_0002"]  # the core's keys, as before
    by_table = {e["version_table"]: e for e in revisions["environments"]}
    assert set(by_table) == {
        "alembic_version", "alembic_version_databricks_plugin", "alembic_version_lake",
    }  # fmt: skip
    assert by_table["alembic_version_lake"]["plugin"] == "lake_plugin"
    assert by_table["alembic_version_lake"]["current"] == ["lake_0002"]
    assert by_table["alembic_version_lake"]["heads"] == ["lake_0002"]
    assert by_table["alembic_version_lake"]["pending"] == []


@pytest.mark.parametrize(
    "how", [("--remove", "databricks_plugin"), ("--to", "databricks_plugin@base")], ids=" ".join
)
def test_removing_the_own_environment_plugin_drops_only_its_tables(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str], how: tuple[str, str]
) -> None:
    assert migrate(app, pg_url, mixed, clean_env).returncode == 0
    core_rows = current(pg_url)
    down = migrate(app, pg_url, mixed, clean_env, *how)
    assert down.returncode == 0, down.stderr
    assert "reverted databricks_0001" in down.stderr
    # Only its table and its version table's rows; the empty version table stays,
    # as Alembic leaves it.
    assert tables(pg_url) == CORE | S3 | LAKE | {"alembic_version_databricks_plugin"}
    assert rows(pg_url, "alembic_version_databricks_plugin") == set()
    assert current(pg_url) == core_rows
    assert rows(pg_url, "alembic_version_lake") == {"lake_0002"}

    # The procedure's last step: remove the plugin; the next boot is a clean no-op.
    shutil.rmtree(mixed / "databricks_plugin")
    shutil.rmtree(next(mixed.glob("portal_databricks_plugin-*.dist-info")))
    after = migrate(app, pg_url, mixed, clean_env)
    assert after.returncode == 0, after.stderr
    assert "Running upgrade" not in after.stderr
    assert status(app, pg_url, mixed, clean_env).returncode == 0


def test_a_broken_env_py_is_status_6_naming_the_plugin(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    lake_plugin(target, env=env_py(prelude='raise RuntimeError("no lake configured")'))
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "plugin lake_plugin's own Alembic environment", "env.py",
        "RuntimeError: no lake configured", "disable the plugin (ENABLED_PLUGINS)",
    )  # fmt: skip
    assert not (LAKE & tables(pg_url))


def test_an_env_py_that_is_not_python_stops_before_anything_runs(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    lake_plugin(target, env="def run(:\n")
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(result, 6, "env.py (plugin lake_plugin) is not valid Python")
    assert tables(pg_url) == set()


def test_a_failing_revision_rolls_back_that_plugin_only(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    s3_plugin(target)
    lake_plugin(
        target,
        **{
            "lake_0002_views.py": revision(
                "lake_0002", "lake_0001",
                upgrade=create_table("lake_views") + "\nop.execute('SELECT 1/0')",
            ),
        },
    )  # fmt: skip
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "revision lake_0002 of plugin lake_plugin's own Alembic environment",
        "DivisionByZero", "alembic_version_lake stays at no revision",
    )  # fmt: skip
    # The application and the chained plugin were committed before; the lake
    # plugin's one transaction (lake_0001 too) was rolled back.
    assert tables(pg_url) == CORE | S3
    # Fixed, the next run applies what remains.
    lake_plugin_dir = target / "lake_plugin/migration"
    (lake_plugin_dir / "lake_0002_views.py").write_text(lake_revisions()["lake_0002_views.py"])
    again = migrate(app, pg_url, target, clean_env)
    assert again.returncode == 0, again.stderr
    assert tables(pg_url) == CORE | S3 | LAKE


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        pytest.param(
            {"lake_0003_copy.py": revision("lake_0002", "lake_0001")},
            ["revision lake_0002 is defined twice in plugin lake_plugin's own Alembic environment"],
            id="duplicate-id",
        ),
        pytest.param(
            {"lake_0003_core.py": revision("lake_0003", "core_0002")},
            ["revision lake_0003", "down_revision 'core_0002'", "plugin lake_plugin's own"],
            id="dangling-down-revision",
        ),
        pytest.param(
            {"env.py": env_py(configure="")},
            [("plugin lake_plugin's own Alembic environment records its revisions in "
              "alembic_version, the application's version table"),
             'version_table="alembic_version_lake_plugin"'],
            id="default-version-table",
        ),
        pytest.param(
            {"env.py": env_py(prelude='TABLE = "alembic_" + "version"',
                              configure="version_table=TABLE")},
            ["alembic_version, the application's version table"],
            id="computed-version-table-learned-by-running-env-py",
        ),
    ],
)  # fmt: skip
def test_preflight(
    files: dict[str, str], needles: list[str], app: Path, target: Path, pg_url: str,
    clean_env: dict[str, str],
) -> None:  # fmt: skip
    lake_plugin(target, **files)
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(result, 6, *needles)
    assert tables(pg_url) == set()  # nothing applied, not even the application's


def test_two_plugins_sharing_a_version_table(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    lake_plugin(target)
    install_plugin(
        target, "pond_plugin",
        {"env.py": env_py(), "versions/pond_0001.py": revision("pond_0001")},
    )  # fmt: skip
    result = migrate(app, pg_url, target, clean_env)
    assert_one_line_failure(
        result, 6, "plugins lake_plugin and pond_plugin both record their revisions in the "
        "version table alembic_version_lake",
    )  # fmt: skip
    assert tables(pg_url) == set()


def test_a_version_table_only_env_py_names_works_through_the_full_path(
    app: Path, target: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    lake_plugin(
        target,
        env=env_py(prelude='TABLE = "alembic_version_" + "lake"', configure="version_table=TABLE"),
    )
    first = migrate(app, pg_url, target, clean_env)
    assert first.returncode == 0, first.stderr
    assert rows(pg_url, "alembic_version_lake") == {"lake_0002"}
    second = migrate(app, pg_url, target, clean_env, "--log-level", "debug")
    assert second.returncode == 0, second.stderr
    assert "named only by running its env.py" in second.stderr  # the warm path steps aside
    assert "Running upgrade" not in second.stderr
    report = status(app, pg_url, target, clean_env)
    assert report.returncode == 0, report.stdout
    entries = json.loads(report.stdout)["revisions"]["environments"]
    assert entries[-1]["version_table"] == "alembic_version_lake"


def test_sql_prints_each_environment_and_applies_nothing(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    up = migrate(app, pg_url, mixed, clean_env, "--sql")
    assert up.returncode == 0, up.stderr
    assert "CREATE TABLE alembic_version_databricks_plugin" in up.stdout
    assert "CREATE TABLE databricks_plugin_workspaces" in up.stdout
    assert "CREATE TABLE alembic_version_lake" in up.stdout
    assert "UPDATE alembic_version_lake SET version_num='lake_0002'" in up.stdout
    assert "CREATE TABLE s3_objects" in up.stdout
    assert tables(pg_url) == set()
    down = migrate(app, pg_url, mixed, clean_env, "--sql", "--to", "lake_plugin@base")
    assert down.returncode == 0, down.stderr
    assert "DROP TABLE lake_views" in down.stdout and "DROP TABLE s3_objects" not in down.stdout


def test_wait_for_migrations_counts_the_own_environments(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    config = settings(app, mixed, db_timeout=0.5)
    plugins = discover([mixed], GROUP)
    # A long list is summarised: the count, the first and the last (here a lake revision).
    with pytest.raises(MigrationError, match=r"7 revision\(s\) pending .* lake_0002 \(plugin lake_plugin\)"):
        migrations.wait_until_at_heads(config, plugins, url=pg_url)
    assert migrate(app, pg_url, mixed, clean_env).returncode == 0
    migrations.wait_until_at_heads(config, plugins, url=pg_url)
    # One own environment back at base: waiting replicas wait again.
    down = migrate(app, pg_url, mixed, clean_env, "--to", "lake_plugin@base")
    assert down.returncode == 0, down.stderr
    with pytest.raises(MigrationError, match=r"2 revision\(s\) pending"):
        migrations.wait_until_at_heads(config, plugins, url=pg_url)


# --- reading the version table from env.py, without running it -----------------------


@pytest.mark.parametrize(
    ("configure", "prelude", "expected"),
    [
        ('version_table="alembic_version_lake"', "", VersionTable("alembic_version_lake")),
        ("version_table=T", 'T = "v_lake"', VersionTable("v_lake")),
        ('version_table="v", version_table_schema="plugins"', "", VersionTable("v", "plugins")),
        ("", "", VersionTable("alembic_version")),  # Alembic's default
        ("**OPTIONS", "OPTIONS = {}", None),  # anything may be in there
        ('version_table="v_" + NAME', 'NAME = "lake"', None),  # computed
        ("version_table=settings.TABLE", "", None),
    ],
)
def test_read_version_table(
    configure: str, prelude: str, expected: VersionTable | None, tmp_path: Path
) -> None:
    path = tmp_path / "env.py"
    path.write_text(env_py(configure, prelude))
    assert read_version_table(path, _plugin(tmp_path)) == expected


def test_an_env_py_that_delegates_has_no_readable_table(tmp_path: Path) -> None:
    path = tmp_path / "env.py"
    path.write_text("from shopdb.plugins.alembic_template import run\nrun('computers')\n")
    assert read_version_table(path, _plugin(tmp_path)) is None


def _plugin(root: Path):
    """A plugin for read_version_table to name in its errors."""
    install_plugin(root / "t", "x_plugin", {"env.py": ""})
    return discover([root / "t"], GROUP)[0]


@pytest.mark.parametrize("call", ["status", "serve"])
def test_the_warm_path_reads_the_own_version_tables_without_alembic(
    call: str, app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    from test_migrations_fast import _PROBE

    assert migrate(app, pg_url, mixed, clean_env).returncode == 0
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(app), str(mixed), pg_url, call],
        env=clean_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    answer = json.loads(probe.stdout)
    assert answer["loaded"] == []  # neither Alembic nor SQLAlchemy imported
    if call == "status":
        own = {e["version_table"]: e["current"] for e in answer["out"]["environments"]}
        assert own == {
            "alembic_version_databricks_plugin": ["databricks_0001"],
            "alembic_version_lake": ["lake_0002"],
        }


def test_to_another_point_of_an_own_environment_is_a_usage_error(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = migrate(app, pg_url, mixed, clean_env, "--to", "lake_plugin@lake_0001")
    assert_one_line_failure(
        result, 2, "--to lake_plugin@lake_0001", "own Alembic environment", "lake_plugin@base"
    )
    assert tables(pg_url) == set()


def test_copy_mode_places_only_the_chained_plugins_files(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    result = migrate(app, pg_url, mixed, clean_env, "--migrations-mode", "copy")
    assert result.returncode == 0, result.stderr
    versions = app.parent / "app/database/alembic/versions"
    placed = {p.name for p in versions.iterdir() if p.name.startswith(("s3_", "lake_", "env"))}
    assert placed == {"s3_0001_buckets.py", "s3_0002_objects.py"}  # no env.py, no lake_*
    assert tables(pg_url) == CORE | S3 | DATABRICKS | LAKE


def test_status_text_names_each_own_environment(
    app: Path, mixed: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    args = ["status", "--alembic-config", str(app), "--database-url", pg_url, "--target", str(mixed)]
    before = portal_boot(*args, env=clean_env)
    assert before.returncode == 6, before.stdout + before.stderr
    assert (
        "plugin lake_plugin (own Alembic environment, version table alembic_version_lake): "
        "current none, heads lake_0002, pending lake_0001, lake_0002"
    ) in before.stdout
    assert "lake_plugin = lake_plugin.schema:LakePluginConfiguration" in before.stdout
    assert migrate(app, pg_url, mixed, clean_env).returncode == 0
    after = portal_boot(*args, env=clean_env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "current lake_0002, heads lake_0002" in after.stdout
    assert "migrations (own Alembic environment)" in after.stdout
