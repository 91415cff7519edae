"""The pure parts: reading revision files without importing them, the revision
graph, the pre-flight messages, the link/copy bookkeeping, and ``--to`` on
SQLite. No PostgreSQL here; real files in a temporary folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_migrations_support import (
    GROUP,
    copy_example,
    current,
    revision,
    s3_plugin,
    settings,
    snowflake_plugin,
    tables,
)

from portal_boot import migrations
from portal_boot.errors import MigrationError
from portal_boot.migrations import placement, preflight, revisions
from portal_boot.plugins import Plugin, discover


def _file(
    rev: str, down=(), deps=(), labels=(), plugin: Plugin | None = None
) -> revisions.RevisionFile:
    return revisions.RevisionFile(
        rev, tuple(down), tuple(deps), tuple(labels), Path(f"/x/{rev}.py"), plugin
    )


PLUGIN = Plugin("s3_plugin", "s3_plugin.schema:S3", "portal-s3-plugin", "1.0.0", None, None)
# The example portal with both example plugins, as a graph.
EXAMPLE = [
    _file("core_0001"),
    _file("core_0002", ["core_0001"]),
    _file("s3_0001", deps=["core_0002"], labels=["s3_plugin"], plugin=PLUGIN),
    _file("s3_0002", ["s3_0001"], plugin=PLUGIN),
    _file("snowflake_0001", deps=["core_0001"], labels=["snowflake_plugin"]),
]


@pytest.mark.parametrize(
    ("rows", "applied", "pending"),
    [
        ((), set(), ("core_0001", "core_0002", "snowflake_0001", "s3_0001", "s3_0002")),
        (("core_0001",), {"core_0001"}, ("core_0002", "snowflake_0001", "s3_0001", "s3_0002")),
        # s3_0002 implies core_0002 through depends_on: the version table keeps
        # only the heads of what is applied.
        (("s3_0002",), {"core_0001", "core_0002", "s3_0001", "s3_0002"}, ("snowflake_0001",)),
        (("s3_0002", "snowflake_0001"), {f.revision for f in EXAMPLE}, ()),
        (("gone_0001",), set(), ("core_0001", "core_0002", "snowflake_0001", "s3_0001", "s3_0002")),
    ],
)
def test_graph_applied_and_pending(
    rows: tuple[str, ...], applied: set[str], pending: tuple[str, ...]
) -> None:
    graph = preflight.Graph(EXAMPLE)
    assert graph.applied(rows) == applied
    assert graph.pending(rows) == pending


def test_graph_heads_and_later_follow_alembic() -> None:
    graph = preflight.Graph(EXAMPLE)
    # Only down_revision hides a head; depends_on does not (as `alembic heads` shows).
    assert graph.heads == ("core_0002", "s3_0002", "snowflake_0001")
    assert graph.later("core_0001") == {"core_0002"}
    assert graph.later("s3_0001") == {"s3_0002"}
    assert graph.resolve("s3_plugin") == "s3_0001"


def test_read_file_without_importing_it(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text(
        revision("a1", ["x", "y"], labels=["lab"], depends_on="s3_plugin")
        + "\nraise RuntimeError('never imported')\n"
    )
    file = revisions.read_file(path, None)
    assert (file.revision, file.down_revisions, file.branch_labels, file.depends_on) == (
        "a1", ("x", "y"), ("lab",), ("s3_plugin",),
    )  # fmt: skip


def test_read_file_computed_identifiers_are_imported(tmp_path: Path) -> None:
    path = tmp_path / "b.py"
    path.write_text("PREFIX = 'b'\nrevision = PREFIX + '1'\ndown_revision = None\n")
    assert revisions.read_file(path, None).revision == "b1"


def test_read_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "c.py"
    broken.write_text("revision = 'c1'\ndef upgrade(:\n")
    with pytest.raises(MigrationError, match=rf"{broken} \(the application\) is not valid Python"):
        revisions.read_file(broken, None)
    anonymous = tmp_path / "notes.py"
    anonymous.write_text("x = 1\n")
    with pytest.raises(MigrationError, match="declares no `revision = ...`"):
        revisions.read_file(anonymous, None)


def test_list_files_follows_alembics_rule(tmp_path: Path) -> None:
    for name in ("a.py", "__init__.py", ".#b.py", "c.txt", ".d.py.1.portal-boot-tmp"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.py").write_text("")
    assert [p.name for p in revisions.list_files(tmp_path)] == ["a.py"]
    assert [p.name for p in revisions.list_files(tmp_path, recursive=True)] == ["a.py", "e.py"]


@pytest.mark.parametrize(
    ("files", "others", "needles"),
    [
        (
            [_file("a"), _file("a", plugin=PLUGIN)],
            [],
            [
                "revision a is defined twice",
                "the application (/x/a.py)",
                "plugin s3_plugin",
                "delete /x/a.py",
            ],
        ),
        (
            [_file("a", labels=["l"]), _file("b", labels=["l"])],
            [],
            ["branch label 'l' is used twice", "revision a", "revision b"],
        ),
        (
            [_file("a", ["nope"], plugin=PLUGIN)],
            [],
            [
                "revision a (plugin s3_plugin from portal-s3-plugin 1.0.0, /x/a.py) has down_revision 'nope'"
            ],
        ),
        (
            [_file("a", deps=["snow"], plugin=PLUGIN)],
            [
                _file(
                    "s1",
                    labels=["snow"],
                    plugin=Plugin("snowflake_plugin", "m:C", "d", "1", None, None),
                )
            ],
            [
                "depends_on 'snow'",
                "belongs to plugin snowflake_plugin",
                "add snowflake_plugin to ENABLED_PLUGINS",
            ],
        ),
    ],
)
def test_check_files_messages(files, others, needles) -> None:
    with pytest.raises(MigrationError) as failure:
        preflight.check_files(files, others=others)
    for needle in needles:
        assert needle in str(failure.value)
    assert "\n" not in str(failure.value)


def test_check_database_names_a_removed_plugins_revision() -> None:
    graph = preflight.check_files(EXAMPLE[:2])
    with pytest.raises(MigrationError, match="the database is at revision s3_0002, which no file"):
        preflight.check_database(graph, ["s3_0002"])
    with pytest.raises(MigrationError, match=r"--remove s3_plugin\)"):
        preflight.check_database(graph, ["s3_0002"], others=EXAMPLE[2:4])
    preflight.check_database(graph, ["core_0002"])


# --- link / copy bookkeeping -----------------------------------------------------


def _plugin_files(tmp_path: Path) -> list[revisions.RevisionFile]:
    target = tmp_path / "target"
    s3_plugin(target)
    return [f for p in discover([target], GROUP) for f in revisions.read_plugin(p)]


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_sync_places_records_and_removes_its_own(tmp_path: Path, mode: str) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    files = _plugin_files(tmp_path)
    assert not placement.in_place(versions, [f.path for f in files], mode)
    placed = placement.sync(versions, files, mode)
    assert {p.name for p in placed} == {"s3_0001_buckets.py", "s3_0002_objects.py"}
    assert placement.in_place(versions, [f.path for f in files], mode)
    assert (versions / "s3_0001_buckets.py").is_symlink() == (mode == "link")
    manifest = json.loads((versions / placement.MANIFEST_NAME).read_text())["files"]
    assert manifest["s3_0002_objects.py"]["revision"] == "s3_0002"
    placement.sync(versions, files[:1], mode)
    assert sorted(p.name for p in versions.iterdir()) == [
        placement.MANIFEST_NAME, "s3_0001_buckets.py",
    ]  # fmt: skip
    placement.sync(versions, [], mode)
    assert list(versions.iterdir()) == []


def test_sync_after_a_crash_between_announcing_and_placing(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    files = _plugin_files(tmp_path)
    placement.sync(versions, files, "copy")
    # A new plugin version changes a file; the run announces the change in the
    # manifest, then dies before replacing the old copy.
    files[0].path.write_text(files[0].path.read_text() + "# 1.0.1\n")
    old = (versions / files[0].path.name).read_bytes()
    entries = placement.read_manifest(versions)
    entry = entries[files[0].path.name]
    entries[files[0].path.name] = {
        **entry, "signature": placement._wanted(files[0].path, "copy"), "previous": entry["signature"],
    }  # fmt: skip
    placement._write_manifest(versions, entries)
    assert (versions / files[0].path.name).read_bytes() == old
    placement.sync(versions, files, "copy")  # the next run finishes the job
    assert (versions / files[0].path.name).read_text().endswith("# 1.0.1\n")


# --- --to on SQLite ---------------------------------------------------------------


def test_to_goes_up_down_or_explains_why_nothing_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ini = copy_example(tmp_path / "portal")
    target = tmp_path / "target"
    s3_plugin(target)
    snowflake_plugin(target)
    plugins = discover([target], GROUP)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    config = settings(ini, target)
    migrations.migrate(config, plugins, url=url, to="s3_0001")  # up, its dependencies first
    assert current(url) == {"s3_0001"}
    migrations.migrate(config, plugins, url=url)
    caplog.set_level(logging.INFO)
    # core_0002 is applied and nothing after it on the core line: Alembic would
    # refuse the downgrade; portal-boot says why nothing changes.
    migrations.migrate(config, plugins, url=url, to="core_0002")
    assert any("nothing after it on its line" in r.getMessage() for r in caplog.records)
    assert current(url) == {"s3_0002", "snowflake_0001"}
    migrations.migrate(config, plugins, url=url, to="core_0001")  # down: core_0002 and s3 go
    assert current(url) == {"snowflake_0001"}
    assert "s3_buckets" not in tables(url) and "snowflake_warehouses" in tables(url)
