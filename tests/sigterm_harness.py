"""Stop a real portal-boot with SIGTERM at a chosen moment and see what it leaves behind.

Run as a script (``python tests/sigterm_harness.py SPEC_JSON``), never imported into
pytest's own process: the harness makes itself a *child subreaper*
(``PR_SET_CHILD_SUBREAPER``), so that every process portal-boot leaves behind is
handed to it by the kernel instead of to the host's init, where it could not be
seen. pytest itself must not become one (every other test's orphans would pile up
in it). :func:`stop` is the pytest-side wrapper.

The spec (JSON) says::

    argv        the command (portal-boot, possibly under ``unshare``)
    env, cwd    its environment and working folder
    signal_to   "child" (default) or "grandchild": whom to signal (under
                ``unshare --fork`` portal-boot is unshare's child, PID 1 of its namespace)
    trigger     {"child": ["gpg", ...]}: when portal-boot has a child with one of these
                names; {"stderr": "text"}: when that text appears on its stderr;
                {"after": seconds}: that long after the start
    delay       seconds to wait after the trigger before signalling (the random moment)
    timeout     give up (and kill everything) after this long

and prints one JSON object: the exit status, the seconds from SIGTERM to exit, what
triggered, the children portal-boot had at that moment, the orphans (processes
handed to the harness: pid, name, state, how they ended), and stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    started = time.monotonic()
    proc = subprocess.Popen(
        spec["argv"], env=spec["env"], cwd=spec.get("cwd"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            chunks.append(line)  # noqa: PERF402 - line by line: the trigger reads it meanwhile

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timeout = float(spec.get("timeout", 60))
    trigger = spec.get("trigger", {"after": 0})
    target = proc.pid
    triggered, kids_then = None, []
    while triggered is None and proc.poll() is None:
        now = time.monotonic()
        if now - started > timeout:
            break
        if spec.get("signal_to") == "grandchild":
            inner = _children(proc.pid)
            if not inner:
                time.sleep(0.001)
                continue
            target = inner[0]
        kids = {pid: name(pid) for pid in descendants(target)}
        if "child" in trigger:
            hit = [n for n in kids.values() if n in trigger["child"]]
            if hit:
                triggered, kids_then = f"child {hit[0]}", sorted(kids.values())
        elif "stderr" in trigger:
            if trigger["stderr"].encode() in b"".join(chunks):
                triggered, kids_then = f"stderr {trigger['stderr']!r}", sorted(kids.values())
        elif now - started >= float(trigger["after"]):
            triggered, kids_then = f"after {trigger['after']} s", sorted(kids.values())
        if triggered is None:
            time.sleep(0.001)
    if triggered is not None:
        time.sleep(float(spec.get("delay", 0)))
    sent = time.monotonic()
    alive_at_signal = proc.poll() is None
    if alive_at_signal:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
    try:
        code = proc.wait(max(1.0, timeout - (sent - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        triggered = f"{triggered} (and did not exit: killed)"
    seconds = time.monotonic() - sent
    reader.join(5)
    # Whatever portal-boot left behind is now ours: running, or a zombie.
    time.sleep(float(spec.get("settle", 0.3)))
    orphans = []
    for pid in _children(os.getpid()):
        orphans.append({"pid": pid, "name": name(pid), "state": state(pid)})
    for orphan in orphans:
        if orphan["state"] not in ("Z", "gone"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan["pid"], signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(orphan["pid"], 0)
            orphan["ended"] = os.waitstatus_to_exitcode(status)
    return {
        "code": code,
        "seconds": seconds,
        "signalled": alive_at_signal,
        "triggered": triggered,
        "children_at_trigger": kids_then,
        "orphans": orphans,
        "stderr": b"".join(chunks).decode(errors="replace"),
    }


def stop(
    argv: list[str],
    env: dict[str, str],
    *,
    trigger: dict[str, Any],
    delay: float = 0.0,
    cwd: Path | str | None = None,
    signal_to: str = "child",
    timeout: float = 60,
) -> dict[str, Any]:
    """From pytest: run the harness in a child process and return its report."""
    spec = {
        "argv": argv, "env": env, "cwd": str(cwd) if cwd else None, "trigger": trigger,
        "delay": delay, "signal_to": signal_to, "timeout": timeout,
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout + 30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"the harness failed:\n{done.stderr}")
    return json.loads(done.stdout)


if __name__ == "__main__":
    print(json.dumps(_run(json.loads(sys.argv[1]))))
