"""Where a warm ``portal-boot run`` spends its time (plugins installed, database at the
heads), before and after the exec into uvicorn.

    .venv/bin/python benchmarks/profile_warm.py [--database-url URL] [--top 15]

1. Sets up the warm state as benchmarks/boot.py does (byte-compiled snapshot of
   portal_boot/, the example plugins signed, a throwaway PostgreSQL), boots once.
2. Boots again with ``PYTHONPROFILEIMPORTTIME=1`` (``-X importtime`` that survives the
   exec, so the launcher is measured too) and splits the imports at the exec.
3. Runs the same command in-process under cProfile, with ``os.execve`` stopped, so the
   profile covers everything before the exec (imports included).
4. Times the bare imports of the heavy dependencies, each in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


class _Exec(BaseException):
    """Raised instead of exec'ing: BaseException, so portal-boot's CLI lets it through."""


def _driver(out: str, argv: list[str]) -> None:
    """In the child: run portal-boot's CLI under cProfile until it would exec."""

    def no_exec(path: str, args: list[str], env: dict[str, str]) -> None:
        raise _Exec()

    os.execve = no_exec  # type: ignore[assignment]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        from portal_boot.cli import main

        main(argv)
    except _Exec:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def parse_importtime(
    text: str,
) -> tuple[list[tuple[int, int, int, str]], list[tuple[int, int, int, str]]]:
    """(before the exec, after it): (self us, cumulative us, depth, module) per import."""
    before: list[tuple[int, int, int, str]] = []
    after: list[tuple[int, int, int, str]] = []
    current = before
    for line in text.splitlines():
        if "serve: exec uvicorn" in line:
            current = after
            continue
        found = _IMPORT.match(line)
        if found:
            self_us, cum_us, indent, name = found.groups()
            current.append((int(self_us), int(cum_us), len(indent) // 2, name))
    return before, after


def summarize(imports: list[tuple[int, int, int, str]], top: int) -> list[str]:
    roots = [(cum, name) for _, cum, depth, name in imports if depth == 0]
    total = sum(cum for cum, _ in roots)
    by_package: dict[str, int] = defaultdict(int)
    for self_us, _, _, name in imports:
        by_package[name.split(".")[0]] += self_us
    lines = [f"  {len(imports)} modules, {total / 1000:.0f} ms of imports in all"]
    lines.append("  top-level imports by cumulative time:")
    for cum, name in sorted(roots, reverse=True)[:top]:
        lines.append(f"    {cum / 1000:7.1f} ms  {name}")
    lines.append("  by distribution (self time of all its modules):")
    for name, self_us in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {self_us / 1000:7.1f} ms  {name}")
    return lines


def _pstats(path: Path, key: str, pattern: str, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out).sort_stats(key)
    stats.print_stats(*([pattern] if pattern else []), limit)
    text = out.getvalue()
    # Keep the table only, with site-packages paths shortened.
    table = text[text.index("   ncalls") :] if "   ncalls" in text else text
    return re.sub(r"\S*/(site-packages|src)/", "", table).rstrip()


def bare_imports(python: str, env: dict[str, str], cwd: Path, modules: list[str]) -> list[str]:
    """Each module's import time alone, in a fresh interpreter (median of 5)."""
    lines = []
    for module in modules:
        code = (
            "import time; t = time.perf_counter(); import " + module + "; "
            "print(time.perf_counter() - t)"
        )
        times = []
        for _ in range(5):
            done = subprocess.run(
                [python, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=False
            )
            if done.returncode == 0:
                times.append(float(done.stdout.strip()))
        if times:
            times.sort()
            lines.append(f"    {times[len(times) // 2] * 1000:7.1f} ms  import {module}")
        else:
            lines.append(f"        n/a    import {module} (failed)")
    return lines


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--cprofile-driver":
        _driver(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(prog="benchmarks/profile_warm.py", description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("PORTAL_BOOT_BENCH_DATABASE_URL"))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs and the profile")
    args = parser.parse_args()

    import harness
    from boot import BootScenario
    from workspace import Databases, Workspace, say

    harness.install_signal_handlers()
    reaper = harness.Reaper()
    try:
        ws = Workspace(reaper, keep=args.keep_workdir)
        dbs = Databases(reaper, args.database_url)
        scenario = BootScenario(ws, dbs, "profile", ws.wheelset("examples"), cold=False)
        logs = ws.root / "profile-logs"
        logs.mkdir()

        def boot(tag: str, **extra_env: str) -> harness.Boot:
            port = harness.free_port()
            launch = scenario.launch("a", 0, port)
            launch.env.update(extra_env)
            result = harness.timed_boot(
                reaper, launch.argv, cwd=launch.cwd, env=launch.env, port=port,
                log=logs / f"{tag}.log", exec_marker=launch.exec_marker,
            )  # fmt: skip
            if not result.ok:
                raise SystemExit(f"portal-boot did not boot ({tag}): {result.error}")
            return result

        boot("prime")  # installs and migrates: the next boots are warm
        plain = [boot(f"warm-{i}") for i in range(3)]
        plain.sort(key=lambda b: b.seconds or 0)
        mid = plain[1]
        say(f"warm boot: {mid.seconds * 1000:.0f} ms to the first 200 (median of 3), "
            f"exec after {mid.exec_seconds * 1000:.0f} ms")  # fmt: skip
        say((logs / "warm-1.log").read_text().strip())

        traced = boot("importtime", PYTHONPROFILEIMPORTTIME="1")
        before, after = parse_importtime((logs / "importtime.log").read_text())
        say(
            f"\n== imports before the exec (boot with importtime: {traced.seconds * 1000:.0f} ms) =="
        )
        say("\n".join(summarize(before, args.top)))
        say("\n== imports after the exec (portal_boot.serve.launch -> uvicorn -> app) ==")
        say("\n".join(summarize(after, args.top)))

        port = harness.free_port()
        launch = scenario.launch("a", 0, port)
        stats = ws.root / "warm.pstats"
        subprocess.run(
            [ws.python, str(Path(__file__)), "--cprofile-driver", str(stats),
             *launch.argv[3:]],
            cwd=launch.cwd, env=launch.env, capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        say("\n== cProfile, before the exec: portal_boot's functions by cumulative time ==")
        say(_pstats(stats, "cumulative", r"portal_boot/", args.top * 2))
        say("\n== cProfile, before the exec: functions by own time ==")
        say(_pstats(stats, "tottime", "", args.top))

        say("\n== each import alone, fresh interpreter (median of 5) ==")
        modules = [
            "click", "portal_boot.cli", "tenacity", "psycopg", "sqlalchemy",
            "sqlalchemy.dialects.postgresql.psycopg", "alembic.config", "alembic.command",
            "gnupg", "installer", "packaging.tags", "uvicorn.main", "uvicorn.config",
        ]  # fmt: skip
        say("\n".join(bare_imports(ws.python, ws.portal_boot_env(), ws.root, modules)))
    finally:
        reaper.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
