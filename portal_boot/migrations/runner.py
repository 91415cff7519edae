"""Running one Alembic command in-process over a run's :class:`~portal_boot.migrations.project.Project`.

The application's ``env.py`` is used as it is: ``sqlalchemy.url`` is set to the
sync URL (so an ``env.py`` from Alembic's generic template works unchanged) and
portal-boot's connection is offered in ``config.attributes["connection"]``
(Alembic's "sharing a connection" recipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.errors import MigrationError, Terminated
from portal_boot.migrations import landing
from portal_boot.migrations.project import Project, current_revisions, first_line
from portal_boot.migrations.revisions import RevisionFile

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


def alembic_config(project: Project, url: str, locations: Sequence[Path] | None) -> Config:
    """A fresh Config for one command: the sync URL, and this run's version locations."""
    from alembic.config import Config

    class _RunConfig(Config):
        def get_version_locations_list(self) -> list[str] | None:
            if locations is None:
                return super().get_version_locations_list()
            return [str(p) for p in locations]

    config = _RunConfig(str(project.sources.alembic_config), stdout=sys.stdout)
    config.file_config  # noqa: B018 - parse while the file name is still set
    # The generic env.py runs logging.config.fileConfig() on the ini, which would
    # replace portal-boot's handlers (and their password masking, and the JSON
    # format) and disable its loggers. portal-boot owns logging here.
    config.config_file_name = None
    # configparser reads '%' as interpolation; a URL-encoded password has them.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def run_locations(project: Project) -> list[Path] | None:
    if project.sources.migrations_mode != "locations":
        return None  # the files were placed in the versions folder
    from portal_boot.migrations.environments import is_own_environment

    extra = [
        p.migrations_dir
        for p in project.plugins
        if p.migrations_dir is not None and not is_own_environment(p)
    ]
    return [*project.app_locations, *(d for d in extra if d not in project.app_locations)]


def project_state(project: Project) -> contextlib.AbstractContextManager[None]:
    return process_state(project.sources.target)


@contextlib.contextmanager
def process_state(plugin_target: Path) -> Iterator[None]:
    """What Alembic's loading of env.py and the revision files needs, undone after."""
    saved_path, saved_bytecode = list(sys.path), sys.dont_write_bytecode
    # Loading env.py and the revisions would write __pycache__ folders into the
    # application and the plugins (read-only in an image, byte-for-byte checked
    # in tests).
    sys.dont_write_bytecode = True
    target = str(plugin_target.absolute())
    if plugin_target.is_dir() and target not in sys.path:
        # Plugin revisions may import their package; appended, so the image's own
        # packages win, as in the served application.
        sys.path.append(target)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = saved_bytecode


def run(
    project: Project,
    url: str,
    conn: Connection,
    command_name: str,
    target: str,
    *,
    placed: dict[Path, RevisionFile],
    commit: bool = True,
    passthrough: Callable[[BaseException], bool] | None = None,
) -> None:
    """Run ``alembic <command_name> <target>`` on ``conn`` and commit (unless
    ``commit`` is false: the caller owns the transaction): the steps as Alembic plans
    them, checked to land on the database portal-boot reads. Raises MigrationError
    naming the failed revision; lets Terminated through, and the errors
    ``passthrough`` picks (the caller retries those)."""
    log.info("%s to %s", command_name, target)
    with session(project, url, placed=placed) as loaded:
        current = current_revisions(conn, keep_transaction=not commit)
        steps = loaded.plan(command_name, target, current)
        loaded.execute(
            conn, steps, current, destination=target, commit=commit, passthrough=passthrough
        )


@dataclasses.dataclass(frozen=True)
class Step:
    """One revision Alembic is to apply (``upgrade``) or revert."""

    revision: str
    upgrade: bool


