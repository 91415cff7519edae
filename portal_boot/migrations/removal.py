"""Removing one plugin's revisions, and nothing that is not the plugin's.

portal-boot knows which revision file belongs to which plugin
(:attr:`~portal_boot.migrations.revisions.RevisionFile.plugin`), so removing a plugin
(``portal-boot migrate --remove PLUGIN``) is: the plugin's applied revisions,
reverted children first, and nothing else; refused, before any change, when a
revision of another plugin (or of the application) builds on them.

Alembic's own ``downgrade LABEL@base`` cannot promise that: a revision chained onto
the core (``down_revision = "<core head>"``) that carries ``branch_labels`` has its
label spread down the core chain to the previous branch or merge point, so
``LABEL@base`` lies below core revisions. :func:`check_to_base` refuses such a
``--to LABEL@base`` and names the safe command.

How it is expressed to Alembic: not as a ``downgrade`` target (no target means
"these revisions and nothing else" in every graph), but as the exact list of
downgrade steps handed to the application's env.py through Alembic's
``EnvironmentContext(fn=...)``, the hook ``alembic downgrade`` itself uses
(:meth:`portal_boot.migrations.runner.Session.execute`); Alembic's own bookkeeping
then updates the version table step by step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from portal_boot.errors import MigrationError, UsageError
from portal_boot.migrations import runner
from portal_boot.migrations.preflight import Graph
from portal_boot.migrations.project import Project
from portal_boot.migrations.runner import Step
from portal_boot.plugins import Plugin

log = logging.getLogger(__name__)


def find_plugin(project: Project, name: str) -> Plugin:
    """The enabled plugin ``name`` designates: its entry-point name, its
    distribution, ``module.path.ClassName``, or a branch label of one of its
    revisions. Raises UsageError."""
    name = name.strip()
    for plugin in project.plugins:
        if plugin.matches(name):
            return plugin
    labelled = project.graph.labels.get(name)
    if labelled is not None:
        owner = project.graph.files[labelled].plugin
        if owner is None:
            raise UsageError(
                f"--remove {name}: {name} is a branch label of the application's own "
                f"revision {labelled}, not of a plugin: --remove takes a plugin (its "
                "entry-point name, distribution or branch label)"
            )
        return owner
    for file in project.others:
        if file.plugin is not None and (file.plugin.matches(name) or name in file.branch_labels):
            raise UsageError(
                f"--remove {name}: plugin {file.plugin.name} is installed but not enabled: "
                "its revisions are reverted with it enabled: add it to ENABLED_PLUGINS for "
                f"this command (ENABLED_PLUGINS=<the others>,{file.plugin.name} portal-boot "
                f"migrate --remove {name}), then disable it"
            )
    enabled = ", ".join(p.name for p in project.plugins) or "none"
    raise UsageError(
        f"--remove {name}: no enabled plugin has that entry-point name, distribution or "
        f"branch label (enabled: {enabled})"
    )


def _ancestry(graph: Graph, revision: str) -> set[str]:
    return graph.applied([revision]) - {revision}


def children_first(graph: Graph, revisions: set[str]) -> list[str]:
    """``revisions`` in the order they can be reverted: a revision after every
    revision of the set that builds on it."""
    order: list[str] = []
    left = set(revisions)
    while left:
        ready = sorted(
            (r for r in left if not any(r in graph.parents(o) for o in left - {r})),
            reverse=True,
        )
        if not ready:  # a cycle: Alembic will name it
            ready = sorted(left, reverse=True)
        order += ready
        left -= set(ready)
    return order


def steps(project: Project, current: Sequence[str], name: str) -> tuple[Plugin, list[Step]]:
    """The plugin ``name`` designates and the steps that revert exactly its applied
    revisions, children first. Raises UsageError (no such plugin) and
    MigrationError (a revision that is not the plugin's builds on them)."""
    plugin = find_plugin(project, name)
    graph = project.graph
    own = {f.revision for f in project.files if f.plugin == plugin}
    applied = graph.applied(current)
    removing = own & applied
    dependents = sorted(r for r in applied - own if _ancestry(graph, r) & removing)
    if dependents:
        by_owner: dict[str, list[str]] = {}
        for revision in dependents:
            file = graph.files[revision]
            owner = "the application" if file.plugin is None else f"plugin {file.plugin.name}"
            by_owner.setdefault(owner, []).append(revision)
        named = "; ".join(f"{owner}: {', '.join(revs)}" for owner, revs in by_owner.items())
        plugins = [o.removeprefix("plugin ") for o in by_owner if o.startswith("plugin ")]
        first = (
            f"remove {' and '.join(plugins)} first (portal-boot migrate --remove {plugins[0]})"
            if plugins
            else "downgrade those revisions first"
        )
        raise MigrationError(
            f"--remove {name}: nothing was changed: revisions that are not plugin "
            f"{plugin.name}'s build on its revisions ({named}): {first}, or keep "
            f"{plugin.name}"
        )
    return plugin, [Step(r, False) for r in children_first(graph, removing)]


def check_to_base(project: Project, to: str, planned: Sequence[Step]) -> None:
    """``--to LABEL@base`` for a plugin's label: refuse (MigrationError, before any
    change) when the downgrade Alembic planned reverts revisions that are not that
    plugin's, naming the first one and the safe command."""
    target = to.strip()
    if not target.endswith("@base"):
        return
    label = target[: -len("@base")]
    labelled = project.graph.labels.get(label)
    if labelled is None:
        return
    plugin = project.graph.files[labelled].plugin
    if plugin is None:
        return
    foreign = [
        s.revision
        for s in planned
        if not s.upgrade
        and (
            s.revision not in project.graph.files
            or project.graph.files[s.revision].plugin != plugin
        )
    ]
    if not foreign:
        return
    raise MigrationError(
        f"--to {target} would also downgrade {len(foreign)} revision(s) that are not plugin "
        f"{plugin.name}'s, first {project.describe(foreign[0])}; nothing was changed. Alembic "
        "spreads a branch label down to the previous branch or merge point, so a plugin "
        "revision chained onto a core revision with branch_labels puts LABEL@base below the "
        f"core. To revert only the plugin's revisions: portal-boot migrate --remove {label}"
    )


def check_sql_downgrade(project: Project, url: str, target: str) -> None:
    """``--sql --to LABEL@base`` (``target`` is ``LABEL@head:LABEL@base``): the SQL
    printed is there to be applied by hand, so the same refusal as
    :func:`check_to_base`."""
    start, _, destination = target.rpartition(":")
    if not start or not destination.endswith("@base"):
        return
    with runner.session(project, url, placed={}) as session:
        steps = session.plan("downgrade", destination, [start])
    check_to_base(project, destination, steps)
