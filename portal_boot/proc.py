"""The one way portal-boot starts a child process (pip, uv, gpg).

Argument lists only, never a shell; an explicit environment; output captured and
shown on failure; a SIGTERM that interrupts the wait is forwarded to the child,
which is then reaped, so no orphan outlives portal-boot.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from portal_boot.errors import BootError
from portal_boot.logs import scrub

log = logging.getLogger(__name__)

# How long a child may take to exit after we forward SIGTERM before it is killed.
_TERM_GRACE = 0.5


def run(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    error: type[BootError],
    what: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` to completion and return the finished process.

    With ``check`` (the default), a non-zero exit raises ``error`` with ``what``
    and the last lines of the child's output. Raises ``error`` too when the
    program cannot be started at all.
    """
    argv = [str(a) for a in args]
    log.debug("running: %s", scrub(shlex.join(argv)))
    try:
        child = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise error(f"{what}: cannot start {argv[0]} ({exc.strerror or exc})") from None
    try:
        stdout, stderr = child.communicate(input)
    except BaseException:
        # SIGTERM (Terminated) or anything else: pass it on, then reap the child.
        _stop(child)
        raise
    result = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    if check and child.returncode != 0:
        raise error(f"{what} failed (exit {child.returncode}): {tail(result)}")
    return result


def tail(result: subprocess.CompletedProcess[bytes], lines: int = 3) -> str:
    """The last few meaningful lines of a child's output, on one line."""
    text = (result.stderr or b"").decode(errors="replace") + (result.stdout or b"").decode(
        errors="replace"
    )
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return scrub(" | ".join(kept[-lines:])) or "no output"


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(_TERM_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
