"""A rehearsal of the compose files, without Docker: each portal-boot service's own
command, in the order Compose would start them, run as a real process with

- the image's environment (the ENV of Dockerfile.base) and WORKDIR, then the service's
  environment on top, as the container would get them;
- every container path the environment names mapped to a temporary folder: the app
  folder the image copies (examples/portal), the service's volumes (named volumes are
  shared folders, bind mounts the example wheels and keys built by
  scripts/build-example-plugins.sh), its tmpfs, its secrets;
- the secret's database URL pointed at the test PostgreSQL instead of the `db` service,
  the driver and everything else kept;
- `network_mode: none` as a real network namespace without network (unshare);
- the published port as a free loopback port.

It ends with uvicorn answering /health and listing the three example plugins on
/health/plugins, `portal-boot status` reporting nothing pending, and a clean exit on
SIGTERM. Read-only mounts and the image's app folder must be unchanged afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from deploy import compose, paths, rehearsal
from deploy.rehearsal import Rehearsal, plugin_names, tree_digest
from sqlalchemy.engine import make_url

BUILD_SCRIPT = paths.REPO / "scripts" / "build-example-plugins.sh"
STEP_TIMEOUT = 180.0
LONG_RUNNING = {"serve", "run"}


# --- the example plugins, built and signed once --------------------------------------------


@pytest.fixture(scope="session")
def example_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the compose files' bind mounts hold on a real site: the signed example wheels
    and the demo public key, built by the script the README uses."""
    if not BUILD_SCRIPT.exists():
        pytest.fail(
            f"{BUILD_SCRIPT.relative_to(paths.REPO)} is missing: the example wheels cannot be built"
        )
    out = tmp_path_factory.mktemp("example-build")
    wheels, keys = out / "wheels", out / "keys"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(wheels), str(keys)],
        cwd=paths.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{BUILD_SCRIPT.name} failed:\n{done.stdout}\n{done.stderr}"
    assert sorted(wheels.glob("*.whl")), f"{BUILD_SCRIPT.name} built no wheel in {wheels}"
    assert sorted(keys.iterdir()), f"{BUILD_SCRIPT.name} wrote no key in {keys}"
    return {
        str(paths.REPO / "examples" / "wheels"): wheels,
        str(paths.REPO / "examples" / "keys"): keys,
    }


# --- the rehearsals ---------------------------------------------------------------------------


