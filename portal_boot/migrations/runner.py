"""Running one Alembic command in-process over a run's :class:`~portal_boot.migrations.project.Project`.

The application's ``env.py`` is used as it is: ``sqlalchemy.url`` is set to the
sync URL (so an ``env.py`` from Alembic's generic template works unchanged) and
portal-boot's connection is offered in ``config.attributes["connection"]``
(Alembic's "sharing a connection" recipe).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from portal_boot.errors import MigrationError, Terminated
from portal_boot.migrations.project import Project, current_revisions, first_line
from portal_boot.migrations.revisions import RevisionFile

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


def _alembic_config(project: Project, url: str, locations: Sequence[Path] | None) -> Config:
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


def _run_locations(project: Project) -> list[Path] | None:
    if project.sources.migrations_mode != "locations":
        return None  # the files were placed in the versions folder
    extra = [p.migrations_dir for p in project.plugins if p.migrations_dir is not None]
    return [*project.app_locations, *(d for d in extra if d not in project.app_locations)]


@contextlib.contextmanager
def _process_state(project: Project) -> Iterator[None]:
    """What Alembic's loading of env.py and the revision files needs, undone after."""
    saved_path, saved_bytecode = list(sys.path), sys.dont_write_bytecode
    # Loading env.py and the revisions would write __pycache__ folders into the
    # application and the plugins (read-only in an image, byte-for-byte checked
    # in tests).
    sys.dont_write_bytecode = True
    target = str(project.sources.target.absolute())
    if project.sources.target.is_dir() and target not in sys.path:
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
    """Run ``alembic.command.<command_name>(config, target)`` on ``conn`` and commit
    (unless ``commit`` is false: the caller owns the transaction). Raises
    MigrationError naming the failed revision; lets Terminated through, and the
    errors ``passthrough`` picks (the caller retries those)."""
    from alembic import command

    config = _alembic_config(project, url, _run_locations(project))
    config.attributes["connection"] = conn
    log.info("%s to %s", command_name, target)
    with _process_state(project):
        try:
            getattr(command, command_name)(config, target)
            if commit and conn.in_transaction():  # an env.py that left its transaction to us
                conn.commit()
        except Exception as exc:
            reraise_termination(exc)
            if passthrough is not None and passthrough(exc):
                raise
            log.debug("migration failed", exc_info=True)
            raise _failure(exc, project, conn, placed) from None


def reraise_termination(exc: BaseException) -> None:
    """A SIGTERM in the middle of a statement can surface as a cleanup error
    (the connection was invalidated) with the Terminated as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Terminated):
            raise exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def failed_file(
    exc: BaseException, project: Project, placed: dict[Path, RevisionFile]
) -> RevisionFile | None:
    """The revision file in whose code ``exc`` was raised, if any."""
    by_path = {str(f.path.resolve()): f for f in project.files}
    by_path.update({str(path.resolve()): f for path, f in placed.items()})
    failed = None
    tb = exc.__traceback__
    while tb is not None:
        file = by_path.get(str(Path(tb.tb_frame.f_code.co_filename).resolve()))
        failed = file or failed
        tb = tb.tb_next
    return failed


def failed_name(exc: BaseException, project: Project, placed: dict[Path, RevisionFile]) -> str:
    """The revision an error of the upgrade came from, for a message."""
    failed = failed_file(exc, project, placed)
    return f"revision {failed.revision} ({failed.owner})" if failed else "the upgrade"


def _failure(
    exc: Exception, project: Project, conn: Connection, placed: dict[Path, RevisionFile]
) -> MigrationError:
    failed = failed_file(exc, project, placed)
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
        locations = _run_locations(project)
        if project.sources.migrations_mode != "locations":
            # Show what link/copy would place, without writing into the versions
            # folder: a temporary folder of links to this run's revision files.
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-boot-sql-"))
            )
            for i, file in enumerate(project.files):
                (folder / f"{i:04d}_{file.path.name}").symlink_to(file.path.resolve())
            locations = [folder]
        config = _alembic_config(project, url, locations)
        stack.enter_context(_process_state(project))
        try:
            getattr(command, command_name)(config, target, sql=True)
        except Exception as exc:
            reraise_termination(exc)
            log.debug("printing the SQL failed", exc_info=True)
            raise MigrationError(
                f"printing the SQL for {target} failed: {first_line(exc)}: check the "
                "revision named, or give --to FROM:TO"
            ) from None
