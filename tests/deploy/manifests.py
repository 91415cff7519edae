"""Kubernetes manifests: the schemas shipped by ``kubernetes-validate`` (strict: an
unknown field is an error), and the restricted-pod and portal-boot checks no schema makes."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from deploy import dockerfiles, paths

# Kubernetes minor versions older than this are out of support everywhere that matters.
OLDEST_CHECKED = (1, 30)


def schema_versions() -> tuple[str, ...]:
    """The oldest supported and the newest Kubernetes version whose schemas the installed
    kubernetes-validate ships (it ships a moving window of minor versions)."""
    from kubernetes_validate.utils import all_versions

    shipped = sorted(all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    recent = [v for v in shipped if tuple(int(x) for x in v.split(".")[:2]) >= OLDEST_CHECKED]
    assert recent, f"kubernetes-validate ships no schema from {OLDEST_CHECKED} on: {shipped}"
    return tuple(dict.fromkeys((recent[0], shipped[-1])))


def k8s_schema_errors(doc: Mapping[str, Any], version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [
            f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc.message} at {'/'.join(map(str, exc.path))}"
        ]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return [f"{doc.get('kind')}: {exc}"]
    return []


def pod_specs(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield doc["spec"]


def is_portal_container(container: Mapping[str, Any]) -> bool:
    image = str(container.get("image", ""))
    return PurePosixPath(image.split("@")[0].rsplit(":", 1)[0]).name == "portal-boot"


def container_args(
    container: Mapping[str, Any], image: dockerfiles.ImageConfig
) -> list[str] | None:
    """The arguments portal-boot receives, or None when the entrypoint is replaced."""
    if "command" in container:
        return None
    args = container.get("args")
    return [str(a) for a in args] if args is not None else list(image.cmd)


def container_environment(
    container: Mapping[str, Any], objects: Mapping[tuple[str, str], Mapping[str, Any]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        obj = objects.get((kind, ref["name"])) or {}
        data = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        env[item["name"]] = str(
            item.get("value", "<from %s>" % next(iter(item.get("valueFrom") or {"?": 0})))
        )
    return env


def k8s_objects(docs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def k8s_problems(
    docs: Sequence[Mapping[str, Any]],
    path: Path,
    external: Collection[tuple[str, str]] = paths.K8S_EXTERNAL_OBJECTS,
) -> list[str]:
    """``external``: the (kind, name) of objects the documents use but the operator creates."""
    problems: list[str] = []
    objects = k8s_objects(docs)
    image = dockerfiles.base_image()
    image_target = image.env["PORTAL_BOOT_TARGET"]

    def defined(kind: str, name: str) -> bool:
        return (kind, name) in objects or (kind, name) in external

    for doc in docs:
        if doc["kind"] == "Service" and doc["metadata"]["name"].upper().replace(
            "-", "_"
        ).startswith("PORTAL_BOOT"):
            problems.append(
                f"{path.name}: Service {doc['metadata']['name']} would inject PORTAL_BOOT_* service-link variables"
            )
        for spec in pod_specs(doc):
            where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
            pod_sc = spec.get("securityContext") or {}
            if pod_sc.get("runAsNonRoot") is not True:
                problems.append(f"{where}: securityContext.runAsNonRoot must be true")
            if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile RuntimeDefault missing")
            if pod_sc.get("runAsUser") == 0:
                problems.append(f"{where}: runAsUser 0")
            if spec.get("enableServiceLinks") is not False:
                problems.append(
                    f"{where}: enableServiceLinks must be false (service links inject *_PORT variables)"
                )
            volumes = {v["name"]: v for v in spec.get("volumes") or []}
            for name, volume in volumes.items():
                if "persistentVolumeClaim" in volume and not defined(
                    "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
                ):
                    problems.append(
                        f"{where}: volume {name}: claim {volume['persistentVolumeClaim']['claimName']} is not defined"
                    )
                if "configMap" in volume and not defined("ConfigMap", volume["configMap"]["name"]):
                    problems.append(
                        f"{where}: volume {name}: ConfigMap {volume['configMap']['name']} is not defined"
                    )
                if "secret" in volume and not defined("Secret", volume["secret"]["secretName"]):
                    problems.append(
                        f"{where}: volume {name}: Secret {volume['secret']['secretName']} is not defined"
                    )
            init = spec.get("initContainers") or []
            installed_into: set[str] = set()  # volumes an install init container filled
            for position, container in enumerate([*init, *spec.get("containers", [])]):
                is_init = position < len(init)
                cwhere = f"{where}: container {container['name']}"
                sc = {**pod_sc, **(container.get("securityContext") or {})}
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{cwhere}: allowPrivilegeEscalation must be false")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{cwhere}: readOnlyRootFilesystem must be true")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{cwhere}: capabilities must drop ALL")
                resources = container.get("resources") or {}
                if not (
                    resources.get("requests") and (resources.get("limits") or {}).get("memory")
                ):
                    problems.append(f"{cwhere}: resources.requests and a memory limit are required")
                mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
                for mount in mounts.values():
                    if mount["name"] not in volumes:
                        problems.append(f"{cwhere}: mounts unknown volume {mount['name']!r}")
                for source in container.get("envFrom") or []:
                    ref = source.get("configMapRef") or source.get("secretRef")
                    kind = "ConfigMap" if "configMapRef" in source else "Secret"
                    if not defined(kind, ref["name"]):
                        problems.append(f"{cwhere}: envFrom {kind} {ref['name']} is not defined")
                if not is_portal_container(container):
                    continue
                args = container_args(container, image)
                if args is None:
                    problems.append(
                        f"{cwhere}: replaces the image's entrypoint (tini, portal-boot): use args"
                    )
                    continue
                step = args[0] if args else "run"
                env = container_environment(container, objects)
                # Another target than the base image's is one a derived image baked its
                # plugins into (Dockerfile.with-plugins): nothing to install at run time,
                # and no volume may hide it.
                target = env.get("PORTAL_BOOT_TARGET", image_target)
                target_parent = str(PurePosixPath(target).parent)
                baked = target != image_target
                if "/tmp" not in mounts or "emptyDir" not in volumes.get(
                    mounts["/tmp"]["name"], {}
                ):
                    problems.append(
                        f"{cwhere}: /tmp must be an emptyDir (the root filesystem is read-only)"
                    )
                if target in mounts:
                    problems.append(
                        f"{cwhere}: mount the parent {target_parent}, not the target itself"
                    )
                state = mounts.get(target_parent)
                if baked:
                    if state is not None:
                        problems.append(
                            f"{cwhere}: a volume on {target_parent} hides the plugins baked into {target}"
                        )
                    if step == "install":
                        problems.append(
                            f"{cwhere}: install into the baked target {target}: bake them at build time"
                        )
                elif step in ("run", "install", "migrate", "serve"):
                    if state is None:
                        problems.append(f"{cwhere}: `{step}` needs a volume on {target_parent}")
                    elif "emptyDir" not in volumes.get(state["name"], {}):
                        problems.append(f"{cwhere}: {target_parent} should be an emptyDir")
                if step == "install":
                    if state is not None:
                        if state.get("readOnly"):
                            problems.append(
                                f"{cwhere}: install writes to {target_parent}: not read-only"
                            )
                        installed_into.add(state["name"])
                    wheel_dir = env.get("PORTAL_BOOT_WHEEL_DIR")
                    if wheel_dir and not (mounts.get(wheel_dir) or {}).get("readOnly"):
                        problems.append(
                            f"{cwhere}: the wheel folder {wheel_dir} must be a read-only mount"
                        )
                    if not is_init:
                        problems.append(f"{cwhere}: install belongs in an init container")
                # Every container given the wheel folder and keys (a shared ConfigMap) has
                # them mounted, so `kubectl exec ... portal-boot status` there works.
                for var in ("PORTAL_BOOT_WHEEL_DIR", "PORTAL_BOOT_TRUSTED_KEYS"):
                    named = env.get(var)
                    if named and named.startswith("/") and not any(
                        named == m or named.startswith(m.rstrip("/") + "/") for m in mounts
                    ):
                        problems.append(f"{cwhere}: {var}={named} is on no mounted volume")
                if step in ("migrate", "serve") and state is not None and not baked:
                    if state["name"] not in installed_into:
                        problems.append(
                            f"{cwhere}: `{step}` runs before any install filled {target_parent} in this pod"
                        )
                for var, value in env.items():
                    if var.endswith("_FILE") and value.startswith("/"):
                        if not any(value.startswith(p.rstrip("/") + "/") for p in mounts):
                            problems.append(f"{cwhere}: {var}={value} is on no mounted volume")
                if step == "serve" and not is_init:
                    port_names = {
                        p.get("name"): p["containerPort"] for p in container.get("ports") or []
                    }
                    health = env.get("PORTAL_BOOT_HEALTH_PATH", "/health")
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        http = (container.get(probe) or {}).get("httpGet") or {}
                        if http.get("path") != health:
                            problems.append(f"{cwhere}: {probe} must GET {health}")
                        elif port_names.get(http.get("port"), http.get("port")) != int(
                            env.get("PORTAL_BOOT_PORT", image.env.get("PORTAL_BOOT_PORT", "8000"))
                        ):
                            problems.append(f"{cwhere}: {probe} asks another port than uvicorn's")
                if step in ("migrate", "serve", "run") and "DATABASE_URL" not in " ".join(env):
                    problems.append(f"{cwhere}: `{step}` has no database URL (DATABASE_URL_FILE)")
    return problems
