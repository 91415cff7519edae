"""The warm path (portal_boot.migrations.at_heads): a database already at the heads is noticed
without importing Alembic or SQLAlchemy, and everything else still goes the full
way. Real PostgreSQL and SQLite, real revision files, the CLI in child processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_failure, portal_boot
from sqlalchemy.engine import make_url
from test_migrations_support import (
    create_table,
    current,
    migrate_args,
    revision,
    s3_plugin,
    settings,
    snowflake_plugin,
)

from portal_boot import migrations
from portal_boot.migrations import at_heads, project, revisions

FAST = "(checked without Alembic)"
HEADS = {"s3_0002", "snowflake_0001"}


@pytest.fixture
def target(tmp_path: Path) -> Path:
    folder = tmp_path / "target"
    s3_plugin(folder)
    snowflake_plugin(folder)
    return folder


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'portal.db'}"
    return request.getfixturevalue("pg_url")


def _migrate(app: Path, url: str, target: Path, env: dict[str, str], *more: str, **extra: str):
    result = portal_boot(
        *migrate_args(app, url, *more, target=target), env={**env, **extra}, timeout=60
    )
    return result


def _up(app: Path, url: str, target: Path, env: dict[str, str], **extra: str) -> None:
    first = _migrate(app, url, target, env, **extra)
    assert first.returncode == 0, first.stderr
    assert FAST not in first.stderr


def _imported(importtime: str) -> set[str]:
    """The top-level packages ``python -X importtime`` saw imported."""
    found = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line:
            found.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return found


# --- taken: at the heads ----------------------------------------------------------


@pytest.mark.parametrize("spelling", ["sync", "async"])
def test_at_the_heads_migrate_imports_neither_alembic_nor_sqlalchemy(
    spelling: str, app: Path, target: Path, url: str, clean_env: dict[str, str]
) -> None:
    if spelling == "async":
        if url.startswith("sqlite"):
            url = url.replace("sqlite:", "sqlite+aiosqlite:")
        else:
            url = make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)
    _up(app, url, target, clean_env)
    again = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "portal_boot",
         *migrate_args(app, url, target=target)],
        env=clean_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (
        f"migrate: nothing to do, database at heads s3_0002, snowflake_0001 {FAST}" in again.stderr
    )
    imported = _imported(again.stderr)
    assert "portal_boot" in imported  # the probe sees imports at all
    assert not imported & {"alembic", "sqlalchemy", "mako"}, imported & {"alembic", "sqlalchemy"}
    assert "Running upgrade" not in again.stderr


_PROBE = r"""
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from portal_boot import migrations
from portal_boot.plugins import discover
from portal_boot.settings import Settings
ini, target, url, call = sys.argv[1:]
settings = Settings(alembic_config=Path(ini), target=Path(target), db_timeout=10.0)
plugins = discover([settings.target], settings.entry_point_group)
if call == "status":
    out = migrations.revision_state(settings, plugins, url=url).as_dict()
else:
    out = migrations.wait_until_at_heads(settings, plugins, url=url)
