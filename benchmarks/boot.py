"""Boot the example portal three ways, interleaved, and compare the time to the first
HTTP 200 on /health:

  (a) portal-boot: ``python -m portal_boot run`` (verify, install, wait-db, migrate, exec);
  (b) the deployment guide's shell pipeline (benchmarks/pipeline.sh: pip install
      --target, copy the plugin migrations, alembic upgrade heads, exec uvicorn);
  (c) bare ``python -m uvicorn`` with the plugins already importable (the floor).

Scenarios: ``warm`` and ``cold`` (the three example plugins), ``warm-10`` and ``cold-10``
(10 generated plugins, 50 revisions), and ``wait`` (a database started late: how long
after it first answers a query portal-boot's wait-db exits, next to a fixed-interval
``pg_isready`` loop). See benchmarks/README.md.

    .venv/bin/python benchmarks/boot.py                    # all scenarios, 5 runs each
    .venv/bin/python benchmarks/boot.py --runs 7 --scenarios warm,cold,wait --json out.json

Everything runs on 127.0.0.1, in a temporary folder under /tmp, against a throwaway
PostgreSQL cluster (tests/pgserver.py) unless --database-url names a server. All of it
is removed at exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import harness
import report
import waitlag
from harness import Reaper, median
from report import VARIANTS
from workspace import Databases, WheelSet, Workspace, ms, say

SCENARIOS = ("warm", "cold", "warm-10", "cold-10", "wait")
# (numerator, denominator, target): per-pair ratios, median of the per-round ratios.
WARM_TARGETS = (("a", "b", 0.3), ("a", "c", 3.0))
COLD_TARGETS = (("a", "b", 0.7), ("a", "c", None))


# --- boot scenarios ---------------------------------------------------------------------


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    exec_marker: str | None
    cleanup: list[Path] = field(default_factory=list)


@dataclass
class VariantResult:
    times: list[float | None] = field(default_factory=list)  # per round, None: failed
    exec_times: list[float | None] = field(default_factory=list)
    steps: list[dict[str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""


_STEP = re.compile(r"portal-boot INFO (install|wait-db|migrate): done in (\d+) ms")
_READY = re.compile(r"portal-boot INFO boot: ready in (\d+) ms")


def _portal_boot_steps(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    steps = {name: int(value) for name, value in _STEP.findall(text)}
    ready = _READY.search(text)
    if ready:
        steps["ready"] = int(ready.group(1))
    return steps


class BootScenario:
    def __init__(
        self, ws: Workspace, dbs: Databases, name: str, wheels: WheelSet, cold: bool
    ) -> None:
        self.ws, self.dbs, self.name, self.wheels, self.cold = ws, dbs, name, wheels, cold
        self.dir = ws.root / name
        self.dir.mkdir()
        self.warm_state: dict[str, tuple[str, Path, Path]] = {}  # variant: (url, target, app)
        self.floor_app = ws.app_copy(self.dir / "c-app")

    def _state(self, variant: str, round_: int) -> tuple[str, Path, Path, list[Path]]:
        """(database URL, target, app folder, folders to remove after the boot)."""
        if self.cold:
            run = self.dir / f"{variant}-{round_}"
            run.mkdir()
            url = self.dbs.create()
            app = self.ws.app_copy(run / "app", url if variant == "b" else None)
            return url, run / "plugins", app, [run]
        if variant not in self.warm_state:
            url = self.dbs.create()
            app = self.ws.app_copy(self.dir / f"{variant}-app", url if variant == "b" else None)
            self.warm_state[variant] = (url, self.dir / f"{variant}-target" / "plugins", app)
        url, target, app = self.warm_state[variant]
        target.parent.mkdir(exist_ok=True)
        return url, target, app, []

    def launch(self, variant: str, round_: int, port: int) -> Launch:
        ws, wheels = self.ws, self.wheels
        if variant == "c":
            return Launch(
                [
                    ws.python,
                    "-m",
                    "uvicorn",
                    "app.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                self.floor_app,
                ws.env(PYTHONPATH=str(wheels.floor_target)),
                None,
            )
        url, target, app, cleanup = self._state(variant, round_)
        if variant == "a":
            argv = [
                ws.python,
                "-m",
                "portal_boot",
                "run",
                "--database-url",
                url,
                "--wheel-dir",
                str(wheels.wheel_dir),
                "--trusted-keys",
                str(wheels.keys),
                "--target",
                str(target),
                "--alembic-config",
                str(app / "alembic.ini"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            return Launch(argv, app, ws.portal_boot_env(), "portal_boot.serve.launch", cleanup)
        env = ws.env(
            WHEEL_DIR=str(wheels.wheel_dir),
            TARGET=str(target),
            APP_DIR=str(app),
            HOST="127.0.0.1",
            PORT=str(port),
        )
        return Launch(["sh", str(HERE / "pipeline.sh")], app, env, "bin/uvicorn", cleanup)


def run_boot_scenario(
    ws: Workspace,
    dbs: Databases,
    name: str,
    wheels: WheelSet,
    *,
    cold: bool,
    runs: int,
    warmup: int,
    reaper: Reaper,
) -> dict[str, Any]:
    scenario = BootScenario(ws, dbs, name, wheels, cold)
    # A warm boot needs one boot before it (it installs and migrates): that is the warm-up.
    warmup = max(warmup, 0 if cold else 1)
    results = {v: VariantResult() for v in VARIANTS}
    logs = scenario.dir / "logs"
    logs.mkdir()
    for round_ in range(warmup + runs):
        counted = round_ >= warmup
        marks = []
        for variant in VARIANTS:
            result = results[variant]
            if result.skipped:
                if counted:
                    result.times.append(None)
                    result.exec_times.append(None)
                continue
            port = harness.free_port()
            log = logs / f"{variant}-{round_}.log"
            try:
                launch = scenario.launch(variant, round_, port)
                boot = harness.timed_boot(
                    reaper,
                    launch.argv,
                    cwd=launch.cwd,
                    env=launch.env,
                    port=port,
                    log=log,
                    exec_marker=launch.exec_marker,
                )
            except Exception as exc:  # noqa: BLE001 - this boot's set-up failed: report, go on
                boot = harness.Boot(False, None, None, f"set-up failed: {exc!r}")
                launch = None
            if launch is not None:
                for path in launch.cleanup:
                    shutil.rmtree(path, ignore_errors=True)
            if not boot.ok:
                where = "warm-up" if not counted else f"run {round_ - warmup + 1}"
                result.failures.append(f"{where}: {boot.error}")
                result.skipped = boot.error
                marks.append(f"{variant} FAILED")
            else:
                marks.append(f"{variant} {boot.seconds * 1000:.0f}")
            if counted:
                result.times.append(boot.seconds if boot.ok else None)
                result.exec_times.append(boot.exec_seconds if boot.ok else None)
                if variant == "a" and boot.ok:
                    result.steps.append(_portal_boot_steps(log))
        label = "warm-up" if not counted else f"run {round_ - warmup + 1}/{runs}"
        say(f"  [{name}] {label}: " + ", ".join(marks) + " ms")
        if cold:
            with contextlib.suppress(Exception):
                dbs.drop_all()
    return _summarize_boots(name, wheels, cold, runs, results)


def _ratios(results: dict[str, VariantResult], num: str, den: str) -> list[float]:
    pairs = zip(results[num].times, results[den].times)
    return [a / b for a, b in pairs if a is not None and b is not None and b > 0]


def _summarize_boots(
    name: str, wheels: WheelSet, cold: bool, runs: int, results: dict[str, VariantResult]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "cold" if cold else "warm",
        "plugins": wheels.plugins,
        "plugin_revisions": wheels.revisions,
        "description": wheels.label,
        "runs": runs,
        "variants": {},
        "ratios": {},
    }
    for variant, result in results.items():
        ok = [t for t in result.times if t is not None]
        exec_ok = [t for t in result.exec_times if t is not None]
        entry: dict[str, Any] = {
            "label": VARIANTS[variant],
            "times_ms": [None if t is None else round(t * 1000, 1) for t in result.times],
            "median_ms": ms(median(ok)),
            "min_ms": ms(min(ok)) if ok else None,
            "max_ms": ms(max(ok)) if ok else None,
            "ok_runs": len(ok),
            "failures": result.failures,
        }
        if exec_ok:
            entry["exec_median_ms"] = ms(median(exec_ok))
            entry["after_exec_median_ms"] = ms(
                median(
                    t - e
                    for t, e in zip(result.times, result.exec_times)
                    if t is not None and e is not None
                )
            )
        if result.steps:
            order = ("install", "wait-db", "migrate", "ready")
            names = [k for k in order if any(k in s for s in result.steps)]
            entry["steps_median_ms"] = {
                k: median(s[k] for s in result.steps if k in s) for k in names
            }
        out["variants"][variant] = entry
    for num, den, target in COLD_TARGETS if cold else WARM_TARGETS:
        values = _ratios(results, num, den)
        value = median(values)
        out["ratios"][f"{num}/{den}"] = {
            "values": [round(v, 3) for v in values],
            "median": None if value is None else round(value, 3),
            "target": target,
            "met": None if value is None or target is None else value <= target,
        }
    return out


# --- main -------------------------------------------------------------------------------


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "tree_dirty": bool(git("status", "--porcelain")),
        "runs": args.runs,
        "warmup": args.warmup,
        "database": "--database-url" if args.database_url else "throwaway local cluster",
        "bytecode": "PYTHONDONTWRITEBYTECODE=1; portal_boot and the app precompiled (unchecked-hash), as in the image",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/boot.py",
        description="Boot the example portal with portal-boot, the deployment guide's shell "
        "pipeline and bare uvicorn, interleaved; print medians and per-pair ratios.",
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per variant and scenario (5)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed rounds first (1; a warm scenario always has at least one)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (all)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PORTAL_BOOT_BENCH_DATABASE_URL"),
        help="a PostgreSQL superuser URL to create databases on, instead of a "
        "throwaway local cluster [PORTAL_BOOT_BENCH_DATABASE_URL] (wait always "
        "starts a local cluster of its own)",
    )
    parser.add_argument(
        "--wait-delay",
        type=float,
        default=1.5,
        help="seconds between the waiters' start and the database's (1.5)",
    )
    parser.add_argument(
        "--wait-runs",
        type=int,
        help="timed rounds of the wait scenario (3 x --runs: its lag is random by design, "
        "the backoff has jitter, and a round costs only ~3 s)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary folder (logs of every boot) for a look afterwards",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        parser.error(
            f"--scenarios: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCENARIOS)}"
        )
    if args.runs < 1 or (args.wait_runs is not None and args.wait_runs < 1):
        parser.error("--runs and --wait-runs must be at least 1")
    args.scenarios = [s for s in SCENARIOS if s in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.install_signal_handlers()
    reaper = Reaper()
    results: dict[str, Any] = {"meta": _meta(args), "scenarios": {}}
    started = time.monotonic()
    try:
        say(
            f"portal-boot benchmark: {', '.join(args.scenarios)}; {args.runs} runs, "
            f"{args.warmup} warm-up round(s); {os.cpu_count()} CPUs"
        )
        ws = Workspace(reaper, args.keep_workdir)
        say(f"workspace {ws.root}")
        boot_scenarios = [s for s in args.scenarios if s != "wait"]
        dbs = Databases(reaper, args.database_url) if boot_scenarios else None
        for name in args.scenarios:
            say(f"\n-- {name} --")
            try:
                if name == "wait":
                    data = waitlag.run(
                        ws, args.wait_runs or 3 * args.runs, args.warmup, args.wait_delay, reaper
                    )
                    report.print_wait_table(data)
                else:
                    wheels = ws.wheelset("many" if name.endswith("-10") else "examples")
                    data = run_boot_scenario(
                        ws,
                        dbs,
                        name,
                        wheels,
                        cold=name.startswith("cold"),
                        runs=args.runs,
                        warmup=args.warmup,
                        reaper=reaper,
                    )
                    report.print_boot_table(name, data)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a scenario's set-up failed: report, go on
                data = {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
                say(f"scenario {name} failed: {data['error']}")
            results["scenarios"][name] = data
        results["meta"]["seconds"] = round(time.monotonic() - started, 1)
        report.print_summary(results)
        say(f"\n(total {results['meta']['seconds']:.0f} s)")
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
        return 130
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            say(f"results written to {args.json}")
        reaper.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
