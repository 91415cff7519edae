"""The image rehearsal: the project's images built and run for real, with rootful podman.

What lint, schemas and the command rehearsal cannot see, this does: ``Dockerfile.base``
and ``Dockerfile.with-plugins`` built unmodified; the image's ``--help``, ``status`` and
``run`` against the suite's PostgreSQL with the example plugins (tini is PID 1, the server
runs as the image's user, ``/health/plugins`` lists the plugins, a stop ends it);
``compose/split.yaml`` and ``compose/all-in-one.yaml`` brought up with docker-compose
1.29.2 against ``podman system service``; ``install`` as OpenShift runs it (an arbitrary
uid in group 0, read-only root) on a fresh named volume and on an emptyDir-like folder;
and README's "Adopting portal-boot in your own image" built FROM the base image.

Marked ``images``: ``pytest -m 'not slow and not images'`` leaves it out locally; the
default run (``.ci/run`` -> ``scripts/test.sh``) includes it. ``scripts/image-setup.sh``
(which ``scripts/test.sh`` runs as root) installs podman and makes the stand-in base
images where no registry is reachable. Skipped, with the reason, when not root or when
podman cannot run a container on this machine. ``pytest -s`` shows the measured
``FIGURE:`` lines (build and stop times, uvicorn's PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from boot_support import figure
from pgserver import PgServer, free_port

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PORTAL_BOOT_IMAGE_CACHE", "/var/cache/portal-boot-images"))
CONF = CACHE / "containers.conf"
COMPOSE = CACHE / "compose-venv" / "bin" / "docker-compose"
CA = Path("/etc/ssl/certs/ca-certificates.crt")
PYTHON_BASE = "docker.io/library/python:3.13-slim-trixie"
POSTGRES = "docker.io/library/postgres:16"
TAG = f"rehearsal-{os.getpid()}"
BASE = f"localhost/portal-boot:{TAG}"
WITH_PLUGINS = f"localhost/portal-boot:{TAG}-with-examples"
ADOPTED = f"localhost/portal-boot-adopted:{TAG}"
PLUGINS = sorted([
    "DatabricksTechnicalAssetConfiguration",
    "S3TechnicalAssetConfiguration",
    "SnowflakeTechnicalAssetConfiguration",
])
STARTED = time.monotonic()
TIMES: dict[str, float] = {}

ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "DOCKER_"))},
    "CONTAINERS_CONF": str(CONF),
}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:4])} ... exited {result.returncode}:\n"
            + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        )
    return result


def timed(name: str):
    class _Timer:
        def __enter__(self):
            self.start = time.monotonic()

        def __exit__(self, *exc):
            TIMES[name] = time.monotonic() - self.start
            figure(f"image rehearsal: {name} took {TIMES[name]:.1f} s")

    return _Timer()


def http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_http(url: str, container: str | None, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_json(url)
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if container is not None:
            state = podman("inspect", "--format", "{{.State.Status}}", container, check=False)
            if state.stdout.strip() not in ("running", "created", "configured"):
                logs = podman("logs", container, check=False)
                raise AssertionError(f"{container} is {state.stdout.strip()}:\n{logs.stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer from {url} within {timeout:.0f} s")
        time.sleep(0.3)


# Every process of a container, read from /proc by the container's own Python.
_PS = (
    "import json, os\n"
    "rows = []\n"
    "for pid in (p for p in os.listdir('/proc') if p.isdigit()):\n"
    "    try:\n"
    "        st = dict(l.split(':', 1) for l in open(f'/proc/{pid}/status').read().splitlines() if ':' in l)\n"
    "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    except OSError:\n"
    "        continue\n"
    "    if int(pid) == os.getpid():\n"
    "        continue\n"
    "    rows.append({'pid': int(pid), 'ppid': int(st['PPid']), 'uid': int(st['Uid'].split()[0]),\n"
    "                 'cmd': [c.decode() for c in cmd if c]})\n"
    "print(json.dumps(rows))\n"
)


def processes(container: str) -> list[dict]:
    return json.loads(podman("exec", container, "python", "-c", _PS).stdout)


def server_process(rows: list[dict]) -> dict:
    """uvicorn: portal-boot exec'd it (through portal_boot.serve.launch), so it kept the PID."""
    found = [r for r in rows if any("uvicorn" in c or "portal_boot.serve.launch" in c for c in r["cmd"])]
    assert len(found) == 1, rows
    return found[0]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    """Rootful podman that can run a container here, with the base images present."""
    if os.geteuid() != 0:
        pytest.skip("the image rehearsal runs rootful podman: run it as root (CI does)")
    if (CACHE / "unusable").exists():
        pytest.skip(f"podman cannot run a container on this machine: {(CACHE / 'unusable').read_text().strip()}")
    if shutil.which("podman") is None or not CONF.exists():
        pytest.skip("podman is not set up: run bash scripts/image-setup.sh (scripts/test.sh does, as root)")
    for image in (PYTHON_BASE, POSTGRES):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.skip(f"no {image} image: run bash scripts/image-setup.sh")
    probe = podman("run", "--rm", "--network", "none", PYTHON_BASE, "true", check=False, timeout=120)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"podman cannot run a container on this machine ({why})")
    yield
    TIMES["whole rehearsal"] = time.monotonic() - STARTED
    figure(f"image rehearsal: {TIMES['whole rehearsal']:.0f} s in all (builds included)")
    for image in (ADOPTED, WITH_PLUGINS, BASE):
        podman("rmi", "-f", image, check=False)
    # What the builds left untagged (the builder stage, layers of the removed images):
    # dangling images made since the base image, nothing else.
    left = podman("images", "-q", "--filter", "dangling=true", "--filter", f"since={PYTHON_BASE}",
                  check=False).stdout.split()  # fmt: skip
    if left:  # not -f: one in use by another build stays
        podman("rmi", *left, check=False)


