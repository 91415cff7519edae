"""A rendered pod played on this machine (see tests/test_helm_rehearsal.py): its volumes as
folders, its containers' own arguments run as real processes with the image's environment
and the container's (ConfigMap, env), every container path mapped to a folder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy import dockerfiles, manifests
from deploy.rehearsal import Rehearsal

STEP_TIMEOUT = 180.0


class Pod:
    """One pod of a rendered Deployment or Job. ``sources`` gives the folder behind each
    volume the operator provides: ("PersistentVolumeClaim", name), ("ConfigMap", name),
    ("Secret", name); emptyDirs are the pod's own folders; ``app`` is the image's
    application folder."""

    def __init__(
        self,
        docs: Sequence[Mapping[str, Any]],
        kind: str,
        folder: Path,
        sources: Mapping[tuple[str, str], Path],
        app: Path,
        base_env: Mapping[str, str],
        *,
        image: dockerfiles.ImageConfig | None = None,
        image_root: Path | None = None,
    ):
        """``image``: the image's configuration (default Dockerfile.base's);
        ``image_root``: its filesystem, where a path on no volume is found (default an
        empty folder)."""
        self.objects = manifests.k8s_objects(docs)
        self.doc = next(d for d in docs if d["kind"] == kind)
        self.spec = next(manifests.pod_specs(self.doc))
        self.image = image or dockerfiles.base_image()
        self.image_root = image_root or folder / "image-root"
        self.folder = folder
        self.app = app
        self.base_env = dict(base_env)
        self.logs: list[Path] = []
        self.volumes: dict[str, Path] = {}
        for volume in self.spec["volumes"]:
            name = volume["name"]
            if "emptyDir" in volume:
                self.volumes[name] = folder / "volumes" / name
                self.volumes[name].mkdir(parents=True)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                self.volumes[name] = sources[("PersistentVolumeClaim", claim)]
            elif "configMap" in volume:
                self.volumes[name] = sources[("ConfigMap", volume["configMap"]["name"])]
            elif "secret" in volume:
                self.volumes[name] = sources[("Secret", volume["secret"]["secretName"])]
            else:
                raise AssertionError(f"volume {name}: {sorted(volume)} is not rehearsed")

    @property
    def init_containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers") or [])

    @property
    def main(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]
        return container

    def args(self, container: Mapping[str, Any]) -> list[str]:
        args = manifests.container_args(container, self.image)
        assert args is not None, f"{container['name']} replaces the entrypoint"
        return args

    def mounts(self, container: Mapping[str, Any]) -> dict[str, tuple[Path, bool]]:
        mounts = {self.image.workdir: (self.app, True)}
        for mount in container.get("volumeMounts") or []:
            mounts[mount["mountPath"]] = (self.volumes[mount["name"]], bool(mount.get("readOnly")))
        return mounts

    def environment(self, container: Mapping[str, Any], port: int | None = None) -> dict[str, str]:
        mounts = self.mounts(container)
        container_env = {k: v for k, v in self.image.env.items() if k != "PATH"}
        container_env.update(manifests.container_environment(container, self.objects))
        if "/tmp" in mounts:
            container_env.setdefault("TMPDIR", "/tmp")
        if port is not None:
            container_env["PORTAL_BOOT_HOST"] = "127.0.0.1"
            container_env["PORTAL_BOOT_PORT"] = str(port)
        # A path on no mount is the image's own.
        mounts.setdefault("/", (self.image_root, True))
        env = dict(self.base_env)
        for key, value in container_env.items():
            env[key] = Rehearsal._host_path(value, mounts, f"{container['name']}: {key}")
        return env

    def log_file(self, label: str) -> Path:
        path = self.folder / "logs" / f"{len(self.logs):02d}-{label}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(path)
        return path

    def all_logs(self) -> str:
        return "\n".join(
            f"----- {self.folder.name}/{p.name}\n{p.read_text(errors='replace')}"
            for p in self.logs
            if p.exists()
        )

    def start(
        self, container: Mapping[str, Any], *, port: int | None = None, args: Sequence[str] = ()
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """The container's own command (or ``args``: a `kubectl exec` into it)."""
        log = self.log_file(container["name"] if not args else f"{container['name']}-exec")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "portal_boot", *(args or self.args(container))],
                cwd=self.app,
                env=self.environment(container, port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def run(self, container: Mapping[str, Any], *, args: Sequence[str] = ()) -> int:
        process, _ = self.start(container, args=args)
        try:
            return process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"{container['name']} did not finish in {STEP_TIMEOUT} s"
            ) from None