print(json.dumps({"out": out, "loaded": sorted({"alembic", "sqlalchemy"} & set(sys.modules))}))
"""


@pytest.mark.parametrize("call", ["status", "serve"])
def test_status_and_wait_for_migrations_use_the_same_check(
    call: str, app: Path, target: Path, url: str, clean_env: dict[str, str]
) -> None:
    _up(app, url, target, clean_env)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(app), str(target), url, call],
        env=clean_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    answer = json.loads(probe.stdout)
    assert answer["loaded"] == []
    if call == "status":
        assert answer["out"] == {
            "current": ["s3_0002", "snowflake_0001"],
            "heads": ["core_0002", "s3_0002", "snowflake_0001"],  # as the full path reports them
            "pending": [],
            "environments": [],  # no plugin with its own Alembic environment here
        }
    else:
        assert f"database at the heads (s3_0002, snowflake_0001), {FAST[1:-1]}" in probe.stderr


# --- not taken: anything pending, anything it does not model -----------------------


@pytest.mark.parametrize("change", ["core", "plugin", "newly enabled", "empty database"])
def test_pending_work_takes_the_full_path(
    change: str, app: Path, target: Path, url: str, clean_env: dict[str, str]
) -> None:
    applied = {"core": "core_0003", "plugin": "s3_0003", "newly enabled": "snowflake_0001"}
    if change == "newly enabled":
        _up(app, url, target, clean_env, ENABLED_PLUGINS="s3_plugin")
    elif change != "empty database":
        _up(app, url, target, clean_env)
    if change == "core":
        (app.parent / "app/database/alembic/versions/core_0003_audit.py").write_text(
            revision("core_0003", "core_0002", upgrade=create_table("audit"))
        )
    elif change == "plugin":
        (target / "s3_plugin/migration/s3_0003_tags.py").write_text(
            revision("s3_0003", "s3_0002", upgrade=create_table("s3_tags"))
        )
    result = _migrate(app, url, target, clean_env)
    assert result.returncode == 0, result.stderr
    assert FAST not in result.stderr
    assert f"applied {applied.get(change, 'core_0001')} " in result.stderr
    # And now it is at the heads again: the next run takes the fast path.
    assert FAST in _migrate(app, url, target, clean_env).stderr


def test_a_removed_plugin_still_stops_with_the_preflight_message(
    app: Path, tmp_path: Path, url: str, clean_env: dict[str, str]
) -> None:
    target = tmp_path / "target"
    s3 = s3_plugin(target)
    _up(app, url, target, clean_env)
    s3.remove()  # its revisions stay in the database
    result = _migrate(app, url, target, clean_env)
    assert_one_line_failure(
        result, 6, "the database is at revision s3_0002, which no file of the application"
    )
    assert FAST not in result.stderr


def test_identifiers_that_need_an_import_take_the_full_path(
    app: Path, target: Path, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    (app.parent / "app/database/alembic/versions/core_0003_computed.py").write_text(
        revision("core_0003", "core_0002").replace("= 'core_0003'", "= 'core_' + '0003'")
    )
    _up(app, url, target, clean_env)
    again = _migrate(app, url, target, clean_env, "--log-level", "debug")
    assert again.returncode == 0, again.stderr
    assert "can only be read by importing it; the full path decides" in again.stderr
    assert "nothing to apply" in again.stderr and FAST not in again.stderr


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_link_and_copy_files_out_of_date_take_the_full_path(
    mode: str, app: Path, target: Path, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    versions = app.parent / "app/database/alembic/versions"
    _up(app, url, target, clean_env, PORTAL_BOOT_MIGRATIONS_MODE=mode)
    placed = versions / "s3_0002_objects.py"
    assert placed.exists()
    warm = _migrate(app, url, target, clean_env, PORTAL_BOOT_MIGRATIONS_MODE=mode)
    assert FAST in warm.stderr
    # The database is at the heads, but the versions folder is not what this run
    # would make it: a new plugin release changed a file, or a link was deleted.
    if mode == "copy":
        source = target / "s3_plugin/migration/s3_0002_objects.py"
        source.write_text(source.read_text() + "# 1.0.1\n")
    else:
        placed.unlink()
    result = _migrate(app, url, target, clean_env, PORTAL_BOOT_MIGRATIONS_MODE=mode)
    assert result.returncode == 0, result.stderr
    assert FAST not in result.stderr
    assert f"{'copied' if mode == 'copy' else 'linked'} {placed}" in result.stderr
    assert placed.read_text().endswith("# 1.0.1\n") if mode == "copy" else placed.is_symlink()
    # Back to locations: the copies portal-boot placed are stale and must go.
    result = _migrate(app, url, target, clean_env)
    assert result.returncode == 0, result.stderr
    assert FAST not in result.stderr and not placed.exists()
    assert FAST in _migrate(app, url, target, clean_env).stderr
    assert current(url) == HEADS


def test_what_the_check_does_not_model_is_left_to_the_full_path(app: Path, tmp_path: Path) -> None:
    s = settings(app)
    missing = tmp_path / "never.db"
    for url in (
        "mysql+pymysql://user:secret@127.0.0.1:1/portal",  # other databases: no connection tried
        "postgresql+psycopg://user:secret@/portal?host=/run/a&host=/run/b",  # several hosts
        f"sqlite:///{tmp_path / 'portal.db'}?timeout=5",  # the dialect's parameters
        "sqlite://",  # in memory: empty by definition
        f"sqlite:///{missing}",  # not created yet
    ):
        assert at_heads.at_heads(migrations.sources_from(s), [], url, timeout=5) is None, url
    assert not missing.exists()  # the look did not create the file


# --- the ini, read as Alembic reads it -----------------------------------------------


_INIS = {
    "the example": None,
    "version_locations, os separator": (
        "path_separator = os\nversion_locations = %(here)s/one:%(here)s/two\n"
    ),
    "space separator": "path_separator = space\nversion_locations = %(here)s/one %(here)s/two\n",
    "newline separator": "path_separator = newline\nversion_locations =\n  %(here)s/one\n  two\n",
    "semicolon, recursive": (
        "path_separator = ;\nversion_locations = one;two\nrecursive_version_locations = true\n"
    ),
    "legacy split": "version_locations = %(here)s/one, two  three\n",
    "legacy version_path_separator": "version_path_separator = :\nversion_locations = one:two\n",
    "relative script_location": "script_location = alembic\nrecursive_version_locations = no\n",
}


@pytest.mark.filterwarnings("ignore:.*(path_separator|version_path_separator).*:DeprecationWarning")
@pytest.mark.parametrize("name", list(_INIS))
def test_the_version_locations_are_alembics(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alembic").mkdir()
    ini = tmp_path / "alembic.ini"
    extra = _INIS[name]
    lines = ["[alembic]", "script_location = %(here)s/alembic"]
    if extra and extra.startswith("script_location"):
        lines = ["[alembic]"]
    ini.write_text("\n".join(lines) + "\n" + (extra or "") + "\n[loggers]\nkeys = root\n")
    config = project._read_config(ini)
    expected = (
        project._app_locations(config),
        revisions.is_recursive(config.get_main_option("recursive_version_locations")),
    )
    assert at_heads.read_locations(ini) == expected


@pytest.mark.parametrize(
    "body",
    [
        "script_location = mypackage:migrations\n",  # a package resource
        "script_location = %(here)s/nowhere\n",
        "script_location = %(here)s\npath_separator = comma\nversion_locations = a,b\n",
        "script_location = %(undefined)s\n",
        "",
    ],
)
def test_an_ini_it_cannot_read_like_alembic_is_undecided(body: str, tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\n" + body)
    with pytest.raises(at_heads.Undecided):
        at_heads.read_locations(ini)
