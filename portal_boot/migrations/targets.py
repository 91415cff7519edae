"""What ``--to`` and ``--sql --to`` mean: the Alembic command (upgrade or downgrade)
and its target, by Alembic's own rules, from the revision files alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from portal_boot.errors import UsageError
from portal_boot.migrations.project import Project, first_line


def command_for(project: Project, to: str | None, current: Sequence[str]) -> tuple[str, str]:
    """``upgrade``, ``downgrade`` or ``""`` (nothing to do), and the target. A
    target the database has, with later revisions of its line applied too, is a
    downgrade."""
    if to is None:
        return "upgrade", "heads"
    target = to.strip()
    if target in ("heads", "head") or target.endswith(("@head", "@heads")):
        return "upgrade", target
    if target == "base" or target.endswith("@base"):
        return "downgrade", target
    relative = re.search(r"([+-])\d+$", target)
    if relative:
        return ("upgrade" if relative.group(1) == "+" else "downgrade"), target
    revision = resolve(project, target)
    applied = project.graph.applied(current)
    if revision not in applied:
        return "upgrade", target
    if project.graph.later(revision) & applied:
        return "downgrade", target
    # Applied, with nothing after it on its own line: Alembic would refuse a
    # downgrade ("not a valid downgrade target"), and an upgrade does nothing.
    return "", target


def _is_downgrade_syntax(target: str) -> bool:
    return target == "base" or target.endswith("@base") or bool(re.search(r"-\d+$", target))


def sql_command(project: Project, to: str | None) -> tuple[str, str]:
    """The offline command: without a database the direction comes from the
    target alone, or from a ``FROM:TO`` range; a downgrade needs its start."""
    target = (to or "heads").strip()
    start, _, destination = target.rpartition(":")
    if start:
        if _is_downgrade_syntax(destination):
            return "downgrade", target
        down = resolve(project, destination) in project.graph.applied(
            [resolve(project, start)]
        ) - {resolve(project, start)}
        return ("downgrade" if down else "upgrade"), target
    if not _is_downgrade_syntax(destination):
        return "upgrade", target
    if destination.endswith("@base") and destination != "@base":
        # A plugin branch's whole downgrade starts at that branch's head.
        return "downgrade", f"{destination[: -len('@base')]}@head:{destination}"
    if len(project.graph.heads) == 1:
        return "downgrade", f"heads:{destination}"
    raise UsageError(
        f"--sql --to {target}: printing a downgrade needs its starting point: give "
        f"--to FROM:{destination} with FROM one of the heads "
        f"({', '.join(project.graph.heads)}), or LABEL@base for one plugin's branch"
    )


def resolve(project: Project, target: str) -> str:
    """The revision id ``target`` names, by Alembic's rules (prefix, branch label)."""
    from alembic.script.revision import Revision, RevisionError, RevisionMap

    revisions = RevisionMap(
        lambda: [
            Revision(
                f.revision, f.down_revisions or None, f.depends_on or None, f.branch_labels or None
            )
            for f in project.files
        ]
    )
    try:
        found = revisions.get_revision(target)
    except RevisionError as exc:
        found, why = None, first_line(exc)
    else:
        why = "no such revision or branch label"
    if found is None:
        raise UsageError(
            f"--to {target}: {why}; the heads are {', '.join(project.graph.heads) or 'none'} "
            "(give a revision id, LABEL@base, LABEL@head, heads or base)"
        )
    return found.revision
