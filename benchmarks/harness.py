"""The benchmark's plumbing: start a boot, time it to the first HTTP 200, stop it, and
clean up everything the run made, also on Ctrl-C or SIGTERM.

Nothing here knows about portal-boot: a boot is an argument list, a working folder and
an environment. Every child runs in a session of its own (``start_new_session``), so a
Ctrl-C in the terminal reaches only the benchmark, which then stops its children
itself, by process group, and removes its folders and clusters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

POLL = 0.005  # seconds between two /health attempts


class Reaper:
    """Everything to undo at exit: children (by process group), callbacks, folders.

    ``close`` runs once, in reverse order of registration; it is called from the
    benchmark's ``finally`` and from ``atexit``."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False

    def proc(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self._procs.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def call(self, func: Callable[[], None]) -> None:
        self._undo.append(func)

    def folder(self, path: Path) -> Path:
        self._undo.append(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in list(self._procs):
            stop(proc)
        for func in reversed(self._undo):
            with contextlib.suppress(Exception):
                func()


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: the ``finally`` blocks run and clean up."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C or
    # kill -INT must still stop the run and clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, on_term)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        # Reaped: its pid (and group id) may belong to someone else by now.
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(port: int, path: str = "/health") -> int | None:
    """The status of one GET on 127.0.0.1:port, or None when nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(256)
                if not chunk:
                    return None
                head += chunk
    except OSError:
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclasses.dataclass
class Boot:
    """One timed boot's outcome."""

    ok: bool
    seconds: float | None  # spawn -> first 200 on /health
    exec_seconds: float | None  # spawn -> the process became the server (exec seen)
    error: str = ""
    log: str = ""


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def timed_boot(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    port: int,
    log: Path,
    exec_marker: str | None = None,
    timeout: float = 120.0,
) -> Boot:
    """Spawn ``argv``, poll /health every 5 ms until it answers 200, then stop it.

    ``exec_marker``: a string that appears in the process's command line once it has
    exec'd into the server (the moment is noted at the poll's resolution).
    """
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = reaper.proc(
            subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    exec_at: float | None = None
    try:
        while True:
            now = time.perf_counter()
            if exec_marker is not None and exec_at is None and exec_marker in _cmdline(proc.pid):
                exec_at = now - started
            if http_status(port) == 200:
                elapsed = time.perf_counter() - started
                return Boot(True, elapsed, exec_at if exec_marker else None, log=str(log))
            code = proc.poll()
            if code is not None:
                return Boot(
                    False, None, None, f"exited {code} before serving: {tail(log)}", str(log)
                )
            if now - started > timeout:
                return Boot(
                    False,
                    None,
                    None,
                    f"no 200 on /health within {timeout:.0f} s: {tail(log)}",
                    str(log),
                )
            time.sleep(POLL)
    finally:
        stop(proc)
        reaper.forget(proc)


def run_quiet(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """A set-up command (not timed): raises with its output when it fails."""
    done = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}"
        )
    return done


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


class ExitWatch:
    """Notes when each of several children exits (a thread per child, blocked in wait)."""

    def __init__(self) -> None:
        self.exits: dict[str, tuple[float, int]] = {}
        self._threads: list[threading.Thread] = []

    def watch(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        def wait() -> None:
            code = proc.wait()
            self.exits[name] = (time.perf_counter(), code)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
