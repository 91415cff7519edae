"""The benchmark's shared set-up, made once per run in one temporary folder: a
byte-compiled snapshot of portal_boot/, a byte-compiled copy of the example portal,
the wheel sets (the three example plugins, signed by scripts/build-example-plugins.sh;
ten generated plugins signed with a throwaway key), and databases on a throwaway
PostgreSQL cluster (tests/pgserver.py) or on a server given with --database-url.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import py_compile
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import plugins as generated
from harness import Reaper

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class WheelSet:
    label: str
    wheel_dir: Path
    keys: Path
    plugins: int
    revisions: int  # plugin revisions (the core has 2 more)
    floor_target: Path  # installed once with pip, for (c)


class Workspace:
    """Everything the boots share, made once, in one temporary folder."""

    def __init__(self, reaper: Reaper, keep: bool) -> None:
        self.reaper = reaper
        self.root = Path(tempfile.mkdtemp(prefix="portal-boot-bench-", dir="/tmp"))
        if keep:
            reaper.call(lambda: say(f"kept the workspace {self.root}"))
        else:
            reaper.folder(self.root)
        self.python = sys.executable  # the venv's python, not resolved (that would leave the venv)
        self.bin = str(Path(sys.executable).parent)
        self.src = self._snapshot_portal_boot()
        self.pristine_app = self._pristine_app()
        self._wheelsets: dict[str, WheelSet] = {}

    # Every child gets this environment, nothing of the caller's portal-boot, pip or
    # database settings: the image's PYTHONDONTWRITEBYTECODE, the venv first on PATH.
    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PORTAL_BOOT_", "PIP_", "DATABASE_URL", "PYTHON")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.pop("ENABLED_PLUGINS", None)
        env.pop("AUTO_RUN_PLUGIN_MIGRATIONS", None)
        env["PATH"] = f"{self.bin}:{env.get('PATH', os.defpath)}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def portal_boot_env(self, **extra: str) -> dict[str, str]:
        return self.env(PYTHONPATH=str(self.src), **extra)

    def _snapshot_portal_boot(self) -> Path:
        """A byte-compiled copy of portal_boot/, first on PYTHONPATH for (a).

        As the image has it (compileall at build time, unchecked-hash .pyc), and frozen
        for the whole run while the tree is being edited; the editable install's finder
        comes after sys.path, so the copy wins."""
        src = self.root / "src"
        shutil.copytree(
            REPO / "portal_boot", src / "portal_boot", ignore=shutil.ignore_patterns("__pycache__")
        )
        _compile(src)
        self.src = src
        done = harness.run_quiet(
            [self.python, "-c", "import portal_boot; print(portal_boot.__file__)"],
            env=self.portal_boot_env(),
            cwd=self.root,
        )
        if not done.stdout.strip().startswith(str(src)):
            raise RuntimeError(f"the portal_boot snapshot is not the one imported: {done.stdout}")
        return src

    def _pristine_app(self) -> Path:
        app = self.root / "app-pristine"
        shutil.copytree(
            REPO / "examples" / "portal", app, ignore=shutil.ignore_patterns("__pycache__")
        )
        _compile(app)
        return app

    def app_copy(self, dest: Path, database_url: str | None = None) -> Path:
        """A copy of the example portal; with ``database_url``, written into its
        alembic.ini (the guide's env.py reads it from there; portal-boot sets its own)."""
        shutil.copytree(self.pristine_app, dest)
        if database_url is not None:
            ini = dest / "alembic.ini"
            text = ini.read_text()
            value = database_url.replace("%", "%%")  # configparser interpolation
            text = re.sub(
                r"(?m)^sqlalchemy\.url = .*$", lambda _: f"sqlalchemy.url = {value}", text
            )
            ini.write_text(text)
        return dest

    def wheelset(self, name: str) -> WheelSet:
        if name not in self._wheelsets:
            self._wheelsets[name] = self._examples() if name == "examples" else self._generated()
        return self._wheelsets[name]

    def _examples(self) -> WheelSet:
        base = self.root / "examples"
        harness.run_quiet(
            [
                "bash",
                str(REPO / "scripts" / "build-example-plugins.sh"),
                str(base / "wheels"),
                str(base / "keys"),
            ],
            env=self.env(PYTHON=self.python),
        )
        return self._finish(
            "3 example plugins (one with its own Alembic environment), 4 plugin revisions",
            base / "wheels",
            base / "keys" / "demo-signing-key.asc",
            3,
            4,
        )

    def _generated(self, count: int = 10, revisions: int = 5) -> WheelSet:
        import gpgkeys

        base = self.root / "many"
        wheels = generated.build(base / "wheels", count, revisions)
        lab = gpgkeys.GpgLab()
        self.reaper.call(lab.close)
        key = lab.generate("benchmark")
        for wheel in wheels:
            key.sign(wheel)
        keys = key.export(base / "keys" / "benchmark.asc")
        return self._finish(
            f"{count} generated plugins, {count * revisions} plugin revisions",
            base / "wheels",
            keys,
            count,
            count * revisions,
        )

    def _finish(
        self, label: str, wheel_dir: Path, keys: Path, count: int, revisions: int
    ) -> WheelSet:
        floor = wheel_dir.parent / "floor-target"
        harness.run_quiet(
            [
                self.python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-index",
                "--no-deps",
                "--target",
                str(floor),
                *map(str, sorted(wheel_dir.glob("*.whl"))),
            ],
            env=self.env(),
        )
        return WheelSet(label, wheel_dir, keys, count, revisions, floor)


def _compile(path: Path) -> None:
    compileall.compile_dir(
        str(path), quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )


class Databases:
    """Creates databases on the server (a throwaway cluster, or --database-url)."""

    def __init__(self, reaper: Reaper, url: str | None) -> None:
        from sqlalchemy.engine import make_url

        self.cluster = None
        if url is None:
            from pgserver import LocalCluster

            self.cluster = LocalCluster()
            reaper.call(LocalCluster.remove_template)
            reaper.call(self.cluster.destroy)
            self.cluster.start()
            url = self.cluster.admin_url
        self.admin = make_url(url).set(drivername="postgresql+psycopg")
        self.created: list[str] = []
        if self.cluster is None:  # a server we do not own: leave it as we found it
            reaper.call(self.drop_all)

    @staticmethod
    def libpq(url: Any) -> str:
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def create(self) -> str:
        """A new empty database; its postgresql+psycopg URL."""
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.libpq(self.admin), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(self.libpq(self.admin), autocommit=True) as conn:
            for name in self.created:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
