"""``portal-boot status``: what is there and what is pending, for people and machines.

Collecting never raises for a problem it can report (an unreachable database is a
line in the report, not a crash); the report's ``exit_code`` is 0 only when
nothing is pending, else the status of the step that would act on it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from portal_boot.errors import BootError
from portal_boot.logs import summarise
from portal_boot.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Report:
    wheels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    plugins: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    generation: str | None = None
    install_pending: bool = False
    database: dict[str, Any] = dataclasses.field(default_factory=dict)
    revisions: dict[str, Any] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    exit_code: int = 0

    @property
    def pending(self) -> bool:
        return self.exit_code != 0

    def _flag(self, code: int, problem: str) -> None:
        self.problems.append(problem)
        # The first problem in pipeline order decides the status.
        if self.exit_code == 0:
            self.exit_code = code

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pending"] = self.pending
        return data

    def as_text(self, verbose: bool = False) -> str:
        out = ["wheels:"]
        out += [f"  {w['file']}: {w['state']}" + (f" ({w['signer']})" if w.get("signer") else "") for w in self.wheels] or ["  none configured"]
        out.append(f"installed plugins (generation {self.generation or 'none'}):")
        out += [
            f"  {p['name']} = {p['value']} ({p['distribution']} {p['version']})"
            + (", migrations" if p["migrations"] else "")
            + (" (own Alembic environment)" if p.get("own_environment") else "")
            + ("" if p["enabled"] else ", disabled")
            for p in self.plugins
        ] or ["  none"]
        db = self.database
        if db:
            state = "reachable" if db.get("reachable") else f"NOT reachable ({db.get('error')})"
            out.append(f"database: {db.get('url')} {state}")
        rev = self.revisions
        if rev:
            out.append(f"revisions: current {', '.join(rev.get('current') or ['none'])}")
            out.append(f"           heads   {', '.join(rev.get('heads') or ['none'])}")
            if rev.get("pending"):
                pending = summarise(rev["pending"], full=verbose)
                listed = verbose or pending == ", ".join(rev["pending"])
                more = "" if listed else " (--verbose or --json lists all)"
                out.append(f"           pending {pending}{more}")
            for env in rev.get("environments") or []:
                if env["plugin"] is None:
                    continue  # the application's: the lines above
                out.append(
                    f"plugin {env['plugin']} (own Alembic environment, version table "
                    f"{env['version_table']}): current {', '.join(env['current']) or 'none'}, "
                    f"heads {', '.join(env['heads']) or 'none'}"
                    + (f", pending {summarise(env['pending'], full=verbose)}" if env["pending"] else "")
                )
        if self.problems:
            out.append("pending:")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("nothing pending")
        return "\n".join(out)


def _wheels(settings: Settings, report: Report) -> None:
    from portal_boot import wheels

    if settings.requirements:
        if wheels.is_pending(settings):
            report.install_pending = True
            report._flag(4, "the pinned requirements differ from the installed generation: run portal-boot install")
        return
    if settings.no_plugins:
        if wheels.is_pending(settings):
            report.install_pending = True
            report._flag(
                4, "--no-plugins: the installed generation is not empty: run portal-boot install"
            )
        return
    if settings.wheel_dir is None:
        return

    try:
        states = wheels.wheel_states(settings)
    except BootError as exc:
        report._flag(exc.exit_code, str(exc))
        return
    for path, signer, state in states:
        report.wheels.append({"file": path.name, "state": state, "signer": signer})
        if state != "valid" and settings.signatures == "require":
            report._flag(3, f"{path.name}: {state}")
    if wheels.is_pending(settings):
        report.install_pending = True
        report._flag(4, "the wheel folder differs from the installed generation: run portal-boot install")


def _plugins(settings: Settings, report: Report) -> list[Any]:
    from portal_boot import wheels
    from portal_boot.migrations import has_own_environment
    from portal_boot.plugins import discover_installed, select

    generation = wheels.current_generation(settings.target)
    report.generation = generation.name if generation else None
    try:
        wheels.refuse_unsigned_generation(settings.target, settings.signatures)
    except BootError as exc:
        report._flag(exc.exit_code, str(exc))
    found = discover_installed(settings.target, settings.entry_point_group)
    try:
        enabled = select(found, settings.enabled_plugins)
    except BootError as exc:
        report._flag(exc.exit_code, str(exc))
        enabled = []
    for plugin in found:
        report.plugins.append(
            {
                "name": plugin.name,
                "value": plugin.value,
                "distribution": plugin.distribution,
                "version": plugin.version,
                "migrations": str(plugin.migrations_dir) if plugin.migrations_dir else None,
                "own_environment": has_own_environment(plugin),
                "enabled": plugin in enabled,
            }
        )
    return enabled


def _database(settings: Settings, report: Report, plugins: list[Any]) -> None:
    if not settings.database_url:
        return
    from portal_boot import migrations
    from portal_boot.database import wait_for_database
    from portal_boot.dburl import mask, parse, to_sync_url

    try:
        url = to_sync_url(settings.database_url)
    except BootError as exc:
        report._flag(exc.exit_code, str(exc))
        return
    report.database = {"url": mask(parse(url)), "reachable": False, "error": None}
    try:
        # One short look, not the boot's full wait: status answers now.
        wait_for_database(url, timeout=min(settings.db_timeout, 3.0))
    except BootError as exc:
        report.database["error"] = str(exc)
        report._flag(exc.exit_code, f"database not reachable: {exc}")
        return
    report.database["reachable"] = True
    try:
        state = migrations.revision_state(settings, plugins, url=url)
    except BootError as exc:
        report._flag(exc.exit_code, str(exc))
        return
    report.revisions = {
        "current": sorted(state.current),
        "heads": sorted(state.heads),
        "pending": list(state.pending),
        # One entry an Alembic environment: the application's first (the keys above),
        # then each plugin that brings its own, with its version table.
        "environments": [
            {
                "environment": "application",
                "plugin": None,
                "version_table": "alembic_version",
                "current": sorted(state.current),
                "heads": sorted(state.heads),
                "pending": list(state.pending),
            },
            *state.environments,
        ],
    }
    pending = len(state.pending) + sum(len(e["pending"]) for e in state.environments)
    if pending:
        report._flag(6, f"{pending} migration(s) to apply: run portal-boot migrate")


def collect(settings: Settings) -> Report:
    """Gather the report. Raises only on a usage error that makes it meaningless."""
    report = Report()
    _wheels(settings, report)
    plugins = _plugins(settings, report)
    _database(settings, report, plugins)
    return report
