"""Where the deployment files are, and the few facts the checks share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = (REPO / "Dockerfile.base", REPO / "Dockerfile.with-plugins")
COMPOSE_DIR = REPO / "compose"
K8S_DIR = REPO / "k8s"
DOCS = REPO / "docs" / "deployment.md"
COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"

# Objects the Kubernetes manifests use but do not define: created from files by the
# operator (`kubectl create configmap portal-boot-trusted-keys --from-file=...`).
K8S_EXTERNAL_OBJECTS = {("ConfigMap", "portal-boot-trusted-keys")}

# Variables a portal-boot container may be given that are not portal-boot's own.
GENERIC_VARIABLES = {"PATH", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# Read by the image itself, not by portal-boot: the HEALTHCHECK's path (Dockerfile.base).
IMAGE_VARIABLES = {"PORTAL_BOOT_HEALTH_PATH"}
INIT_PROCESSES = {"tini", "dumb-init", "/usr/bin/tini", "/usr/bin/dumb-init"}
STATE_DIR = "/var/lib/portal-boot"


def deployment_files() -> list[Path]:
    """Every file the drift check reads: Dockerfiles, compose, Kubernetes, the docs."""
    files = [*DOCKERFILES, *sorted(COMPOSE_DIR.glob("*.yaml")), *sorted(K8S_DIR.glob("*.yaml"))]
    if DOCS.exists():
        files.append(DOCS)
    return files