@pytest.fixture(scope="module")
def work(engine) -> Iterator[Path]:
    """A copy of the repository (nothing is written into the worktree) with the example
    plugins built and signed, under /tmp and readable by the containers' users."""
    base = Path(tempfile.mkdtemp(prefix="pb-images-", dir="/tmp"))
    os.chmod(base, 0o755)
    repo = base / "repo"
    junk = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                                  ".hypothesis", ".portal-boot", ".cache")  # fmt: skip

    def ignore(folder: str, names: list[str]) -> set[str]:
        # The example wheels and keys are built afresh below; portal_boot/wheels/ is code.
        built = {"wheels", "keys"} if Path(folder) == REPO / "examples" else set()
        return set(junk(folder, names)) | (built & set(names))

    shutil.copytree(REPO, repo, symlinks=True, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        ["bash", "scripts/build-example-plugins.sh"], cwd=repo, check=True, capture_output=True,
        env={**env, "PYTHON": sys.executable},
    )  # fmt: skip
    yield repo
    shutil.rmtree(base, ignore_errors=True)


def _build(repo: Path, dockerfile: str, tag: str, *extra: str) -> str:
    args = ["build", "--format", "docker", "--pull=never", "-f", str(repo / dockerfile), "-t", tag, *extra]
    if CA.exists():  # where TLS is re-signed by a proxy, the build's pip needs the host's CAs
        args += ["-v", f"{CA}:{CA}:ro"]
    return podman(*args, str(repo), timeout=900).stdout


@pytest.fixture(scope="module")
def base_image(work: Path) -> str:
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip() or "unknown"
    with timed("build Dockerfile.base"):
        # --format docker: podman's default (OCI) drops HEALTHCHECK. The ignore file is
        # read by buildah itself (Dockerfile.base.dockerignore).
        _build(work, "Dockerfile.base", BASE, "--build-arg", f"REVISION={revision}")
    return BASE


@pytest.fixture(scope="module")
def with_plugins_image(work: Path, base_image: str) -> str:
    with timed("build Dockerfile.with-plugins"):
        _build(work, "Dockerfile.with-plugins", WITH_PLUGINS, "--build-arg", f"BASE_IMAGE={base_image}")
    return WITH_PLUGINS


