"""The pieces of a rehearsal: a compose project, or a Dockerfile's build step, played on
this machine as folders, an environment and real processes (see tests/test_rehearsal.py)."""

from __future__ import annotations

import configparser
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

from pgserver import free_port
from sqlalchemy.engine import make_url

from deploy import compose, dockerfiles, paths

PLUGIN_GROUP = "data_product_portal.plugins"


def plugin_names(wheel_dir: Path) -> set[str]:
    """The entry-point names of the plugin group, read from the wheels themselves."""
    names: set[str] = set()
    for wheel in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".dist-info/entry_points.txt"):
                    parser = configparser.ConfigParser(delimiters=("=",))
                    parser.optionxform = str  # type: ignore[assignment,method-assign]
                    parser.read_string(archive.read(member).decode())
                    if parser.has_section(PLUGIN_GROUP):
                        names.update(parser.options(PLUGIN_GROUP))
    return names


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and link under root with a hash of its content (or link target)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def app_source(image: dockerfiles.ImageConfig) -> Path:
    """The repository folder Dockerfile.base copies to its WORKDIR: the application."""
    for instruction, args in image.instructions:
        if instruction != "COPY" or "--from" in args:
            continue
        *sources, dest = [t for t in shlex.split(args) if not t.startswith("--")]
        if dest.rstrip("/") == image.workdir.rstrip("/"):
            return paths.REPO / sources[0]
    raise AssertionError(f"Dockerfile.base copies nothing to its WORKDIR {image.workdir}")


class Rehearsal:
    """The compose project on this machine: shared named volumes, secrets, the image."""

    def __init__(
        self,
        compose_file: Path,
        tmp: Path,
        build: Mapping[str, Path],
        pg_url: str,
        base_env: Mapping[str, str],
    ):
        self.compose_file = compose_file
        self.doc = compose.load_compose(compose_file)
        self.image = dockerfiles.base_image()
        self.tmp = tmp
        self.build = build
        self.pg_url = pg_url
        self.base_env = dict(base_env)
        self.logs: list[Path] = []
        # The image's application folder: a copy of what Dockerfile.base COPYs to WORKDIR,
        # so that the test can tell whether anything wrote into it.
        source = self._app_source()
        self.app_dir = tmp / "image" / self.image.workdir.strip("/")
        shutil.copytree(source, self.app_dir)
        self.app_digest = tree_digest(self.app_dir)

    def _app_source(self) -> Path:
        return app_source(self.image)

    # -- per service --------------------------------------------------------------------

    def mounts(self, name: str) -> dict[str, tuple[Path, bool]]:
        """Container path -> (host path, read-only) for one service."""
        service = self.doc["services"][name]
        mounts: dict[str, tuple[Path, bool]] = {self.image.workdir: (self.app_dir, True)}
        for entry in compose._mounts(service):
            target, read_only = entry["target"], bool(entry.get("read_only"))
            if entry["type"] == "volume":
                host = self.tmp / "volumes" / entry["source"]
                host.mkdir(parents=True, exist_ok=True)
            elif entry["type"] == "bind":
                source = str((self.compose_file.parent / entry["source"]).resolve())
                assert source in self.build, (
                    f"service {name} binds {source}: the rehearsal only knows {sorted(self.build)}"
                )
                host = self.build[source]
            else:
                raise AssertionError(f"service {name}: volume type {entry['type']} not rehearsed")
            mounts[target] = (host, read_only)
        for target in compose.interpolate(service.get("tmpfs") or []):
            host = self.tmp / "tmpfs" / name / target.strip("/")
            host.mkdir(parents=True, exist_ok=True)
            mounts[target] = (host, False)
        for secret in service.get("secrets") or []:
            secret_name = secret if isinstance(secret, str) else secret["source"]
            target = secret if isinstance(secret, str) else secret.get("target", secret_name)
            mounts[f"/run/secrets/{target}"] = (self._secret(secret_name), True)
        return mounts

    def _secret(self, secret_name: str) -> Path:
        """The secret's file, with a database URL that names a compose service pointed at
        the test PostgreSQL (host, port, user, password, database); the rest kept."""
        source = self.compose_file.parent / self.doc["secrets"][secret_name]["file"]
        content = source.read_text(encoding="utf-8").strip()
        host = self.tmp / "secrets" / secret_name
        host.parent.mkdir(parents=True, exist_ok=True)
        try:
            url = make_url(content)
        except Exception:
            url = None
        if url is not None and url.host in self.doc["services"]:
            test = make_url(self.pg_url)
            url = url.set(
                host=test.host,
                port=test.port,
                username=test.username,
                password=test.password,
                database=test.database,
            )
            content = url.render_as_string(hide_password=False)
        host.write_text(content + "\n", encoding="utf-8")
        return host

    def environment(
        self, name: str, mounts: Mapping[str, tuple[Path, bool]], port: int | None
    ) -> dict[str, str]:
        service = self.doc["services"][name]
        container_env = {k: v for k, v in self.image.env.items() if k != "PATH"}
        container_env.update(compose.service_environment(service))
        if "/tmp" in mounts:
            container_env.setdefault("TMPDIR", "/tmp")
        if port is not None:
            # Published port: the container's port, on a free loopback port here.
            container_env["PORTAL_BOOT_PORT"] = str(port)
            container_env["PORTAL_BOOT_HOST"] = "127.0.0.1"
        env = dict(self.base_env)
        for key, value in container_env.items():
            if key in paths.IMAGE_VARIABLES:  # not a file: a URL path (the HEALTHCHECK's)
                env[key] = value
                continue
            env[key] = self._host_path(value, mounts, f"service {name}: {key}")
        return env

    @staticmethod
    def _host_path(value: str, mounts: Mapping[str, tuple[Path, bool]], where: str) -> str:
        if not value.startswith("/"):
            return value
        best = max(
            (t for t in mounts if value == t or value.startswith(t.rstrip("/") + "/")),
            key=len,
            default=None,
        )
        assert best is not None, (
            f"{where}={value}: a path in the image that no volume or tmpfs holds"
        )
        rest = value[len(best) :].lstrip("/")
        host = mounts[best][0]
        return str(host / rest) if rest else str(host)

    def published_port(self, name: str) -> int | None:
        ports = self.doc["services"][name].get("ports") or []
        return free_port() if ports else None

    def command(self, name: str, args: list[str], env: Mapping[str, str]) -> list[str]:
        argv = [sys.executable, "-m", "portal_boot", *args]
        if self.doc["services"][name].get("network_mode") == "none":
            # No network at all, as Docker's network_mode: none (loopback down).
            assert shutil.which("unshare"), (
                "unshare (util-linux) is needed to rehearse network_mode: none"
            )
            prefix = (
                ["unshare", "--net"]
                if os.geteuid() == 0
                else ["unshare", "--user", "--map-root-user", "--net"]
            )
            argv = [*prefix, "--", *argv]
        return argv

    def log_file(self, label: str) -> Path:
        path = self.tmp / "logs" / f"{len(self.logs):02d}-{label}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(path)
        return path

    def all_logs(self) -> str:
        return "\n".join(
            f"----- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists()
        )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, process: subprocess.Popen[bytes], deadline: float) -> tuple[int, bytes]:
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode} before answering {url}"
            )
        try:
            return http_get(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answered {url} in time") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the server did not stop within 20 s of SIGTERM") from None
    return process.returncode


