"""The revision graph, and the checks made before anything is applied.

Alembic, given two files with the same revision id, warns and silently keeps one;
given a ``down_revision`` that no file defines, it raises a bare ``KeyError``; given
a database at a revision whose file is gone, it says "Can't locate revision". This
module finds those cases first and names the revision, the plugin and the fix.
The files themselves are read by :mod:`portal_boot.migrations.revisions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from portal_boot.errors import MigrationError
from portal_boot.migrations.revisions import RevisionFile, owner_name

# --- the graph -------------------------------------------------------------------


class Graph:
    """The revisions as Alembic sees them: ``down_revision`` edges plus
    ``depends_on`` edges (a revision id or a branch label)."""

    def __init__(self, files: Iterable[RevisionFile]) -> None:
        self.files = {f.revision: f for f in files}
        self.labels = {label: f.revision for f in self.files.values() for label in f.branch_labels}

    def resolve(self, name: str) -> str | None:
        if name in self.files:
            return name
        return self.labels.get(name)

    def parents(self, revision: str) -> set[str]:
        file = self.files[revision]
        found = set(file.down_revisions)
        found.update(r for r in map(self.resolve, file.depends_on) if r is not None)
        return found

    @property
    def heads(self) -> tuple[str, ...]:
        """Revisions no other revision names as its ``down_revision``, as Alembic counts them."""
        below = {down for f in self.files.values() for down in f.down_revisions}
        return tuple(sorted(r for r in self.files if r not in below))

    def later(self, revision: str) -> set[str]:
        """The revisions after ``revision`` on its own line (``down_revision`` edges
        only): what Alembic drops when downgrading to it."""
        found: set[str] = set()
        stack = [revision]
        while stack:
            below = stack.pop()
            for file in self.files.values():
                if below in file.down_revisions and file.revision not in found:
                    found.add(file.revision)
                    stack.append(file.revision)
        return found

    def applied(self, current: Iterable[str]) -> set[str]:
        """Every revision the database has, given the rows of its version table."""
        seen: set[str] = set()
        stack = [r for r in current if r in self.files]
        while stack:
            revision = stack.pop()
            if revision in seen:
                continue
            seen.add(revision)
            stack.extend(p for p in self.parents(revision) if p in self.files)
        return seen

    def pending(self, current: Iterable[str]) -> tuple[str, ...]:
        """The revisions still to apply, parents first (ties broken by id)."""
        todo = set(self.files) - self.applied(current)
        order: list[str] = []
        while todo:
            ready = sorted(r for r in todo if not (self.parents(r) & todo))
            if not ready:  # a cycle: Alembic will name it; keep the rest stable
                ready = sorted(todo)
            order += ready
            todo -= set(ready)
        return tuple(order)


# --- the checks ------------------------------------------------------------------


def check_files(
    files: Sequence[RevisionFile], *, others: Sequence[RevisionFile] = (), mode: str = "locations"
) -> Graph:
    """Duplicate revision ids or branch labels, and ``down_revision`` /
    ``depends_on`` that no file defines. ``others`` are the revisions of installed
    plugins that are not enabled, used only to say where a missing one lives.
    Returns the graph. Raises MigrationError (status 6)."""
    by_id: dict[str, list[RevisionFile]] = {}
    for file in files:
        by_id.setdefault(file.revision, []).append(file)
    for revision, group in sorted(by_id.items()):
        if len(group) > 1:
            raise MigrationError(_duplicate_message(revision, group, mode))

    labels: dict[str, RevisionFile] = {}
    for file in files:
        for label in file.branch_labels:
            if label in labels or label in by_id:
                first = labels.get(label) or by_id[label][0]
                raise MigrationError(
                    f"branch label {label!r} is used twice: by revision {first.revision} "
                    f"({first.where()}) and by revision {file.revision} ({file.where()}): "
                    "a label names one branch; disable one of the plugins (ENABLED_PLUGINS) "
                    "and ask its maintainers for another label"
                )
            labels[label] = file

    graph = Graph(files)
    elsewhere = {f.revision: f for f in others}
    elsewhere.update({label: f for f in others for label in f.branch_labels})
    for file in files:
        for kind, names in (
            ("down_revision", file.down_revisions),
            ("depends_on", file.depends_on),
        ):
            for name in names:
                resolved = (
                    graph.resolve(name)
                    if kind == "depends_on"
                    else (name if name in graph.files else None)
                )
                if resolved is None:
                    raise MigrationError(_unresolved_message(file, kind, name, elsewhere.get(name)))
    return graph


def _duplicate_message(revision: str, group: list[RevisionFile], mode: str) -> str:
    where = " and ".join(f"{f.owner} ({f.path})" for f in group)
    identical = len({f.path.read_bytes() for f in group if f.path.exists()}) == 1
    app = [f for f in group if f.plugin is None]
    plugins = sorted({f.plugin.name for f in group if f.plugin is not None})
    if app and plugins:
        how = (
            "portal-boot adds the plugin's migration folder itself"
            if mode == "locations"
            else "portal-boot copies or links the plugin's files itself and records what it wrote"
        )
        fix = (
            f"{'it is a copy of the plugin file, ' if identical else ''}made by hand as older "
            f"deployment guides do: delete {app[0].path} ({how})"
        )
    elif len(plugins) > 1:
        fix = (
            f"plugins {' and '.join(plugins)} both define it: enable only one of them "
            "(ENABLED_PLUGINS) and ask its maintainers for a unique revision id"
        )
    else:
        fix = "give one of the files another revision id, or delete the stray copy"
    return f"revision {revision} is defined twice, by {where}: {fix}"


def _unresolved_message(
    file: RevisionFile, kind: str, name: str, other: RevisionFile | None
) -> str:
    head = (
        f"revision {file.revision} ({file.where()}) has {kind} {name!r}, "
        "which no enabled revision file defines"
    )
    if other is not None and other.plugin is not None:
        return (
            f"{head}: it belongs to plugin {other.plugin.name}, which is installed but not "
            f"enabled: add {other.plugin.name} to ENABLED_PLUGINS, or disable {owner_name(file.plugin)}"
        )
    if file.plugin is not None:
        return (
            f"{head}: plugin {file.plugin.name} {file.plugin.version} was built for another "
            "version of the application: install the plugin version made for this one, "
            f"or disable it (ENABLED_PLUGINS)"
        )
    return f"{head}: restore the missing revision file in the versions folder"


def check_database(
    graph: Graph, current: Sequence[str], *, others: Sequence[RevisionFile] = ()
) -> None:
    """Revisions recorded in the database that no enabled file defines (a plugin
    disabled or removed before its tables were downgraded). Raises MigrationError."""
    unknown = [r for r in current if r not in graph.files]
    if not unknown:
        return
    known = {f.revision: f for f in others}
    for revision in unknown:
        other = known.get(revision)
        if other is not None and other.plugin is not None:
            plugin = other.plugin
            raise MigrationError(
                f"the database is at revision {revision} of plugin {plugin.name}, which is "
                "installed but not enabled (ENABLED_PLUGINS): enable it again, or first "
                "revert its revisions with it enabled (portal-boot migrate --remove "
                f"{plugin.name}), then disable it"
            )
    listed = ", ".join(unknown)
    raise MigrationError(
        f"the database is at revision {listed}, which no file of the application or of an "
        "installed plugin defines: a plugin was removed before its migrations were "
        "downgraded (or the database belongs to a newer application). Reinstall that plugin, "
        "run `portal-boot migrate --remove <the plugin>` with it still installed, "
        "then remove it"
    )