@pytest.fixture(scope="module")
def database(pg_server: PgServer, work: Path) -> Iterator[tuple[Path, str]]:
    """A fresh database on the suite's PostgreSQL, its async URL in a secret file the
    container's user can read; and the password, to check no output shows it."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_server.create_database()).set(drivername="postgresql+asyncpg")
    secrets_dir = work.parent / "secrets"
    secrets_dir.mkdir(mode=0o755)
    path = secrets_dir / "database-url"
    path.write_text(url.render_as_string(hide_password=False))
    os.chmod(path, 0o644)
    yield path, url.password or ""


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Containers and volumes a test makes: removed afterwards, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        if name.startswith("vol:"):
            podman("volume", "rm", "-f", name[4:], check=False)
        else:
            podman("rm", "-f", "-t", "0", name, check=False)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _plugin_mounts(work: Path) -> list[str]:
    return [
        "-v", f"{work}/examples/wheels:/plugins/wheels:ro",
        "-v", f"{work}/examples/keys:/plugins/keys:ro",
        "-e", "PORTAL_BOOT_WHEEL_DIR=/plugins/wheels",
        "-e", "PORTAL_BOOT_TRUSTED_KEYS=/plugins/keys",
    ]  # fmt: skip


HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


# --------------------------------------------------------------------------- the base image
def test_example_wheels_are_readable_by_everyone(work: Path) -> None:
    wheels = sorted((work / "examples" / "wheels").glob("*.whl*"))
    assert len(wheels) == 2 * len(PLUGINS), wheels  # each wheel and its .asc
    for path in [*wheels, work / "examples" / "keys" / "demo-signing-key.asc"]:
        assert path.stat().st_mode & 0o444 == 0o444, (path, oct(path.stat().st_mode))


def test_base_image_is_built_unmodified_with_its_healthcheck(base_image: str) -> None:
    info = json.loads(podman("image", "inspect", base_image).stdout)[0]
    assert info["Healthcheck"]["Test"][0] == "CMD", info.get("Healthcheck")
    assert info["Config"]["User"] == "10001:10001"
    assert info["Config"]["Entrypoint"] == ["tini", "--", "portal-boot"]
    state = podman("run", "--rm", "--entrypoint", "stat", base_image, "-c", "%u:%g %a",
                   "/var/lib/portal-boot").stdout.split()  # fmt: skip
    assert state == ["10001:0", "2770"]  # uid 10001, group 0 with g=u, setgid


def test_base_image_holds_exactly_the_locked_dependencies(base_image: str, work: Path) -> None:
    locked = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (work / "requirements" / "image.txt").read_text(), re.MULTILINE)
    )
    frozen = podman("run", "--rm", "--entrypoint", "/opt/venv/bin/pip", base_image,
                    "list", "--format", "json").stdout  # fmt: skip
    installed = {row["name"].lower().replace("_", "-"): row["version"] for row in json.loads(frozen)}
    installed.pop("pip", None)
    assert installed.pop("portal-boot") == "0.1.0"
    assert installed == {name.lower().replace("_", "-"): v for name, v in locked.items()}


def test_help(base_image: str) -> None:
    result = podman("run", "--rm", "--network", "none", base_image, "--help")
    assert "Usage: portal-boot" in result.stdout
    for command in ("run", "install", "migrate", "serve", "status"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), result.stdout


def test_run_status_pid1_user_plugins_and_stop(base_image, work, database, names) -> None:
    secret, password = database
    port = free_port()
    volume = _name("pb-state")
    names.append(f"vol:{volume}")
    common = [
        "--network", "host", "-e", "PORTAL_BOOT_HOST=127.0.0.1", "-e", f"PORTAL_BOOT_PORT={port}",
        "-v", f"{secret}:/run/secrets/database-url:ro",
        "-e", "DATABASE_URL_FILE=/run/secrets/database-url",
        "-v", f"{volume}:/var/lib/portal-boot", *_plugin_mounts(work), *HARDENED,
    ]  # fmt: skip
    podman("volume", "create", volume)

    before = podman("run", "--rm", "--no-healthcheck", *common, base_image, "status", check=False)
    assert before.returncode == 4, before.stdout + before.stderr  # the install is pending
    assert "run portal-boot install" in before.stdout

    name = _name("pb-run")
    names.append(name)
    with timed("run: start to /health/plugins"):
        podman("run", "-d", "--name", name, *common, base_image)
        body = wait_http(f"http://127.0.0.1:{port}/health/plugins", name)
    assert sorted(p["name"] for p in body["plugins"]) == PLUGINS, body

    rows = processes(name)
    init = next(r for r in rows if r["pid"] == 1)
    assert Path(init["cmd"][0]).name == "tini", rows
    server = server_process(rows)
    assert server["ppid"] == 1 and server["uid"] == 10001, server
    assert all(r["uid"] == 10001 for r in rows), rows
    figure(f"image rehearsal: run: uvicorn is PID {server['pid']} (parent tini, PID 1), uid {server['uid']}")
    # The image's HEALTHCHECK, run by hand (no systemd timer runs it here).
    podman("healthcheck", "run", name)

    started = time.monotonic()
    podman("stop", "-t", "30", name, timeout=60)
    took = time.monotonic() - started
    figure(f"image rehearsal: run: podman stop ended it in {took:.2f} s")
    code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
    assert code in (0, 143), code  # ended by the SIGTERM, not killed (137) after 30 s
    assert took < 25, took
    logs = podman("logs", name).stdout + podman("logs", name).stderr
    assert "verified portal_s3_plugin" in logs and "migrate" in logs, logs[-2000:]
    assert password and password not in logs

    after = podman("run", "--rm", "--no-healthcheck", *common, base_image, "status", check=False)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "nothing pending" in after.stdout
    assert password not in after.stdout + after.stderr


def test_with_plugins_image_audits_its_wheels_as_the_runtime_user(with_plugins_image: str) -> None:
    info = json.loads(podman("image", "inspect", with_plugins_image).stdout)[0]
    assert info["Healthcheck"]["Test"][0] == "CMD", info.get("Healthcheck")  # kept from the base
    assert info["Config"]["User"] == "10001:10001"
    result = podman("run", "--rm", "--network", "none", "--no-healthcheck", *HARDENED,
                    with_plugins_image, "status", "--wheel-dir", "/opt/portal-boot/wheels",
                    check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid (") == len(PLUGINS), result.stdout
    assert all(name in result.stdout for name in PLUGINS), result.stdout


# --------------------------------------------------------------------------- OpenShift
def _arbitrary_uid() -> int:
    return random.randrange(1_000_000_000, 2_000_000_000)  # OpenShift's range


def _install_as(uid: int, image: str, work: Path, state: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return podman(
        "run", "--rm", "--no-healthcheck", "--network", "none", "--user", f"{uid}:0", *HARDENED,
        "-v", f"{state}:/var/lib/portal-boot", *_plugin_mounts(work), image, *(cmd or ("install",)),
        check=False,
    )  # fmt: skip


def test_openshift_arbitrary_uid_installs_into_a_fresh_named_volume(base_image, work, names) -> None:
    volume = _name("pb-ocp")
    names.append(f"vol:{volume}")
    uid = _arbitrary_uid()
    result = _install_as(uid, base_image, work, volume)
    assert result.returncode == 0, f"uid {uid}: {result.stdout}{result.stderr}"
    status = _install_as(uid, base_image, work, volume, "status")
    assert status.returncode == 0 and "nothing pending" in status.stdout, status.stdout + status.stderr
    assert "S3TechnicalAssetConfiguration" in status.stdout


def test_openshift_arbitrary_uid_installs_into_an_emptydir(base_image, work) -> None:
    empty_dir = Path(tempfile.mkdtemp(prefix="pb-emptydir-", dir="/tmp"))
    try:
        os.chmod(empty_dir, 0o777)  # what a kubelet's emptyDir is, without fsGroup
        uid = _arbitrary_uid()
        result = _install_as(uid, base_image, work, str(empty_dir))
        assert result.returncode == 0, f"uid {uid}: {result.stdout}{result.stderr}"
        assert (empty_dir / "plugins").is_symlink()
        assert {p.stat().st_uid for p in (empty_dir / ".plugins.generations").iterdir()} == {uid}
    finally:
        shutil.rmtree(empty_dir, ignore_errors=True)


def test_a_state_volume_of_another_user_is_one_line_not_an_internal_error(base_image, work, names) -> None:
    volume = _name("pb-foreign")
    names.append(f"vol:{volume}")
    podman("volume", "create", volume)
    podman("run", "--rm", "--user", "0:0", "--entrypoint", "chmod", "-v", f"{volume}:/state",
           base_image, "0700", "/state")  # fmt: skip
    uid = _arbitrary_uid()
    install = _install_as(uid, base_image, work, volume)
    status = _install_as(uid, base_image, work, volume, "status")
    for result, code in ((install, 4), (status, 2)):
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == code, result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        assert f"uid {uid}" in last and "/var/lib/portal-boot" in last and "g=u" in last, last


# --------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose_service(work: Path, base_image: str) -> Iterator[dict[str, str]]:
    """docker-compose 1.29.2 against `podman system service`, and a loop that runs the
    containers' HEALTHCHECKs (podman schedules them with systemd timers, absent here):
    compose's service_healthy needs them."""
    if not COMPOSE.exists():
        pytest.skip("no docker-compose: run bash scripts/image-setup.sh")
    sock = work.parent / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"], env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    stop = threading.Event()

    def drive_healthchecks() -> None:
        while not stop.wait(2):
            listed = podman("ps", "-q", "--filter", "health=starting", "--filter", "health=unhealthy",
                            "--filter", "health=healthy", check=False)  # fmt: skip
            for cid in listed.stdout.split():
                podman("healthcheck", "run", cid, check=False)

    driver = threading.Thread(target=drive_healthchecks, daemon=True)
    driver.start()
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert time.monotonic() < deadline and service.poll() is None, "podman system service did not start"
        time.sleep(0.1)
    env = {**ENV, "DOCKER_HOST": f"unix://{sock}", "PORTAL_IMAGE": base_image}
    try:
        yield env
    finally:
        stop.set()
        driver.join(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()


@pytest.mark.parametrize("pattern", ["split", "all-in-one"])
def test_compose_file_comes_up(pattern: str, work: Path, compose_service: dict[str, str]) -> None:
    port = free_port()
    project = f"pb{pattern.replace('-', '')}{uuid.uuid4().hex[:6]}"
    env = {**compose_service, "PORTAL_PUBLISH": f"127.0.0.1:{port}"}
    dc = [str(COMPOSE), "-f", str(work / "compose" / f"{pattern}.yaml"), "-p", project]

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*dc, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)

    try:
        with timed(f"compose {pattern}: up to /health/plugins"):
            up = compose("up", "-d", "--no-build")
            assert up.returncode == 0, up.stdout + up.stderr
            body = wait_http(f"http://127.0.0.1:{port}/health/plugins", None, timeout=180)
        assert sorted(p["name"] for p in body["plugins"]) == PLUGINS, body
        server_container = f"{project}_{'backend' if pattern == 'split' else 'portal'}_1"
        rows = processes(server_container)
        assert Path(next(r for r in rows if r["pid"] == 1)["cmd"][0]).name == "tini", rows
        server = server_process(rows)
        assert server["ppid"] == 1 and server["uid"] == 10001, server
        figure(f"image rehearsal: compose {pattern}: uvicorn is PID {server['pid']} under tini (PID 1)")
        if pattern == "split":
            for step in ("install", "migrate"):
                code = podman("inspect", "--format", "{{.State.ExitCode}}", f"{project}_{step}_1").stdout
                assert code.strip() == "0", (step, code)
        started = time.monotonic()
        stopped = compose("stop", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        figure(f"image rehearsal: compose {pattern}: stop took {time.monotonic() - started:.1f} s")
        code = podman("inspect", "--format", "{{.State.ExitCode}}", server_container).stdout.strip()
        assert code in ("0", "143"), code
    finally:
        compose("down", "-v", "-t", "5")


# --------------------------------------------------------------------------- adopting
ADOPTED_MAIN = '''\
"""A team's own FastAPI application (the rehearsal's stand-in for one)."""
from importlib import metadata

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.get("/health/plugins")
def plugins() -> dict:
    found = metadata.entry_points(group="data_product_portal.plugins")
    return {"plugins": [{"name": ep.name} for ep in sorted(found, key=lambda ep: ep.name)]}
'''


def _readme_dockerfile() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Adopting portal-boot in your own image", 1)[1]
    match = re.search(r"```dockerfile\n(.*?)```", section, re.DOTALL)
    assert match, "README's adopting section has no dockerfile block"
    return match.group(1)


def test_adopting_portal_boot_in_your_own_image(engine, base_image, work, database, names) -> None:
    """README's block, verbatim, around a small FastAPI app that keeps its Alembic
    folder (the example portal's, which the example plugins' revisions build on)."""
    context = work.parent / "adopted"
    (context / "app").mkdir(parents=True)
    (context / "Dockerfile").write_text(_readme_dockerfile())
    (context / "requirements.txt").write_text("fastapi>=0.110,<1\n")
    (context / "app" / "__init__.py").write_text("")
    (context / "app" / "main.py").write_text(ADOPTED_MAIN)
    shutil.copytree(work / "examples" / "portal" / "app" / "database", context / "app" / "database")
    shutil.copy(work / "examples" / "portal" / "alembic.ini", context / "alembic.ini")
    dist = work.parent / "dist"
    # portal-boot as a team gets it: a wheel (from PyPI's build backend; only PyPI, the
    # host's pip configuration plays no part).
    cert = ["--cert", str(CA)] if CA.exists() else []
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--isolated", "-q", "--no-deps", *cert,
         "--index-url", "https://pypi.org/simple", "--wheel-dir", str(dist), str(work)],
        capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("portal_boot-*.whl"))
    os.chmod(dist, 0o755)
    os.chmod(wheel, 0o644)
    args = ["build", "--format", "docker", "--pull=never", "-t", ADOPTED,
            "-v", f"{dist}:/dist:ro", "--build-arg", f"PORTAL_BOOT=/dist/{wheel.name}"]  # fmt: skip
    if CA.exists():
        args += ["-v", f"{CA}:{CA}:ro"]
    with timed("build the adopting image (README)"):
        podman(*args, str(context), timeout=900)

    secret, password = database
    port = free_port()
    volume = _name("pb-adopted")
    names.append(f"vol:{volume}")
    name = _name("pb-adopted")
    names.append(name)
    # `run`: verify, install, migrate (nothing left when the run test went first), serve.
    podman(
        "run", "-d", "--name", name, "--no-healthcheck", "--network", "host",
        "-e", "PORTAL_BOOT_HOST=127.0.0.1", "-e", f"PORTAL_BOOT_PORT={port}",
        "-v", f"{secret}:/run/secrets/database-url:ro", "-e", "DATABASE_URL_FILE=/run/secrets/database-url",
        "-v", f"{volume}:/var/lib/portal-boot", *_plugin_mounts(work), *HARDENED, ADOPTED,
    )  # fmt: skip
    body = wait_http(f"http://127.0.0.1:{port}/health/plugins", name)
    assert sorted(p["name"] for p in body["plugins"]) == PLUGINS, body
    rows = processes(name)
    assert Path(next(r for r in rows if r["pid"] == 1)["cmd"][0]).name == "tini", rows
    server = server_process(rows)
    assert server["ppid"] == 1 and server["uid"] == 10001, server
    podman("stop", "-t", "30", name, timeout=60)
    code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
    assert code in (0, 143), code
    logs = podman("logs", name)
    assert password not in logs.stdout + logs.stderr