def build_step(dockerfile: Path) -> tuple[dockerfiles.ImageConfig, dict[str, str], list[str]]:
    """The Dockerfile's ``RUN portal-boot ...`` step: the environment it runs with (the
    base image's ENV, the build arguments' defaults, its inline assignments) and its
    arguments, as Docker would expand them."""
    from deploy import drift

    base = dockerfiles.base_image()
    image = dockerfiles.read_dockerfile(dockerfile, parent=base)
    args = build_args(image)
    for instruction, text in image.instructions:
        if instruction == "RUN":
            for inline, argv in drift._shell_portal_boot(text):
                env = {**base.env, **{k: expand(v, args) for k, v in inline.items()}}
                return image, env, [expand(a, args) for a in argv]
    raise AssertionError(f"{dockerfile.name} runs no portal-boot command")


def build_args(image: dockerfiles.ImageConfig) -> dict[str, str]:
    out = {}
    for instruction, text in image.instructions:
        if instruction == "ARG" and "=" in text:
            key, _, value = text.partition("=")
            out[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return out


def expand(value: str, args: Mapping[str, str]) -> str:
    return compose.interpolate(value, args)


class ImageRoot:
    """An image's filesystem as a folder: every absolute path lives under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def map(self, value: str) -> str:
        return str(self.host(value)) if value.startswith("/") else value

    def copy_in(self, image: dockerfiles.ImageConfig, build: Mapping[str, Path]) -> None:
        """The final stage's COPY instructions from the build context (``build`` maps a
        context folder to where this test made its content)."""
        args = build_args(image)
        for sources, dest in image.copies:
            for source in sources:
                context = str(paths.REPO / expand(source, args).rstrip("/"))
                origin = build.get(context, Path(context))
                shutil.copytree(origin, self.host(dest), dirs_exist_ok=True)
