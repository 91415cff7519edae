"""The Helm chart (charts/portal-boot): the Helm binaries scripts/install-helm.sh puts
under .cache/helm/, ``helm lint`` and ``helm template`` on a set of values, and the values
matrix the tests render."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deploy import paths

# The last Helm 3 and a Helm 4, as scripts/install-helm.sh installs them.
HELM_VERSIONS = ("3.18.0", "4.1.4")
HELM_CACHE = paths.REPO / ".cache" / "helm"
RELEASE = "portal"
NAMESPACE = "portal"


class HelmError(Exception):
    """helm exited non-zero; the message is its output."""


def helm_binary(version: str) -> Path:
    binary = HELM_CACHE / version / "helm"
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{binary} is missing: run bash scripts/install-helm.sh")
    return binary


def run_helm(
    version: str, *args: str, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """helm ARGS with its own empty config, cache and data folders and no cluster."""
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "KUBECONFIG": f"{home}/no-kubeconfig",
        }
        return subprocess.run(
            [str(helm_binary(version)), *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _values_file(values: Mapping[str, Any], folder: str) -> str:
    path = Path(folder) / "values.json"  # JSON is YAML
    path.write_text(json.dumps(values), encoding="utf-8")
    return str(path)


def template_text(
    values: Mapping[str, Any],
    *,
    version: str = HELM_VERSIONS[-1],
    release: str = RELEASE,
    kube_version: str | None = None,
) -> str:
    """The rendered manifests, as ``helm template`` prints them. Raises HelmError."""
    with tempfile.TemporaryDirectory(prefix="helm-values-") as folder:
        args = ["template", release, str(paths.CHART_DIR), "--namespace", NAMESPACE]
        args += ["--values", _values_file(values, folder)]
        if kube_version:
            args += ["--kube-version", kube_version]
        proc = run_helm(version, *args)
    if proc.returncode != 0:
        raise HelmError((proc.stderr or proc.stdout).strip())
    return proc.stdout


def dry_run_install(values: Mapping[str, Any], *, version: str = HELM_VERSIONS[-1]) -> str:
    """``helm install --dry-run=client``: the release as Helm would install it, hooks and
    NOTES included. Helm 4 does it without a cluster (Helm 3 asks the cluster's version)."""
    with tempfile.TemporaryDirectory(prefix="helm-values-") as folder:
        proc = run_helm(
            version,
            "install",
            RELEASE,
            str(paths.CHART_DIR),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "--values",
            _values_file(values, folder),
        )
    if proc.returncode != 0:
        raise HelmError((proc.stderr or proc.stdout).strip())
    return proc.stdout


def render(values: Mapping[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """``helm template`` parsed: one dict a Kubernetes object."""
    return [d for d in yaml.safe_load_all(template_text(values, **kwargs)) if d]


def lint(values: Mapping[str, Any], *, version: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="helm-values-") as folder:
        return run_helm(
            version,
            "lint",
            "--strict",
            str(paths.CHART_DIR),
            "--values",
            _values_file(values, folder),
        )


def default_values() -> dict[str, Any]:
    return yaml.safe_load((paths.CHART_DIR / "values.yaml").read_text(encoding="utf-8"))


def merged_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values as Helm sees them: ``values`` merged into the chart's defaults (maps merge
    key by key, anything else replaces; null removes the key)."""

    def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if value is None:
                out.pop(key, None)
            elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    return merge(default_values(), values)


def external_objects(values: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The objects a release with these values uses but the operator creates."""
    merged = merged_values(values)
    found = set()
    if not merged["database"]["url"]:
        found.add(("Secret", merged["database"]["existingSecret"]))
    if merged["wheels"]["source"] == "pvc":
        keys = merged["trustedKeys"]
        if not keys["keys"]:
            if keys["existingSecret"]:
                found.add(("Secret", keys["existingSecret"]))
            else:
                found.add(("ConfigMap", keys["existingConfigMap"]))
        if merged["wheels"]["pvc"]["existingClaim"]:
            found.add(("PersistentVolumeClaim", merged["wheels"]["pvc"]["existingClaim"]))
    return found


@dataclasses.dataclass(frozen=True)
class Case:
    """One set of values of the matrix."""

    id: str
    values: Mapping[str, Any]

    @property
    def migrations(self) -> str:
        return self.values["migrations"]

    @property
    def wheels(self) -> str:
        return self.values["wheels"]["source"]

    @property
    def openshift(self) -> bool:
        return self.values["openshift"]


IMAGE = {"repository": "registry.example.com/portal-boot", "tag": "1.2.3"}

# What a site changes beyond the pattern: the optional values all set at once.
EVERYTHING: dict[str, Any] = {
    "plugins": {"enabled": ["s3_plugin", "snowflake_plugin"], "revision": "2026-12-01"},
    "trustedKeys": {
        "existingConfigMap": "",
        "existingSecret": "site-signing-keys",
        "fingerprints": ["0123456789ABCDEF0123456789ABCDEF01234567"],
    },
    "database": {"migrationUrlKey": "direct-database-url", "timeout": 90, "lockTimeout": 600},
    "migrationJob": {"deadlineSeconds": 1200, "ttlSecondsAfterFinished": None},
    "healthPath": "/api/v2/version",
    "uvicornArgs": ["--proxy-headers", "--forwarded-allow-ips", "*"],
    "extraEnv": [
        {"name": "PORTAL_BOOT_LOG_LEVEL", "value": "debug"},
        {"name": "PIP_INDEX_URL", "value": "https://pypi.example.com/simple"},
    ],
    "logFormat": "text",
    "appStartSeconds": 120,
}


def matrix() -> list[Case]:
    """Both patterns x a wheel volume or baked plugins x OpenShift mode, with the defaults;
    and both patterns with every optional value set, once with the chart creating the
    database Secret, the trusted keys and using an existing claim."""
    cases = []
    for migrations in ("initContainer", "job"):
        for wheels in ("pvc", "none"):
            for openshift in (False, True):
                values = {
                    "migrations": migrations,
                    "image": IMAGE,
                    "wheels": {"source": wheels},
                    "openshift": openshift,
                }
                cases.append(
                    Case(
                        f"{migrations}-{wheels}{'-openshift' if openshift else ''}",
                        values,
                    )
                )
        cases.append(
            Case(
                f"{migrations}-pvc-everything",
                {
                    "migrations": migrations,
                    "image": {**IMAGE, "digest": "sha256:" + "ab" * 32},
                    "wheels": {"source": "pvc"},
                    "openshift": False,
                    **EVERYTHING,
                },
            )
        )
        cases.append(
            Case(
                f"{migrations}-pvc-chart-made-objects",
                {
                    "migrations": migrations,
                    "image": IMAGE,
                    "wheels": {"source": "pvc", "pvc": {"existingClaim": "site-wheels"}},
                    "openshift": True,
                    "trustedKeys": {
                        "keys": {"site.asc": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n..."}
                    },
                    "database": {
                        "existingSecret": "",
                        "url": "postgresql+asyncpg://portal:CHANGE-ME@pgbouncer:6432/portal",
                        "migrationUrl": "postgresql+asyncpg://portal:CHANGE-ME@postgres:5432/portal",
                    },
                },
            )
        )
    return cases


# --- the deployment guide's Helm section ------------------------------------------------------


def guide_section() -> str:
    """docs/deployment.md's "### Helm" section."""
    text = paths.DOCS.read_text(encoding="utf-8")
    start = text.index("\n### Helm\n")
    end = text.index("\n## ", start)
    return text[start:end]


def guide_blocks(section: str, language: str) -> list[str]:
    """The fenced code blocks of one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def guide_shell(block: str) -> tuple[dict[str, str], list[list[str]]]:
    """A shell block as the user pastes it: the files its here-documents write, and its
    commands (continuation lines joined) as argument lists."""
    files: dict[str, str] = {}
    commands: list[list[str]] = []
    lines = iter(block.splitlines())
    pending = ""
    for line in lines:
        heredoc = re.fullmatch(r"cat > (\S+) <<'(\w+)'", line.strip())
        if heredoc:
            body = []
            for inner in lines:
                if inner == heredoc.group(2):
                    break
                body.append(inner)
            files[heredoc.group(1)] = "\n".join(body) + "\n"
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        if pending.strip():
            commands.append(shlex.split(pending, comments=True))
        pending = ""
    return files, commands