class Session:
    """The application's Alembic scripts loaded once for a run: plan the steps of a
    command (:meth:`plan`), or take them from elsewhere (a plugin's removal), check
    them, then run exactly those (:meth:`execute`). Made by :func:`session`."""

    def __init__(
        self, project: Project, url: str, placed: dict[Path, RevisionFile]
    ) -> None:
        from alembic.script import ScriptDirectory

        self.project, self.url, self.placed = project, url, placed
        self.config = alembic_config(project, url, run_locations(project))
        try:
            self.script: ScriptDirectory = ScriptDirectory.from_config(self.config)
            self.script.revision_map.heads  # noqa: B018 - load every revision file now
        except Exception as exc:
            reraise_termination(exc)
            log.debug("loading the revisions failed", exc_info=True)
            failed = failed_revision(exc, project.files, placed)
            if failed is not None:
                raise MigrationError(
                    f"revision {failed.revision} ({failed.owner}) cannot be loaded: "
                    f"{first_line(exc)}: fix {failed.path}, or disable the plugin it comes "
                    "from (ENABLED_PLUGINS)"
                ) from None
            raise MigrationError(
                f"Alembic cannot load the revisions: {first_line(exc)}: fix the revision "
                "files, or disable the plugin they come from (ENABLED_PLUGINS)"
            ) from None

    def plan(self, command_name: str, target: str, current: Sequence[str]) -> list[Step]:
        """The steps ``alembic <command_name> <target>`` would take from ``current``,
        as Alembic's own command computes them. Raises MigrationError."""
        compute = (
            self.script._upgrade_revs if command_name == "upgrade" else self.script._downgrade_revs
        )
        try:
            steps = compute(target, tuple(current))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - Alembic's errors are the revisions' problem
            reraise_termination(exc)
            raise MigrationError(
                f"Alembic cannot plan the {command_name} to {target}: {first_line(exc)}: "
                "check the revisions named, or give another --to"
            ) from None
        return [Step(step.revision.revision, step.is_upgrade) for step in steps]

    def execute(
        self,
        conn: Connection,
        steps: Sequence[Step],
        current: Sequence[str],
        *,
        destination: str | None,
        commit: bool = True,
        passthrough: Callable[[BaseException], bool] | None = None,
    ) -> None:
        """Run exactly ``steps`` through the application's env.py, on ``conn`` when
        env.py takes it; then read the versions again on ``conn`` and check they are
        where the steps lead (:mod:`portal_boot.migrations.landing`). Raises
        MigrationError; lets Terminated through."""
        from alembic.runtime.environment import EnvironmentContext
        from alembic.runtime.migration import MigrationStep

        script = self.script
        wanted = [
            (MigrationStep.upgrade_from_script if step.upgrade else MigrationStep.downgrade_from_script)(
                script.revision_map, script.get_revision(step.revision)
            )
            for step in steps
        ]
        where = landing.where(self.url)
        log_outside_transaction(self.project, steps)

        def fn(heads: Sequence[str], context: object) -> list:
            # Alembic read these on the connection env.py gave it: the database that
            # is about to be migrated. Before any step runs.
            landing.check_same(heads, current, where)
            return wanted

        self.config.attributes["connection"] = conn
        words = ", ".join(f"{'+' if s.upgrade else '-'}{s.revision}" for s in steps)
        log.info("running %d step(s): %s", len(steps), words)
        try:
            with EnvironmentContext(
                self.config, script, fn=fn, as_sql=False, destination_rev=destination
            ):
                script.run_env()
            if commit and conn.in_transaction():  # an env.py that left its transaction to us
                conn.commit()
        except MigrationError:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        except Exception as exc:
            reraise_termination(exc)
            if passthrough is not None and passthrough(exc):
                raise
            log.debug("migration failed", exc_info=True)
            raise _failure(exc, self.project, conn, self.placed) from None
        landing.check_landed(
            self.project.graph,
            current,
            steps,
            current_revisions(conn, keep_transaction=not commit),
            where,
        )


def log_outside_transaction(project: Project, steps: Sequence[Step]) -> None:
    """Revisions whose step uses autocommit_block(): the one-transaction promise
    does not hold from there on (README "One transaction")."""
    for step in steps:
        file = project.graph.files.get(step.revision)
        direction = "upgrade" if step.upgrade else "downgrade"
        if file is None or direction not in file.autocommit:
            continue
        log.warning(
            "revision %s (%s) runs part of its %s outside the migration's transaction "
            "(op.get_context().autocommit_block(), e.g. CREATE INDEX CONCURRENTLY): the "
            "steps before it are committed when that block starts, so a failure or a kill "
            "from there on leaves them committed and %s %s, with the block's work possibly "
            "half-done (e.g. an INVALID index); the next migrate runs its %s again",
            step.revision,
            file.owner,
            direction,
            step.revision,
            "not recorded as applied" if step.upgrade else "still recorded as applied",
            direction,
        )


