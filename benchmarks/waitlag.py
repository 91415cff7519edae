"""The wait-lag scenario: a database started late. portal-boot's ``wait-db`` and a
fixed-interval shell loop (``until pg_isready ...; do sleep 1; done``, the
dockerize/wait4x style) start waiting together; the server starts ``delay`` seconds
later; a tight psycopg loop here notes when it first answers a query. The lag of a
waiter is its exit minus that moment.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import harness
from harness import Reaper, median
from workspace import Workspace, ms, say

TARGET_MS = 100.0  # issue 7: a ready database is noticed within 100 ms


def run(ws: Workspace, runs: int, warmup: int, delay: float, reaper: Reaper) -> dict[str, Any]:
    """A database started ``delay`` s after portal-boot wait-db (and a fixed-interval
    pg_isready loop) began waiting: how long after the server first answers a query
    (noticed by a tight psycopg loop here) each waiter exits."""
    import psycopg
    from pgserver import LocalCluster

    cluster = LocalCluster()
    reaper.call(LocalCluster.remove_template)
    reaper.call(cluster.destroy)
    url = cluster.admin_url
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    pg_isready = shutil.which("pg_isready") or str(cluster.bindir / "pg_isready")
    loop = f'until "{pg_isready}" -q -h 127.0.0.1 -p {cluster.port} -U postgres -d postgres; do sleep 1; done'
    logs = ws.root / "wait"
    logs.mkdir()
    rows: dict[str, list[float | None]] = {"a": [], "r": []}
    ready_after: list[float] = []
    failures: list[str] = []
    for round_ in range(warmup + runs):
        counted = round_ >= warmup
        log = logs / f"a-{round_}.log"
        watch = harness.ExitWatch()
        started = time.perf_counter()
        with open(log, "wb") as out:
            waiter = reaper.proc(
                subprocess.Popen(
                    [
                        ws.python,
                        "-m",
                        "portal_boot",
                        "wait-db",
                        "--database-url",
                        url,
                        "--db-timeout",
                        "30",
                    ],
                    env=ws.portal_boot_env(),
                    cwd=ws.root,  # not the repository: `-m` would import its live portal_boot/
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        reference = reaper.proc(
            subprocess.Popen(
                ["sh", "-c", loop],
                env=ws.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        watch.watch("a", waiter)
        watch.watch("r", reference)
        time.sleep(max(started + delay - time.perf_counter(), 0.0))
        server_start = time.perf_counter()
        cluster.start(wait=False)
        ready = _first_query(psycopg, conninfo, deadline=server_start + 30)
        watch.join(30)
        for proc in (waiter, reference):
            harness.stop(proc)
            reaper.forget(proc)
        cluster.stop()
        marks = []
        for name in ("a", "r"):
            exited = watch.exits.get(name)
            if ready is None or exited is None or exited[1] != 0:
                why = (
                    "no server"
                    if ready is None
                    else (
                        "did not exit"
                        if exited is None
                        else f"exited {exited[1]}: {harness.tail(log) if name == 'a' else ''}"
                    )
                )
                failures.append(f"{name} round {round_}: {why}")
                lag = None
                marks.append(f"{name} FAILED")
            else:
                lag = exited[0] - ready
                marks.append(f"{name} {lag * 1000:+.0f}")
            if counted:
                rows[name].append(lag)
        if counted and ready is not None:
            ready_after.append(ready - server_start)
        label = "warm-up" if not counted else f"run {round_ - warmup + 1}/{runs}"
        say(f"  [wait] {label}: lag " + ", ".join(marks) + " ms")
    out: dict[str, Any] = {
        "delay_s": delay,
        "runs": runs,
        "failures": failures,
        "server_ready_after_start_ms": ms(median(ready_after)),
        "variants": {},
    }
    labels = {"a": "(a) portal-boot wait-db", "r": "(r) until pg_isready; sleep 1"}
    for name, values in rows.items():
        ok = [v for v in values if v is not None]
        out["variants"][name] = {
            "label": labels[name],
            "lag_ms": [None if v is None else round(v * 1000, 1) for v in values],
            "median_ms": ms(median(ok)),
            "mean_ms": ms(sum(ok) / len(ok)) if ok else None,
            "p90_ms": ms(sorted(ok)[min(len(ok) - 1, int(0.9 * len(ok)))]) if ok else None,
            "min_ms": ms(min(ok)) if ok else None,
            "max_ms": ms(max(ok)) if ok else None,
            "ok_runs": len(ok),
        }
    lag = out["variants"]["a"]["median_ms"]
    out["target_ms"] = TARGET_MS
    out["met"] = None if lag is None else lag <= TARGET_MS
    return out


def _first_query(psycopg: Any, conninfo: str, deadline: float) -> float | None:
    """The moment the server first answered SELECT 1 (the end of that attempt)."""
    while time.perf_counter() < deadline:
        try:
            with psycopg.connect(conninfo, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return time.perf_counter()
        except psycopg.Error:
            time.sleep(0.001)
    return None
