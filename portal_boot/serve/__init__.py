"""Stage 5: replace portal-boot with uvicorn (``exec``), so uvicorn receives the
container's signals directly and becomes the main process.

uvicorn runs through :mod:`portal_boot.serve.launch`, which appends the plugin target to
``sys.path`` *after* the image's site-packages: the image's own packages win over
same-named packages from the target, and the plugins' entry points are
discoverable by ``importlib.metadata``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from portal_boot.errors import UsageError, denied
from portal_boot.settings import Settings

log = logging.getLogger(__name__)


def uvicorn_argv(
    plugin_path: Path,
    app: str,
    host: str,
    port: int,
    extra: Sequence[str] = (),
    *,
    log_format: str = "text",
    log_level: str = "info",
) -> list[str]:
    """The command line portal-boot execs. Arguments after ``--`` come last, so a
    ``--port`` given there wins over portal-boot's own. The launcher's own options
    (the log format and level, for uvicorn's lines) come before the target."""
    try:
        os.listdir(plugin_path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing installed: the application starts with the image's plugins only
    except OSError as exc:  # uvicorn would start without the plugins, and say nothing
        raise UsageError(
            denied(
                exc,
                "cannot read the plugin target",
                "make the state folder readable by this user or its group (group 0 with "
                "chmod g=u for OpenShift's arbitrary uid), or run serve as the user that "
                "installed",
            )
        ) from None
    return [
        sys.executable,
        "-m",
        "portal_boot.serve.launch",
        f"--log-format={log_format}",
        f"--log-level={log_level}",
        str(plugin_path),
        app,
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def _reap_children() -> None:
    """As PID 1 (no init process), collect any exited child before the exec."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def exec_uvicorn(settings: Settings, plugin_path: Path, extra: Sequence[str] = ()) -> NoReturn:
    """Exec uvicorn with ``settings.app`` on ``settings.host:port`` and ``plugin_path``
    (the resolved generation, not the link: a later install switching the link cannot
    change a running server's imports halfway through its life) on sys.path. Never
    returns.

    portal-boot's own database connections are closed by the steps that opened
    them; Python's descriptors are not inherited across exec (PEP 446), so none
    can leak into the server.
    """
    argv = uvicorn_argv(
        plugin_path,
        settings.app,
        settings.host,
        settings.port,
        extra,
        log_format=settings.log_format,
        log_level=settings.log_level,
    )
    log.info(
        "serve: exec uvicorn %s on %s:%d (plugins from %s)",
        settings.app,
        settings.host,
        settings.port,
        settings.target,
        extra={"step": "serve", "event": "exec"},
    )
    _reap_children()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, dict(settings.environ))