@contextlib.contextmanager
def session(
    project: Project, url: str, *, placed: dict[Path, RevisionFile]
) -> Iterator[Session]:
    """A :class:`Session`, with the process state loading the revisions needs."""
    with project_state(project):
        yield Session(project, url, placed)


def reraise_termination(exc: BaseException) -> None:
    """A SIGTERM in the middle of a statement can surface as a cleanup error
    (the connection was invalidated) with the Terminated as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Terminated):
            raise exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def failed_revision(
    exc: BaseException,
    files: Sequence[RevisionFile],
    placed: dict[Path, RevisionFile] | None = None,
) -> RevisionFile | None:
    """The revision file whose code raised ``exc`` (the innermost one in its
    traceback), or None."""
    by_path = {str(f.path.resolve()): f for f in files}
    by_path.update({str(path.resolve()): f for path, f in (placed or {}).items()})
    failed = None
    tb = exc.__traceback__
    while tb is not None:
        file = by_path.get(str(Path(tb.tb_frame.f_code.co_filename).resolve()))
        failed = file or failed
        tb = tb.tb_next
    return failed


def failed_name(exc: BaseException, project: Project, placed: dict[Path, RevisionFile]) -> str:
    """The revision an error of the upgrade came from, for a message."""
    failed = failed_revision(exc, project.files, placed)
    return f"revision {failed.revision} ({failed.owner})" if failed else "the upgrade"


def _failure(
    exc: Exception, project: Project, conn: Connection, placed: dict[Path, RevisionFile]
) -> MigrationError:
    failed = failed_revision(exc, project.files, placed)
    stays = ""
    with contextlib.suppress(Exception):
        conn.rollback()
        current = current_revisions(conn)
        stays = f"; the database stays at {', '.join(current) or 'no revision'}"
    if failed is not None:
        return MigrationError(
            f"revision {failed.revision} ({failed.owner}) failed: {first_line(exc)}{stays}: "
            f"fix {failed.path} or the database, then run portal-boot migrate again"
        )
    return MigrationError(
        f"the migration failed: {first_line(exc)}{stays}: fix the cause (see the log above; "
        "--log-level debug shows the traceback), then run portal-boot migrate again"
    )


def print_sql(project: Project, url: str, command_name: str, target: str) -> None:
    """Offline mode: Alembic writes the SQL of ``command_name`` to ``target`` (a
    ``FROM:TO`` range or a destination) to stdout; nothing connects."""
    from alembic import command

    with contextlib.ExitStack() as stack:
        locations = run_locations(project)
        if project.sources.migrations_mode != "locations":
            # Show what link/copy would place, without writing into the versions
            # folder: a temporary folder of links to this run's revision files.
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-boot-sql-"))
            )
            for i, file in enumerate(project.files):
                (folder / f"{i:04d}_{file.path.name}").symlink_to(file.path.resolve())
            locations = [folder]
        config = alembic_config(project, url, locations)
        stack.enter_context(project_state(project))
        try:
            getattr(command, command_name)(config, target, sql=True)
        except Exception as exc:
            reraise_termination(exc)
            log.debug("printing the SQL failed", exc_info=True)
            failed = failed_revision(exc, project.files)
            if failed is not None:
                # Offline, op.get_bind() is a mock: a revision that reads data or
                # manages its own session needs a live database.
                raise MigrationError(
                    f"revision {failed.revision} ({failed.owner}) cannot be rendered as SQL "
                    f"offline: its code needs a live database ({first_line(exc)}): apply it "
                    "with portal-boot migrate; --sql --to REV prints the SQL up to the revision "
                    "before it, --sql --to FROM:TO the SQL of a range after it"
                ) from None
            raise MigrationError(
                f"printing the SQL for {target} failed: {first_line(exc)}: check the "
                "revision named, or give --to FROM:TO"
            ) from None
