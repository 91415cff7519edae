"""Unpack staged wheels into a build folder and compile their bytecode, on every core.

PyPA's ``installer`` still lays every file out (schemes, ``#!python`` scripts, entry
point launchers, the installed RECORD, INSTALLER), so the result is the same tree as
before. What changes is how the work is done:

* **One pass over each file.** ``installer``'s ``validate_record()`` decompresses and
  hashes every file, then ``install()`` decompresses it again to write it. Here the
  RECORD is checked for names, sizes and hashes being present first (no
  decompression), and each file's sha256 and size are checked on the bytes as they are
  streamed from the staged zip into the build folder. A file that does not match fails
  the install; the caller removes the whole build, so nothing unchecked is ever
  published. Every file is read in 1 MiB blocks: a 170 MB wheel is never in memory.
* **Bytecode as each source is written,** from the bytes in hand, by the worker that
  wrote it: the ``.pyc`` ``py_compile`` would write, without reading the source back or
  going through a temporary file (the build folder is private until it is published).
* **On every usable core.** Wheels go to forked worker processes, biggest first (by
  unpacked bytes, ``.py`` bytes weighted for compiling). Workers die with the parent
  (``PR_SET_PDEATHSIG``), are killed and reaped before an error or a SIGTERM goes on
  (so the caller can remove the build with nothing still writing into it), and write
  only into the build folder: a ``kill -9`` mid-install leaves the previous generation
  in use. Two wheels that ship the same file are refused even when written at the same
  moment: files are created with ``O_EXCL``.

Why, and what it gives on a real set (boto3, pandas, pyarrow: 13 wheels, 103 MB, ~9000
files), next to pip and uv: benchmarks/heavy.py and benchmarks/README.md.

Plain arguments only (paths and names), so the caller stays a few lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from portal_boot.errors import InstallError
from portal_boot.wheels.onewheel import Wheel, install_one

log = logging.getLogger(__name__)

_PY_WEIGHT = 15
# Below this (unpacked bytes, .py weighted) one process is faster: 3 small plugins
# took 21 ms in-process and 31 ms with 2 workers.
_PARALLEL_FROM = 4 << 20  # compiling a byte of source costs about this many unpacked bytes


@dataclasses.dataclass
class Outcome:
    warnings: list[str] = dataclasses.field(default_factory=list)
    not_compiled: list[str] = dataclasses.field(default_factory=list)  # "path: error"
    workers: int = 1
    busy: list[float] = dataclasses.field(default_factory=list)  # seconds, per worker


# --- how many workers ----------------------------------------------------------------------


def usable_cpus() -> int:
    """Cores this process may use: its affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes CPU limit), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cpus)


# --- many wheels ---------------------------------------------------------------------------


def _cost(wheel: Wheel) -> int:
    try:
        with zipfile.ZipFile(wheel.path) as zf:
            return sum(
                i.file_size * (_PY_WEIGHT if i.filename.endswith(".py") else 1)
                for i in zf.infolist()
            )
    except (OSError, zipfile.BadZipFile):
        return 0  # reported properly by the worker that gets it


def install_wheels(
    wheels: Sequence[Wheel], build: Path, *, compile_: bool = True, workers: int | None = None
) -> Outcome:
    """Install every wheel into ``build`` (an empty folder) and compile the bytecode.

    ``workers``: processes to use (default: the usable cores, at most one a wheel, and
    just this one for a small set).
    Raises InstallError for the first wheel that fails; the caller removes ``build``
    (every worker has exited by then). Interrupts (SIGTERM's exception, Ctrl-C) stop the
    workers before they propagate.
    """
    costs = {wheel.path: _cost(wheel) for wheel in wheels}
    order = sorted(wheels, key=lambda wheel: costs[wheel.path], reverse=True)
    count = min(workers or usable_cpus(), len(order))
    if workers is None and sum(costs.values()) < _PARALLEL_FROM:
        count = 1  # a fork costs ~5 ms a worker: more than a few small plugins take
    if count > 1 and threading.active_count() > 1:
        log.debug("install: other threads are running, unpacking in this process")
        count = 1
    outcome = Outcome(workers=max(count, 1))
    if count <= 1:
        started = time.monotonic()
        for wheel in order:
            caught, failed = install_one(wheel, build, compile_)
            outcome.warnings += caught
            outcome.not_compiled += failed
        outcome.busy = [time.monotonic() - started]
        return outcome
    _parallel(order, build, compile_, count, outcome)
    return outcome


def _set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when its parent dies (a kill -9 of portal-boot)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _worker(conn: Any, parent: int, order: Sequence[Wheel], build: Path, compile_: bool) -> None:
    """A forked worker: installs the wheels it is sent (by index) until it gets None.
    Never returns: ``os._exit``, so nothing of the parent's stack (its ``finally``
    blocks, atexit) runs here."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
        _set_parent_death_signal()
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
        while True:
            index = conn.recv()
            if index is None:
                break
            try:
                started = time.monotonic()
                caught, failed = install_one(order[index], build, compile_)
                conn.send(("ok", caught, failed, time.monotonic() - started))
            except InstallError as exc:
                conn.send(("error", str(exc), [], 0.0))
            except Exception as exc:  # noqa: BLE001 - reported by the parent, with the wheel
                conn.send(("error", f"{order[index].file} cannot be installed: {exc}", [], 0.0))
        code = 0
    except BaseException:  # noqa: BLE001 - a broken pipe: the parent is gone or gave up
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)


def _parallel(
    order: Sequence[Wheel], build: Path, compile_: bool, count: int, outcome: Outcome
) -> None:
    from multiprocessing import Pipe
    from multiprocessing.connection import wait

    from portal_boot import proc

    pids: dict[Any, int] = {}  # connection: pid
    me = os.getpid()
    try:
        for _ in range(count):
            ours, theirs = Pipe()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # A SIGTERM between the fork and the bookkeeping would leave a worker that
            # nobody stops: held back until the pid is recorded.
            with proc.signals_deferred():
                try:
                    pid = os.fork()
                except OSError as exc:  # EAGAIN: a process limit (pids.max) reached
                    raise InstallError(
                        f"cannot start a process to unpack the wheels ({exc.strerror}): "
                        "raise the container's process limit"
                    ) from None
                if pid == 0:
                    ours.close()
                    _worker(theirs, me, order, build, compile_)
                pids[ours] = pid
            theirs.close()
        pending = list(range(len(order)))
        slot = {conn: n for n, conn in enumerate(pids)}
        outcome.busy = [0.0] * len(pids)
        busy: dict[Any, int] = {}
        for conn in pids:
            busy[conn] = pending.pop(0)
            conn.send(busy[conn])
        while busy:
            for conn in wait(list(busy)):
                try:
                    status, payload, failed, seconds = conn.recv()
                except EOFError:
                    raise InstallError(
                        f"{order[busy[conn]].file} cannot be installed: the worker unpacking "
                        "it died"
                    ) from None
                if status != "ok":
                    raise InstallError(payload)
                outcome.warnings += payload
                outcome.not_compiled += failed
                outcome.busy[slot[conn]] += seconds
                if pending:
                    busy[conn] = pending.pop(0)
                    conn.send(busy[conn])
                else:
                    del busy[conn]
                    conn.send(None)
    except BaseException:
        for pid in pids.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        # Reaped before anything else happens (the caller then removes the build): a
        # SIGTERM that lands now is held back until every worker is gone.
        with proc.signals_deferred():
            for conn, pid in pids.items():
                conn.close()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
