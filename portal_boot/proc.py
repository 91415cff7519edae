"""The one way portal-boot starts a child process (pip, uv, gpg).

Argument lists only, never a shell; an explicit environment; output captured and
shown on failure; a SIGTERM that interrupts the wait is forwarded to the child,
which is then reaped, so no orphan outlives portal-boot (one that lands while the
child is being started waits until Popen has returned it: :func:`signals_deferred`).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
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
    child = None
    try:
        # Held back while Popen runs: raised after the fork but before Popen returns,
        # Terminated would leave a child that nobody holds, so nobody could stop it.
        with signals_deferred():
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
        stdout, stderr = child.communicate(input)
    except BaseException:
        # SIGTERM (Terminated) or anything else: pass it on, then reap the child.
        if child is not None:
            _stop(child)
        raise
    result = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    if check and child.returncode != 0:
        raise error(f"{what} failed (exit {child.returncode}): {tail(result)}")
    return result


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with SIGTERM and SIGINT held back, then deliver them to the
    handlers they had. Not an OS signal mask, which children would inherit: the
    Python handlers are swapped for ones that only take note."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python signal handlers
        return
    caught: list[int] = []
    held = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, lambda n, _: caught.append(n)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


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
