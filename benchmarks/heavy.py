"""Install a heavy plugin set, cold, three ways, interleaved, and compare:

  (a) ``portal-boot install`` (stage, verify the signatures, unpack with the RECORD check,
      compile bytecode, check requirements, switch the generation);
  (b) ``pip install --target --no-index --no-deps`` (pip compiles bytecode by default);
  (c) ``uv pip install --target --no-index --no-deps --compile-bytecode --offline`` with
      an empty cache (a fresh ``UV_CACHE_DIR`` every round, as a new pod has).

The set: a small plugin wheel requiring boto3, pandas and pyarrow, plus those and their
dependencies, pinned (12 wheels from PyPI for CPython 3.11 manylinux x86_64; 13 wheels,
103 MB, 351 MB installed), all signed with a throwaway key. The wheels are fetched once into
``.cache/heavy-wheels`` (gitignored) and checked against the pinned sha256s; uv is
installed once into ``.cache/heavy-tools`` unless the venv already has it. After that
nothing uses the network.

    .venv/bin/python benchmarks/heavy.py                 # 5 rounds + a warm-up (~5 minutes here)
    .venv/bin/python benchmarks/heavy.py --runs 7 --json heavy.json
    .venv/bin/python benchmarks/heavy.py --fetch-only    # fill the cache and stop

Every round gives each variant a fresh, empty target (and uv a fresh cache); the order of
the variants rotates from round to round, and the page cache is flushed to disk (``sync``)
between runs, outside the timing. Peak memory is sampled every 10 ms as the sum of the
resident sizes of the whole process tree (a parallel install pays for every worker), with
the largest single process (``ru_maxrss``) next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import harness
import plugins as generated
from harness import Reaper, median
from workspace import _compile, say

CACHE = REPO / ".cache" / "heavy-wheels"
TOOLS = REPO / ".cache" / "heavy-tools"
UV_VERSION = "0.13.9"

# boto3 + pandas (2.x: with pytz and tzdata, the common set today) + pyarrow, resolved
# for CPython 3.11 on manylinux x86_64 and pinned: (file, sha256).
PINS = (
    ("boto3-1.44.8-py3-none-any.whl",
     "099caf21553bbbfef118904aa02fadb8776a534704cf00bede0ed9f29a4da88e"),
    ("botocore-1.44.8-py3-none-any.whl",
     "76342a76c338701db80dcb8afe1c9bd079283d6fffbb9d881442abb02a215043"),
    ("jmespath-1.1.0-py3-none-any.whl",
     "a5663118de4908c91729bea0acadca56526eb2698e83de10cd116ae0f4e97c64"),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
     "89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93"),
    ("pandas-2.3.3-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
     "b98560e98cb334799c0b07ca7967ac361a47326e9b4e5a7dfb5ab2b1c9d35a1b"),
    ("pyarrow-26.0.1-cp311-cp311-manylinux_2_28_x86_64.whl",
     "39cb0f2418282c24bea6ceda77b03e5a8f0a5766b63a8bf194d4e2a2c423548c"),
    ("python_dateutil-2.9.0.post0-py2.py3-none-any.whl",
     "a8b2bc7bffae282281c8140a97d3aa9c14da0b136dfe83f850eea9a5f7470427"),
    ("pytz-2026.6-py2.py3-none-any.whl",
     "7fed3fee8fd6bd4a2b7b75a8d56021d0624127bf69bd5691f115db929ac570b3"),
    ("s3transfer-0.19.3-py3-none-any.whl",
     "24eb7535804306355e31c952a90022bf5b2f9d760f9a11062c7493a217c08553"),
    ("six-1.17.0-py2.py3-none-any.whl",
     "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"),
    ("tzdata-2026.6-py2.py3-none-any.whl",
     "0a10eec6e13ef16b627fabed9a5f2ba61a62b1c67f327305f4e7e412a70b4aec"),
    ("urllib3-2.8.0-py3-none-any.whl",
     "0cf3cae568d36aa9576b28dfb35f11328f1cb974ca7647d9475ebb86c75ac6e3"),
)  # fmt: skip

VARIANTS = {"a": "portal-boot install", "b": "pip --target", "c": "uv --target (cold cache)"}
# portal-boot's debug line with its step timings (portal_boot/install.py).
_STEPS = re.compile(r"install: timings (.*)$", re.MULTILINE)
_STEP = re.compile(r"(\w+)=(\d+)ms")


# --- fetching, once -----------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _isolated_pip_env() -> dict[str, str]:
    """No host pip configuration (the machine sets PIP_FIND_LINKS and a pip.conf)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def fetch() -> list[Path]:
    """The pinned wheels in the cache, downloading the missing ones; sha256-checked."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for name, sha in PINS:
        path = CACHE / name
        if not path.exists():
            dist, version = name.split("-")[:2]
            say(f"fetching {dist}=={version}")
            platforms = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary", ":all:", "--python-version", "3.11", "--implementation",
                 "cp", "--abi", "cp311", *(a for p in platforms for a in ("--platform", p)),
                 "--dest", str(CACHE), f"{dist}=={version}"],
                env=_isolated_pip_env(), check=True,
            )  # fmt: skip
        if _sha256(path) != sha:
            raise SystemExit(f"heavy: {path} does not match its pinned sha256: remove it")
        out.append(path)
    return out


def uv_binary() -> str:
    """uv from the venv if it has one, else from a tools venv made once."""
    beside = Path(sys.executable).parent / "uv"
    if beside.exists():
        return str(beside)
    uv = TOOLS / "bin" / "uv"
    if not uv.exists():
        say(f"installing uv {UV_VERSION} into {TOOLS}")
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run(
            [str(TOOLS / "bin" / "python"), "-m", "pip", "install", "--quiet",
             f"uv=={UV_VERSION}"],
            env=_isolated_pip_env(), check=True,
        )  # fmt: skip
    return str(uv)


# --- the set, signed ----------------------------------------------------------------------


def plugin_wheel(out: Path) -> Path:
    files = {
        "heavy_plugin/__init__.py": '"""A plugin that needs the data stack."""\n',
        "heavy_plugin/schema.py": (
            "class HeavyConfiguration:\n    name = 'heavy'\n\n"
            "    def load(self):\n        import boto3, pandas, pyarrow  # noqa: F401\n"
        ),
    }
    return generated.write_wheel(
        out,
        "portal-heavy-plugin",
        "1.0.0",
        files,
        {"heavy": "heavy_plugin.schema:HeavyConfiguration"},
        requires=("boto3>=1.34", "pandas>=2.2", "pyarrow>=15"),
    )


@dataclass
class Set:
    wheels: list[Path]
    keys: Path
    packed: int  # bytes of the wheels


def make_set(root: Path, reaper: Reaper, cached: list[Path]) -> Set:
    import gpgkeys

    wheel_dir = root / "wheels"
    wheel_dir.mkdir()
    wheels = [plugin_wheel(wheel_dir)]
    for path in cached:
        # A copy, not a link: the variants read the same bytes from the same folder.
        shutil.copyfile(path, wheel_dir / path.name)
        wheels.append(wheel_dir / path.name)
    lab = gpgkeys.GpgLab()
    reaper.call(lab.close)
    key = lab.generate("heavy-benchmark")
    for wheel in wheels:
        key.sign(wheel)
    keys = key.export(root / "keys" / "heavy.asc")
    return Set(sorted(wheels), keys, sum(p.stat().st_size for p in wheels))


# --- one timed run ------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class Run:
    seconds: float
    tree_rss: int  # peak of the sum over the process tree, sampled
    max_rss: int  # the largest single process (ru_maxrss of the child and its waited children)
    cpu: float  # user + system seconds of the child and the children it waited for
    log: str
    returncode: int


def timed(argv: list[str], env: dict[str, str], cwd: Path, reaper: Reaper) -> Run:
    peak = [0]
    done = threading.Event()
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = reaper.proc(
            subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], sum(_rss(p) for p in _tree(proc.pid)))
                done.wait(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        reaper.forget(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, peak[0], usage.ru_maxrss * 1024, cpu, text, proc.returncode)


# --- the scenario -------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    installed: dict[str, tuple[int, int]] = field(default_factory=dict)  # files, bytes


def _size(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
    return files, size


class Heavy:
    def __init__(self, root: Path, reaper: Reaper, wheel_set: Set, uv: str) -> None:
        self.root, self.reaper, self.set, self.uv = root, reaper, wheel_set, uv
        self.python = sys.executable
        src = root / "src"  # a byte-compiled snapshot of portal_boot/, as the image has it
        shutil.copytree(
            REPO / "portal_boot", src / "portal_boot", ignore=shutil.ignore_patterns("__pycache__")
        )
        _compile(src)
        self.src = src

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PORTAL_BOOT_", "PIP_", "UV_", "PYTHON", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["PATH"] = f"{Path(self.python).parent}:{env.get('PATH', os.defpath)}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in the image
        env.update(extra)
        return env

    def command(self, variant: str, run: Path) -> tuple[list[str], dict[str, str]]:
        target = run / "target"
        wheels = [str(p) for p in self.set.wheels]
        if variant == "a":
            return [
                self.python, "-m", "portal_boot", "install", "--wheel-dir",
                str(self.set.wheels[0].parent), "--trusted-keys", str(self.set.keys),
                "--target", str(target), "--log-level", "debug",
            ], self.env(PYTHONPATH=str(self.src))  # fmt: skip
        if variant == "b":
            return [
                self.python, "-m", "pip", "install", "--quiet", "--isolated",
                "--disable-pip-version-check", "--no-index", "--no-deps", "--target",
                str(target), *wheels,
            ], self.env()  # fmt: skip
        return [
            self.uv, "pip", "install", "--quiet", "--no-config", "--offline", "--no-index",
            "--no-deps", "--compile-bytecode", "--python", self.python, "--target",
            str(target), *wheels,
        ], self.env(UV_CACHE_DIR=str(run / "uv-cache"))  # fmt: skip

    def once(self, variant: str, label: str) -> Run:
        run = self.root / f"{variant}-{label}"
        run.mkdir()
        argv, env = self.command(variant, run)
        result = timed(argv, env, run, self.reaper)
        if result.returncode != 0:
            tail = "\n".join(result.log.splitlines()[-15:])
            raise SystemExit(f"heavy: {VARIANTS[variant]} failed ({result.returncode}):\n{tail}")
        target = run / "target"
        if variant == "a":
            target = (target / "current").resolve() if (target / "current").exists() else target
        self.installed = getattr(self, "installed", {})
        self.installed[variant] = _size(target)
        shutil.rmtree(run)
        os.sync()
        return result


def _fmt_mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def report(results: Results, heavy: Heavy, rounds: int) -> dict[str, object]:
    say()
    load = os.getloadavg()
    say(
        f"Heavy install, cold: {len(heavy.set.wheels)} wheels, {_fmt_mb(heavy.set.packed)}; "
        f"{rounds} interleaved rounds; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    say()
    say("| installer | median | min | max | per-round ratio a/x (median, range) | CPU time "
        "(median) | peak RSS, tree | largest process | installed |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|---|")
    a_times = [r.seconds for r in results.runs["a"]]
    out: dict[str, object] = {"variants": {}}
    for variant, name in VARIANTS.items():
        runs = results.runs[variant]
        if not runs:
            continue
        times = [r.seconds for r in runs]
        ratios = [a / x for a, x in zip(a_times, times)]
        files, size = heavy.installed.get(variant, (0, 0))
        ratio = (
            f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            if variant != "a" and ratios
            else ""
        )
        say(
            f"| {name} | {median(times):.2f} s | {min(times):.2f} s | {max(times):.2f} s | "
            f"{ratio} | {median([r.cpu for r in runs]):.1f} s | "
            f"{_fmt_mb(max(r.tree_rss for r in runs))} | "
            f"{_fmt_mb(max(r.max_rss for r in runs))} | {files} files, {_fmt_mb(size)} |"
        )
        out["variants"][name] = {  # type: ignore[index]
            "seconds": times,
            "cpu_seconds": [r.cpu for r in runs],
            "ratio_a_over": None if variant == "a" else ratios or None,
            "tree_rss": [r.tree_rss for r in runs],
            "max_rss": [r.max_rss for r in runs],
            "installed_files": files,
            "installed_bytes": size,
        }
    steps: dict[str, list[int]] = {}
    for run in results.runs["a"]:
        found = _STEPS.findall(run.log)
        for key, value in _STEP.findall(found[-1] if found else ""):
            steps.setdefault(key, []).append(int(value))
    if steps:
        say()
        say("portal-boot's steps (its debug log), median over the rounds:")
        say()
        say("| " + " | ".join(steps) + " |")
        say("|" + "---|" * len(steps))
        say("| " + " | ".join(f"{median(v) / 1000:.2f} s" for v in steps.values()) + " |")
        out["steps_ms"] = steps
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--only", default="abc", help="variants to run (a, b, c)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fetch-only", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the targets (and uv's cache) are made (default: the system temp)",
    )
    parser.add_argument("--keep-log", type=Path, help="write the last portal-boot log here")
    args = parser.parse_args()

    cached = fetch()
    uv = uv_binary()
    if args.fetch_only:
        say(f"heavy: {len(cached)} wheels in {CACHE}; uv at {uv}")
        return 0
    harness.install_signal_handlers()
    reaper = Reaper()
    try:
        root = Path(tempfile.mkdtemp(prefix="portal-boot-heavy-", dir=args.workdir))
        reaper.folder(root)
        heavy = Heavy(root, reaper, make_set(root, reaper, cached), uv)
        variants = [v for v in VARIANTS if v in args.only]
        results = Results()
        for round_ in range(-args.warmup, args.runs):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            line = []
            for variant in order:
                run = heavy.once(variant, str(round_))
                line.append(f"{variant} {run.seconds:.2f} s (cpu {run.cpu:.1f} s)")
                if round_ >= 0:
                    results.runs[variant].append(run)
                if variant == "a" and args.keep_log:
                    args.keep_log.write_text(run.log)
            say(f"round {round_ + 1 if round_ >= 0 else 'warm-up'}: " + ", ".join(line))
        out = report(results, heavy, args.runs)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    except KeyboardInterrupt:
        say("heavy: interrupted, cleaning up")
        return 130
    finally:
        reaper.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
