"""Where the deployment files are, and the few facts the checks share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = (REPO / "Dockerfile.base", REPO / "Dockerfile.with-plugins")
COMPOSE_DIR = REPO / "compose"
K8S_DIR = REPO / "k8s"
CHART_DIR = REPO / "charts" / "portal-boot"
DOCS = REPO / "docs" / "deployment.md"
COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"

# Objects the Kubernetes manifests use but do not define: created from files by the
# operator (`kubectl create configmap portal-boot-trusted-keys --from-file=...`).
K8S_EXTERNAL_OBJECTS = {("ConfigMap", "portal-boot-trusted-keys")}

# Variables a portal-boot container may be given that are not portal-boot's own.
GENERIC_VARIABLES = {"PATH", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# Variables the deployment files may set before the CLI reads them: each is being added to
# the CLI by other work (issue 13: a direct URL for migrations behind a pooler; issue 12:
# the health path). The chart sets them only when the matching value is given. Remove a
# name here once portal_boot/settings.py has it.
UPCOMING_VARIABLES: set[str] = set()
# Options (each taking one value) the deployment guide may use before the CLI has them:
# `portal-boot migrate --remove PLUGIN` (issue 11, the safe removal of one plugin's
# revisions). The drift check leaves them out while the command lacks them, and checks them
# with the real parser once it has them. Remove an entry once portal_boot/cli.py has it.
UPCOMING_OPTIONS: set[tuple[str, str]] = set()
# Read by the image itself, not by portal-boot: the HEALTHCHECK's path (Dockerfile.base).
IMAGE_VARIABLES = {"PORTAL_BOOT_HEALTH_PATH"}
INIT_PROCESSES = {"tini", "dumb-init", "/usr/bin/tini", "/usr/bin/dumb-init"}
STATE_DIR = "/var/lib/portal-boot"


def chart_files() -> list[Path]:
    """The Helm chart's text files: its values, templates and notes."""
    return sorted(p for p in CHART_DIR.rglob("*") if p.is_file() and p.name != ".helmignore")


def deployment_files() -> list[Path]:
    """Every file the drift check reads: Dockerfiles, compose, Kubernetes, the chart, the docs."""
    files = [
        *DOCKERFILES,
        *sorted(COMPOSE_DIR.glob("*.yaml")),
        *sorted(K8S_DIR.glob("*.yaml")),
        *chart_files(),
    ]
    if DOCS.exists():
        files.append(DOCS)
    return files
