"""A rehearsal of the Helm chart's pods, without a cluster: the objects `helm template`
renders, each pod's containers run in order as real processes with the image's environment
and the container's own (ConfigMap, env), its volumes as folders (emptyDirs its own, the
wheel claim holding the example wheels signed by scripts/build-example-plugins.sh, the keys'
ConfigMap the demo key, the database Secret a URL of the test PostgreSQL).

- migrations: job: a replica installs, then `serve --wait-for-migrations` waits while the
  Job has not run; the Job installs and migrates; the replica then serves both plugins and
  `portal-boot status` has nothing pending. An upgrade that enables a plugin makes a Job of
  another name, and a new replica waits for it, then serves the new set.
- migrations: initContainer: two pods install, migrate at the same time (the lock), serve.
- wheels.source: none, with the image Dockerfile.with-plugins builds (its own build step run
  into a folder that stands for the image's filesystem): no install at run time; the Job
  migrates the baked plugins and the replica serves them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from deploy import dockerfiles, paths, rehearsal
from deploy import helm as chart
from deploy.pods import STEP_TIMEOUT, Pod
from deploy.rehearsal import plugin_names, tree_digest
from pgserver import free_port
from sqlalchemy.engine import make_url
from test_rehearsal import example_build  # noqa: F401  (the session fixture)

S3, SNOWFLAKE = "S3TechnicalAssetConfiguration", "SnowflakeTechnicalAssetConfiguration"


class Cluster:
    """What the operator provides (the wheel volume, the keys, the database Secret) and the
    image's application folder, shared by every pod of the rehearsal."""

    def __init__(self, tmp: Path, build: dict[str, Path], pg_url: str, base_env: dict[str, str]):
        self.tmp = tmp
        self.base_env = base_env
        values = chart.default_values()
        secret = tmp / "secret-portal-database"
        secret.mkdir()
        # A real site's URL: the async driver, as docs/deployment.md creates the Secret.
        url = make_url(pg_url).set(drivername="postgresql+asyncpg")
        (secret / values["database"]["urlKey"]).write_text(
            url.render_as_string(hide_password=False) + "\n", encoding="utf-8"
        )
        self.sources = {
            ("PersistentVolumeClaim", f"{chart.RELEASE}-plugin-wheels"): build[
                str(paths.REPO / "examples" / "wheels")
            ],
            ("ConfigMap", values["trustedKeys"]["existingConfigMap"]): build[
                str(paths.REPO / "examples" / "keys")
            ],
            ("Secret", values["database"]["existingSecret"]): secret,
        }
        # The image's application folder (what Dockerfile.base copies to its WORKDIR).
        self.app_dir = tmp / "image-app"
        shutil.copytree(rehearsal.app_source(dockerfiles.base_image()), self.app_dir)
        self.app_digest = tree_digest(self.app_dir)
        self.pods: list[Pod] = []
        self.read_only = {str(p): tree_digest(p) for p in self.sources.values()}

    def pod(self, docs: list[dict[str, Any]], kind: str, name: str, **image: Any) -> Pod:
        pod = Pod(docs, kind, self.tmp / name, self.sources, self.app_dir, self.base_env, **image)
        self.pods.append(pod)
        return pod

    def logs(self) -> str:
        return "\n".join(p.all_logs() for p in self.pods)

    def assert_untouched(self) -> None:
        assert {str(p): tree_digest(p) for p in self.sources.values()} == self.read_only
        assert tree_digest(self.app_dir) == self.app_digest


@pytest.fixture
def cluster(
    tmp_path: Path,
    example_build: dict[str, Path],  # noqa: F811
    pg_url: str,
    clean_env: dict[str, str],
) -> Cluster:
    return Cluster(tmp_path, example_build, pg_url, clean_env)


def _init(pod: Pod, cluster: Cluster) -> None:
    for container in pod.init_containers:
        code = pod.run(container)
        assert code == 0, f"{container['name']} exited {code}\n{cluster.logs()}"


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"exited {process.returncode} before logging {text!r}"
        assert time.monotonic() < deadline, f"{text!r} not logged in {STEP_TIMEOUT} s"
        time.sleep(0.1)


def _served(port: int, process: subprocess.Popen[bytes]) -> set[str]:
    base = f"http://127.0.0.1:{port}"
    status, body = rehearsal.wait_http(f"{base}/health", process, time.monotonic() + STEP_TIMEOUT)
    assert status == 200, body
    status, body = rehearsal.http_get(f"{base}/health/plugins")
    assert status == 200, body
    payload = json.loads(body)
    plugins = payload["plugins"] if isinstance(payload, dict) else payload
    return {p["name"] if isinstance(p, dict) else str(p) for p in plugins}


def _status(pod: Pod) -> int:
    """`kubectl exec deploy/portal -c backend -- portal-boot status`."""
    return pod.run(pod.main, args=["status"])