def rehearse(
    compose_name: str,
    tmp_path: Path,
    build: Mapping[str, Path],
    pg_url: str,
    clean_env: Mapping[str, str],
) -> dict[str, Any]:
    compose_file = paths.COMPOSE_DIR / compose_name
    world = Rehearsal(compose_file, tmp_path, build, pg_url, clean_env)
    services = world.doc["services"]
    order = [n for n in compose.startup_order(world.doc) if compose.is_portal_service(services[n])]
    assert order, f"{compose_name}: no portal-boot service"
    steps = {n: compose.service_command(services[n], world.image) for n in order}
    *one_shot, last = order
    assert (steps[last] or ["run"])[0] in LONG_RUNNING, (
        f"{compose_name}: the last service should serve: {steps}"
    )
    result: dict[str, Any] = {"order": [(n, steps[n]) for n in order]}

    def read_only_digests(mounts: Mapping[str, tuple[Path, bool]]) -> dict[str, dict[str, str]]:
        return {t: tree_digest(h) for t, (h, ro) in mounts.items() if ro and h.is_dir()}

    for name in one_shot:
        mounts = world.mounts(name)
        env = world.environment(name, mounts, world.published_port(name))
        before = read_only_digests(mounts)
        log = world.log_file(name)
        with log.open("wb") as out:
            done = subprocess.run(
                world.command(name, steps[name], env),
                cwd=mounts[world.image.workdir][0],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT,
            )
        assert done.returncode == 0, (
            f"{compose_name}: service {name} (`portal-boot {' '.join(steps[name])}`) exited "
            f"{done.returncode}\n{world.all_logs()}"
        )
        assert read_only_digests(mounts) == before, f"service {name} wrote to a read-only mount"

    mounts = world.mounts(last)
    port = world.published_port(last)
    assert port is not None, f"{compose_name}: service {last} publishes no port"
    env = world.environment(last, mounts, port)
    before = read_only_digests(mounts)
    log = world.log_file(last)
    with log.open("wb") as out:
        server = subprocess.Popen(
            world.command(last, steps[last], env),
            cwd=mounts[world.image.workdir][0],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = rehearsal.wait_http(
            f"{base}/health", server, time.monotonic() + STEP_TIMEOUT
        )
        assert status == 200, body
        status, body = rehearsal.http_get(f"{base}/health/plugins")
        assert status == 200, body
        result["plugins"] = json.loads(body)
        # Nothing pending: wheels verified, plugins installed, database at the heads.
        with world.log_file("status").open("wb") as out:
            check = subprocess.run(
                [sys.executable, "-m", "portal_boot", "status"],
                cwd=mounts[world.image.workdir][0],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT,
            )
        result["status"] = check.returncode
    except BaseException:
        rehearsal.stop(server)
        print(world.all_logs())
        raise
    result["exit"] = rehearsal.stop(server)
    assert read_only_digests(mounts) == before, f"service {last} wrote to a read-only mount"
    assert tree_digest(world.app_dir) == world.app_digest, (
        "something wrote into the image's app folder"
    )
    result["logs"] = world.all_logs()
    return result


def assert_graceful_stop(result: Mapping[str, Any]) -> None:
    """uvicorn shuts down on SIGTERM, then re-raises the signal so that its exit status
    says why it stopped (tini then exits 143): a graceful stop is that, or 0."""
    assert result["exit"] in (0, -signal.SIGTERM), (
        f"exit {result['exit']} after SIGTERM\n{result['logs']}"
    )
    assert "Application shutdown complete" in result["logs"], result["logs"]


def _served_names(payload: Any) -> set[str]:
    plugins = payload["plugins"] if isinstance(payload, dict) else payload
    return {p["name"] if isinstance(p, dict) else str(p) for p in plugins}


def test_split_compose_file_boots_the_example(
    tmp_path: Path, example_build: dict[str, Path], pg_url: str, clean_env: dict[str, str]
) -> None:
    result = rehearse("split.yaml", tmp_path, example_build, pg_url, clean_env)
    assert [(n, c[0]) for n, c in result["order"]] == [
        ("install", "install"),
        ("migrate", "migrate"),
        ("backend", "serve"),
    ]
    expected = plugin_names(example_build[str(paths.REPO / "examples" / "wheels")])
    # Two chained onto the portal's migrations, one with its own Alembic environment.
    assert len(expected) >= 3, f"the example wheels should hold three plugins, not {expected}"
    assert _served_names(result["plugins"]) == expected, result["logs"]
    assert result["status"] == 0, f"portal-boot status reports something pending\n{result['logs']}"
    assert_graceful_stop(result)


def test_all_in_one_compose_file_boots_the_example(
    tmp_path: Path, example_build: dict[str, Path], pg_url: str, clean_env: dict[str, str]
) -> None:
    result = rehearse("all-in-one.yaml", tmp_path, example_build, pg_url, clean_env)
    assert [(n, c) for n, c in result["order"]] == [("portal", ["run"])]
    expected = plugin_names(example_build[str(paths.REPO / "examples" / "wheels")])
    assert _served_names(result["plugins"]) == expected, result["logs"]
    assert result["status"] == 0, f"portal-boot status reports something pending\n{result['logs']}"
    assert_graceful_stop(result)


def test_secret_points_at_the_test_database(
    tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    """The mapping itself: the driver and query of the compose secret survive, the host
    becomes the test server's. (Runs before the other pieces exist.)"""
    world = Rehearsal(paths.COMPOSE_DIR / "split.yaml", tmp_path, {}, pg_url, clean_env)
    secret = world._secret("database-url").read_text().strip()
    original = make_url((paths.COMPOSE_DIR / "secrets" / "database-url.txt").read_text().strip())
    mapped, test = make_url(secret), make_url(pg_url)
    assert original.host == "db" and mapped.drivername == original.drivername
    assert (mapped.host, mapped.port, mapped.database) == (test.host, test.port, test.database)
    assert mapped.password == test.password
    mounts = {"/var/lib/portal-boot": (tmp_path / "state", False)}
    assert Rehearsal._host_path("/var/lib/portal-boot/plugins", mounts, "x") == str(
        tmp_path / "state" / "plugins"
    )
    with pytest.raises(AssertionError, match="no volume"):
        Rehearsal._host_path("/opt/elsewhere", mounts, "x")


def _run_build_step(root: Path, build: Mapping[str, Path], clean_env: Mapping[str, str]):
    image, env, argv = rehearsal.build_step(paths.DOCKERFILES[1])
    fs = rehearsal.ImageRoot(root)
    fs.copy_in(image, build)
    fs.host("/tmp").mkdir(parents=True, exist_ok=True)
    child_env = dict(clean_env)
    child_env.update({k: fs.map(v) for k, v in env.items() if k != "PATH"})
    done = subprocess.run(
        [sys.executable, "-m", "portal_boot", *[fs.map(a) for a in argv]],
        cwd=fs.host(image.workdir) if fs.host(image.workdir).exists() else root,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    return fs, argv, done


def test_plugin_image_build_step_installs_the_signed_wheels(
    tmp_path: Path, example_build: dict[str, Path], clean_env: dict[str, str]
) -> None:
    """Dockerfile.with-plugins' own RUN line, on the files its COPY lines bring in."""
    fs, argv, done = _run_build_step(tmp_path / "root", example_build, clean_env)
    assert argv[0] == "install"
    assert done.returncode == 0, done.stdout + done.stderr
    target = fs.host(argv[argv.index("--target") + 1])
    from portal_boot.plugins import discover

    found = {p.name for p in discover([target], rehearsal.PLUGIN_GROUP)}
    assert found == plugin_names(example_build[str(paths.REPO / "examples" / "wheels")])


def test_plugin_image_build_fails_on_a_tampered_wheel(
    tmp_path: Path, example_build: dict[str, Path], clean_env: dict[str, str]
) -> None:
    """The point of installing at build time: a wheel that is not what was signed fails
    the build (status 3), and nothing is installed."""
    wheels = tmp_path / "wheels"
    shutil.copytree(example_build[str(paths.REPO / "examples" / "wheels")], wheels)
    victim = sorted(wheels.glob("*.whl"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    build = {**example_build, str(paths.REPO / "examples" / "wheels"): wheels}
    fs, argv, done = _run_build_step(tmp_path / "root", build, clean_env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert victim.name in done.stderr
    target = fs.host(argv[argv.index("--target") + 1])
    assert not target.exists() and not target.is_symlink()
