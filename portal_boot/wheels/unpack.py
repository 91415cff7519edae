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

import base64
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from portal_boot.errors import InstallError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_KEEP_SOURCE = 8 << 20  # a .py file up to this size is compiled from the bytes written
_PY_WEIGHT = 15
# Below this (unpacked bytes, .py weighted) one process is faster: 3 small plugins
# took 21 ms in-process and 31 ms with 2 workers.
_PARALLEL_FROM = 4 << 20  # compiling a byte of source costs about this many unpacked bytes


@dataclasses.dataclass(frozen=True)
class Wheel:
    path: Path  # the staged (verified) copy
    name: str  # distribution name: the headers scheme's folder
    file: str  # the wheel's file name, for messages


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


# --- one wheel -----------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


class _CheckedStream:
    """A zip member's stream that hashes and counts what is read; ``finish`` reads the
    rest and compares with the wheel's RECORD entry."""

    def __init__(self, stream: BinaryIO, name: str, algorithm: str, value: str, size: int):
        self._stream, self._name = stream, name
        self._algorithm, self._value, self._size = algorithm, value, size
        self._reset()

    def _reset(self) -> None:
        self._hash = hashlib.new(self._algorithm)
        self._read = 0

    def _seen(self, data: bytes) -> bytes:
        self._hash.update(data)
        self._read += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._seen(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._seen(self._stream.readline(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:  # installer only rewinds (to fix a script's shebang)
            raise OSError("only a rewind to the start is supported")
        self._stream.seek(0)
        self._reset()
        return 0

    def tell(self) -> int:
        return self._read

    def finish(self) -> None:
        while self.read(_BLOCK):
            pass
        digest = base64.urlsafe_b64encode(self._hash.digest()).decode().rstrip("=")
        if self._read != self._size or digest != self._value:
            raise _Mismatch(f"hash / size of {self._name} didn't match RECORD")


def _checked_source(archive: zipfile.ZipFile) -> Any:
    from installer.records import RecordEntry
    from installer.sources import WheelFile

    class CheckedWheel(WheelFile):  # type: ignore[misc]
        """Every file that has a RECORD hash is checked as it is read (once)."""

        def get_contents(self) -> Iterator[tuple[Any, Any, bool]]:
            for elements, stream, executable in super().get_contents():
                entry = RecordEntry.from_elements(*elements)
                # validate_record(validate_contents=False) made sure that only RECORD
                # itself and its signature files have no hash or size.
                if entry.hash_ is None or entry.size is None:
                    yield elements, stream, executable
                    continue
                checked = _CheckedStream(
                    stream, entry.path, entry.hash_.name, entry.hash_.value, entry.size
                )
                yield elements, checked, executable
                checked.finish()  # also for a file installer skipped (a __pycache__ one)

    return CheckedWheel(archive)


class _Compiler:
    """Writes the ``.pyc`` of a source that was just written, from the bytes in hand.

    What ``py_compile.compile`` writes (the same header, invalidation mode and file
    mode; ``SOURCE_DATE_EPOCH`` selects checked-hash pycs as it does), without reading
    the source back, probing for an old pyc or writing through a temporary file and a
    rename: the build folder is new and private, nobody reads it until it is
    published. Without the importlib helpers (another Python), ``py_compile`` does it.
    """

    def __init__(self) -> None:
        import importlib._bootstrap_external as external
        import importlib.util

        self._cache_from_source = importlib.util.cache_from_source
        self._source_hash = importlib.util.source_hash
        self._timestamp_pyc = getattr(external, "_code_to_timestamp_pyc", None)
        self._hash_pyc = getattr(external, "_code_to_hash_pyc", None)
        self._checked_hash = bool(os.environ.get("SOURCE_DATE_EPOCH"))
        self._dirs: set[str] = set()
        self.errors: list[str] = []

    def __call__(self, path: str, source: bytes | None, mode: int) -> None:
        if self._timestamp_pyc is None or self._hash_pyc is None:
            self._fallback(path)
            return
        if source is None:  # too big to have been kept while it was written
            with open(path, "rb") as fh:
                source = fh.read()
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError...: reported
            self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            return
        if self._checked_hash:
            data = self._hash_pyc(code, self._source_hash(source), True)
        else:
            stat = os.stat(path)
            data = self._timestamp_pyc(code, stat.st_mtime, stat.st_size)
        cfile = self._cache_from_source(path)
        folder = os.path.dirname(cfile)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        fd = os.open(cfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, (mode | 0o200) & 0o666)
        with open(fd, "wb") as out:
            out.write(data)

    def _fallback(self, path: str) -> None:
        import py_compile

        try:
            py_compile.compile(path, doraise=True)
        except py_compile.PyCompileError as exc:
            self.errors.append(f"{path}: {exc.exc_type_name}: {exc.exc_value}")


def _destination(schemes: dict[str, str], compiler: _Compiler | None) -> Any:
    from installer.destinations import SchemeDictionaryDestination
    from installer.records import Hash, RecordEntry

    umask = os.umask(0o022)  # read it (it can only be read by setting it)
    os.umask(umask)
    dirs: set[str] = set()

    class Destination(SchemeDictionaryDestination):  # type: ignore[misc]
        """Files are created with O_EXCL (a clash is found even when two workers write
        the same path at once); a ``.py`` file is compiled as soon as it is written."""

        def write_to_fs(self, scheme: Any, path: str, stream: BinaryIO, is_executable: bool) -> Any:
            root = os.path.abspath(self.scheme_dict[scheme])
            target = os.path.abspath(os.path.join(root, path))  # ".." resolved
            if not target.startswith(root + os.sep):
                raise ValueError(f"Attempting to write {path} outside of the target directory")
            folder = os.path.dirname(target)
            if folder not in dirs:
                os.makedirs(folder, exist_ok=True)
                dirs.add(folder)
            hasher = hashlib.new(self.hash_algorithm)
            size = 0
            keep: list[bytes] | None = [] if compiler and target.endswith(".py") else None
            with open(target, "xb") as out:  # FileExistsError: another wheel wrote it
                while block := stream.read(_BLOCK):
                    hasher.update(block)
                    out.write(block)
                    size += len(block)
                    if keep is not None:
                        keep.append(block)
                        if size > _KEEP_SOURCE:
                            keep = None  # read back when compiled
            mode = 0o666 & ~umask
            if is_executable:
                mode = 0o777 & ~umask | 0o111  # as pip and installer do
                os.chmod(target, mode)
            if compiler and target.endswith(".py"):
                compiler(target, b"".join(keep) if keep is not None else None, mode)
            digest = base64.urlsafe_b64encode(hasher.digest()).decode().rstrip("=")
            return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    return Destination(schemes, interpreter=sys.executable, script_kind="posix")


def _install_one(wheel: Wheel, build: Path, compile_: bool) -> tuple[list[str], list[str]]:
    """Install one wheel into ``build``: (warnings, sources that did not compile).
    Raises InstallError with the message the caller shows."""
    from installer import install as install_wheel
    from installer.exceptions import InstallerError

    # pip --target's layout: libraries at the root, scripts in bin/.
    schemes = {
        "purelib": str(build),
        "platlib": str(build),
        "scripts": str(build / "bin"),
        "headers": str(build / "include" / wheel.name),
        "data": str(build),
    }
    compiler = _Compiler() if compile_ else None
    destination = _destination(schemes, compiler)
    try:
        with warnings.catch_warnings(record=True) as caught, zipfile.ZipFile(wheel.path) as zf:
            warnings.simplefilter("always")
            source = _checked_source(zf)
            source.validate_record(validate_contents=False)
            install_wheel(source, destination, {"INSTALLER": b"portal-boot\n"})
    except FileExistsError as exc:
        clash = str(exc.filename or exc).replace(f"{build}/", "")
        raise InstallError(
            f"{wheel.file} clashes with another wheel ({clash}): remove one of them"
        ) from None
    except (InstallerError, _Mismatch, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        detail = "; ".join(getattr(exc, "issues", [])[:2]) or str(exc)
        raise InstallError(f"{wheel.file} cannot be installed: {detail}") from None
    errors = compiler.errors if compiler else []
    return [str(w.message) for w in caught], [e.replace(f"{build}/", "") for e in errors]


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
            caught, failed = _install_one(wheel, build, compile_)
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
                caught, failed = _install_one(order[index], build, compile_)
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