def test_job_pattern_replicas_wait_for_the_job_then_serve(cluster: Cluster) -> None:
    values = {"migrations": "job", "image": chart.IMAGE, "plugins": {"enabled": [S3]}}
    docs = chart.render(values)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        replica = cluster.pod(docs, "Deployment", "replica-1")
        _init(replica, cluster)
        port = free_port()
        server, log = replica.start(replica.main, port=port)
        servers.append(server)
        # No Job has run: the replica waits instead of serving an old schema.
        _wait_for_line(log, "waiting for the migrations", server)

        job = cluster.pod(docs, "Job", chart.RELEASE + "-migrate-1")
        _init(job, cluster)
        assert job.run(job.main) == 0, cluster.logs()
        assert _served(port, server) == {S3}, cluster.logs()
        assert _status(replica) == 0, cluster.logs()

        # Upgrade: a plugin enabled. Another Job name; a new replica waits for that Job.
        upgraded = {**values, "plugins": {"enabled": [S3, SNOWFLAKE]}}
        new_docs = chart.render(upgraded)
        assert (
            job.doc["metadata"]["name"]
            != Pod(
                new_docs, "Job", cluster.tmp / "unused", cluster.sources, cluster.app_dir, {}
            ).doc["metadata"]["name"]
        )
        new_replica = cluster.pod(new_docs, "Deployment", "replica-2")
        _init(new_replica, cluster)
        new_port = free_port()
        new_server, new_log = new_replica.start(new_replica.main, port=new_port)
        servers.append(new_server)
        _wait_for_line(new_log, "waiting for the migrations", new_server)
        new_job = cluster.pod(new_docs, "Job", chart.RELEASE + "-migrate-2")
        _init(new_job, cluster)
        assert new_job.run(new_job.main) == 0, cluster.logs()
        assert _served(new_port, new_server) == {S3, SNOWFLAKE}, cluster.logs()
        assert _status(new_replica) == 0, cluster.logs()
        # The old replica keeps serving its own set meanwhile (a rolling update).
        assert _served(port, server) == {S3}, cluster.logs()
    finally:
        for server in servers:
            rehearsal.stop(server)
    cluster.assert_untouched()


def test_init_container_pattern_pods_migrate_together_then_serve(cluster: Cluster) -> None:
    docs = chart.render({"migrations": "initContainer", "image": chart.IMAGE})
    pods = [cluster.pod(docs, "Deployment", f"pod-{i}") for i in (1, 2)]
    for pod in pods:
        install, migrate = pod.init_containers
        assert pod.args(install) == ["install"] and pod.args(migrate) == ["migrate"]
        assert pod.run(install) == 0, cluster.logs()
    # Both migrate init containers at once: the lock lets one apply, the other find nothing.
    started = [pod.start(pod.init_containers[1])[0] for pod in pods]
    codes = [p.wait(timeout=STEP_TIMEOUT) for p in started]
    assert codes == [0, 0], cluster.logs()
    servers = []
    try:
        for pod in pods:
            port = free_port()
            server, _ = pod.start(pod.main, port=port)
            servers.append(server)
            expected = plugin_names(
                cluster.sources[("PersistentVolumeClaim", "portal-plugin-wheels")]
            )
            assert _served(port, server) == expected, cluster.logs()
        assert _status(pods[0]) == 0, cluster.logs()
    finally:
        for server in servers:
            rehearsal.stop(server)
    cluster.assert_untouched()


def test_baked_plugins_need_no_wheel_volume(
    cluster: Cluster,
    tmp_path: Path,
    example_build: dict[str, Path],  # noqa: F811
) -> None:
    # The image Dockerfile.with-plugins builds: its RUN portal-boot install, into a folder.
    image, env, argv = rehearsal.build_step(paths.DOCKERFILES[1])
    root = rehearsal.ImageRoot(tmp_path / "baked-image")
    root.copy_in(image, example_build)
    root.host("/tmp").mkdir(parents=True, exist_ok=True)
    build_env = {**cluster.base_env, **{k: root.map(v) for k, v in env.items() if k != "PATH"}}
    done = subprocess.run(
        [sys.executable, "-m", "portal_boot", *[root.map(a) for a in argv]],
        cwd=cluster.app_dir,
        env=build_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    docs = chart.render({"migrations": "job", "image": chart.IMAGE, "wheels": {"source": "none"}})
    baked = {"image": image, "image_root": root.root}
    replica = cluster.pod(docs, "Deployment", "replica", **baked)
    job = cluster.pod(docs, "Job", "migrate", **baked)
    assert replica.init_containers == [] and job.init_containers == []
    port = free_port()
    server, log = replica.start(replica.main, port=port)
    try:
        _wait_for_line(log, "waiting for the migrations", server)
        assert job.run(job.main) == 0, cluster.logs()
        expected = plugin_names(example_build[str(paths.REPO / "examples" / "wheels")])
        assert _served(port, server) == expected, cluster.logs()
        assert _status(replica) == 0, cluster.logs()
    finally:
        rehearsal.stop(server)
    cluster.assert_untouched()
