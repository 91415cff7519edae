"""The deployment files are checked by the tools their platforms use, and cannot drift
from the CLI: hadolint on the Dockerfiles, the Compose Specification's JSON schema on
the compose files, the Kubernetes schemas (kubernetes-validate, strict) on the manifests,
and checks of our own for what no schema knows (see tests/deploy/).

Each check is also run on a deliberately broken copy, to show it can fail.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from deploy import compose, dockerfiles, drift, manifests, paths

COMPOSE_FILES = sorted(paths.COMPOSE_DIR.glob("*.yaml"))
K8S_FILES = sorted(paths.K8S_DIR.glob("*.yaml"))
# The oldest supported and the newest Kubernetes versions the manifests are checked against.
try:
    K8S_VERSIONS = manifests.schema_versions()
except ImportError as exc:  # fail the schema tests, not the whole module's collection
    K8S_VERSIONS = (f"unavailable ({exc}): pip install kubernetes-validate",)


def _ids(files: list[Path]) -> list[str]:
    return [p.name for p in files]


def test_the_files_exist() -> None:
    assert all(p.exists() for p in paths.DOCKERFILES)
    assert {p.name for p in COMPOSE_FILES} >= {"all-in-one.yaml", "split.yaml"}
    assert {p.name for p in K8S_FILES} >= {"deployment.yaml", "job-migrate.yaml"}


# --- Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("path", paths.DOCKERFILES, ids=_ids(list(paths.DOCKERFILES)))
def test_hadolint_has_nothing_to_say(path: Path) -> None:
    assert dockerfiles.hadolint_problems(path, dockerfiles.REQUIRED_LABELS[path.name]) == []


def test_hadolint_catches_a_broken_copy(tmp_path: Path) -> None:
    text = paths.DOCKERFILES[0].read_text(encoding="utf-8")
    broken = tmp_path / "Dockerfile.base"
    broken.write_text(
        text.replace('"gnupg=2.4.7-21*"', "gnupg").replace(  # unpinned: DL3008
            'org.opencontainers.image.licenses="Apache-2.0"',
            'org.opencontainers.image.licenses="Apache 2"',
        ),
        encoding="utf-8",
    )
    problems = "\n".join(
        dockerfiles.hadolint_problems(broken, dockerfiles.REQUIRED_LABELS["Dockerfile.base"])
    )
    assert "DL3008" in problems
    assert "DL3054" in problems  # not an SPDX identifier


@pytest.mark.parametrize("path", paths.DOCKERFILES, ids=_ids(list(paths.DOCKERFILES)))
def test_dockerfile_meets_the_contract(path: Path) -> None:
    base = dockerfiles.base_image()
    image = base if path == paths.DOCKERFILES[0] else dockerfiles.read_dockerfile(path, parent=base)
    assert dockerfiles.dockerfile_problems(path, image) == []


@pytest.mark.parametrize("path", paths.DOCKERFILES, ids=_ids(list(paths.DOCKERFILES)))
def test_build_context_holds_every_copied_file(path: Path) -> None:
    assert dockerfiles.build_context_problems(path) == []


def test_build_context_check_catches_a_broken_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = paths.DOCKERFILES[0]
    (tmp_path / path.name).write_text(
        path.read_text(encoding="utf-8").replace(
            "COPY portal_boot/ portal_boot/", "COPY portal-boot/ portal_boot/"
        ),
        encoding="utf-8",
    )
    (tmp_path / (path.name + ".dockerignore")).write_text(
        "*\n!pyproject.toml\n!README.md\n!portal-boot/\n", encoding="utf-8"
    )
    problems = "\n".join(dockerfiles.build_context_problems(tmp_path / path.name))
    assert "COPY portal-boot: not in the repository" in problems
    assert "COPY examples/portal: excluded" in problems


def test_base_image_config() -> None:
    image = dockerfiles.base_image()
    assert image.entrypoint == ["tini", "--", "portal-boot"]
    assert image.cmd == ["run"]
    assert image.workdir == "/app"
    assert image.env["PORTAL_BOOT_TARGET"] == "/var/lib/portal-boot/plugins"
    assert image.env["PORTAL_BOOT_ALEMBIC_CONFIG"] == "/app/alembic.ini"
    assert image.env["PATH"].startswith("/opt/venv/bin:")
    # The application folder the image runs is the example portal.
    assert (["examples/portal/"], "/app/") in dockerfiles.read_dockerfile(
        paths.DOCKERFILES[0]
    ).copies or any(dst == "/app" for _, dst in image.copies)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('ENTRYPOINT ["tini", "--", "portal-boot"]', 'ENTRYPOINT ["portal-boot"]', "init process"),
        ('CMD ["run"]', 'CMD ["serve"]', "CMD must be"),
        ("USER 10001:10001", "USER portal", "numeric, non-root"),
        (
            'CMD ["python", "-c",',
            'CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"] \\\n    # ',
            "curl",
        ),
        ("compileall", "compile_all", "bytecode"),
        (
            "PORTAL_BOOT_TARGET=/var/lib/portal-boot/plugins",
            "PORTAL_BOOT_TARGET=/plugins",
            "PORTAL_BOOT_TARGET",
        ),
    ],
)
def test_dockerfile_check_catches_a_broken_copy(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = paths.DOCKERFILES[0].read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "Dockerfile.base"
    broken.write_text(text.replace(old, new), encoding="utf-8")
    problems = dockerfiles.dockerfile_problems(broken, dockerfiles.read_dockerfile(broken))
    assert any(expected in p for p in problems), problems


def test_plugin_image_check_catches_a_broken_copy(tmp_path: Path) -> None:
    path = paths.DOCKERFILES[1]
    broken = tmp_path / path.name
    broken.write_text(
        path.read_text(encoding="utf-8").replace("portal-boot install", "pip install"),
        encoding="utf-8",
    )
    problems = dockerfiles.dockerfile_problems(
        broken, dockerfiles.read_dockerfile(broken, parent=dockerfiles.base_image())
    )
    assert any("portal-boot install" in p for p in problems), problems


# --- Compose ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=_ids(COMPOSE_FILES))
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    assert compose.compose_schema_errors(compose.load_compose(path)) == []


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=_ids(COMPOSE_FILES))
def test_compose_file_is_consistent(path: Path) -> None:
    assert compose.compose_problems(compose.load_compose(path), path) == []


def test_compose_schema_catches_a_broken_copy() -> None:
    doc = compose.load_compose(paths.COMPOSE_DIR / "split.yaml")
    doc["services"]["migrate"]["depends_on"]["install"]["condition"] = "service_completed"
    doc["services"]["backend"]["helthcheck"] = {"test": ["CMD", "true"]}
    errors = "\n".join(compose.compose_schema_errors(doc))
    assert "service_completed" in errors
    assert "helthcheck" in errors


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # The deployment guide's invalid form: the schema accepts any string here.
        (
            lambda d: d["services"]["db"]["healthcheck"].update(
                test=["CMD-EXEC", "pg_isready -U postgres"]
            ),
            "CMD-EXEC",
        ),
        (
            lambda d: d["services"]["backend"]["depends_on"].update(
                migrate={"condition": "service_started"}
            ),
            "service_completed_successfully",
        ),
        (lambda d: d["services"]["migrate"]["depends_on"].pop("install"), "must depend on install"),
        (
            lambda d: d["services"]["backend"]["environment"].update(ENABLED_PLUGINS="demo_a"),
            "ENABLED_PLUGINS",
        ),
        (lambda d: d["services"]["install"]["volumes"][0].update(read_only=False), "read-only"),
        (
            lambda d: d["services"]["install"]["volumes"][2].update(
                target="/var/lib/portal-boot/plugins"
            ),
            "parent",
        ),
        (
            lambda d: d["services"]["install"]["volumes"][2].update(read_only=True),
            "cannot be read-only",
        ),
        (
            lambda d: d["services"]["migrate"]["environment"].update(
                DATABASE_URL_FILE="/run/secrets/db-url"
            ),
            "no secret",
        ),
        (lambda d: d["services"]["db"].update(image="postgres:13"), "PostgreSQL 16"),
        (
            lambda d: d["services"]["backend"]["depends_on"].update(
                cache={"condition": "service_started"}
            ),
            "unknown service",
        ),
    ],
)
def test_compose_check_catches_a_broken_copy(mutate, expected: str) -> None:
    path = paths.COMPOSE_DIR / "split.yaml"
    doc = copy.deepcopy(compose.load_compose(path))
    mutate(doc)
    problems = compose.compose_problems(doc, path)
    assert any(expected in p for p in problems), problems


def test_split_compose_is_the_install_migrate_serve_chain() -> None:
    doc = compose.load_compose(paths.COMPOSE_DIR / "split.yaml")
    image = dockerfiles.base_image()
    steps = [
        compose.service_command(doc["services"][name], image)
        for name in compose.startup_order(doc)
        if compose.is_portal_service(doc["services"][name])
    ]
    assert [s[0] for s in steps] == ["install", "migrate", "serve"]
    install = doc["services"]["install"]
    assert install.get("network_mode") == "none"  # air-gapped: nothing to fetch
    for name in ("migrate", "backend"):
        env = doc["services"][name]["environment"]
        assert env["DATABASE_URL_FILE"].startswith("/run/secrets/")
        assert "DATABASE_URL" not in env and "AUTO_RUN_PLUGIN_MIGRATIONS" not in env


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=_ids(K8S_FILES))
def test_manifest_matches_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = compose.load_yaml_documents(path)
    assert docs
    assert [e for doc in docs for e in manifests.k8s_schema_errors(doc, version)] == []


@pytest.mark.parametrize("path", K8S_FILES, ids=_ids(K8S_FILES))
def test_manifest_is_consistent_and_restricted(path: Path) -> None:
    assert manifests.k8s_problems(compose.load_yaml_documents(path), path) == []


def _deployment(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")


def test_kubernetes_schema_catches_a_broken_copy() -> None:
    docs = compose.load_yaml_documents(paths.K8S_DIR / "deployment.yaml")
    deployment = copy.deepcopy(_deployment(docs))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    assert any(
        "readinessProbes" in e for e in manifests.k8s_schema_errors(deployment, K8S_VERSIONS[-1])
    )
    deployment = copy.deepcopy(_deployment(docs))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert manifests.k8s_schema_errors(deployment, K8S_VERSIONS[-1])


def _pod(docs: list[dict], kind: str = "Deployment") -> dict:
    return next(d for d in docs if d["kind"] == kind)["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda docs: _pod(docs)["containers"][0]["securityContext"].update(
                readOnlyRootFilesystem=False
            ),
            "readOnlyRootFilesystem",
        ),
        (
            lambda docs: _pod(docs)["containers"][0]["securityContext"]["capabilities"].update(
                drop=["NET_RAW"]
            ),
            "drop ALL",
        ),
        (lambda docs: _pod(docs)["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda docs: _pod(docs)["securityContext"].pop("seccompProfile"), "seccomp"),
        (
            lambda docs: _pod(docs)["containers"][0]["livenessProbe"]["httpGet"].update(
                path="/healthz"
            ),
            "livenessProbe",
        ),
        (
            lambda docs: _pod(docs)["containers"][0]["readinessProbe"]["httpGet"].update(port=8080),
            "another port",
        ),
        (lambda docs: _pod(docs)["initContainers"].pop(0), "before any install"),
        (
            lambda docs: _pod(docs)["initContainers"][0]["volumeMounts"][2].update(
                mountPath="/var/lib/portal-boot/plugins"
            ),
            "parent",
        ),
        (
            lambda docs: _pod(docs)["initContainers"][0]["volumeMounts"][0].pop("readOnly"),
            "read-only mount",
        ),
        (
            lambda docs: _pod(docs)["containers"][0].update(command=["alembic", "upgrade", "head"]),
            "entrypoint",
        ),
        (lambda docs: _pod(docs).update(enableServiceLinks=True), "enableServiceLinks"),
        (
            lambda docs: _pod(docs)["volumes"][0]["persistentVolumeClaim"].update(
                claimName="wheels"
            ),
            "not defined",
        ),
        (
            lambda docs: next(d for d in docs if d["kind"] == "Service")["metadata"].update(
                name="portal-boot"
            ),
            "service-link",
        ),
        (lambda docs: _pod(docs)["containers"][0].pop("resources"), "resources"),
    ],
)
def test_kubernetes_check_catches_a_broken_copy(mutate, expected: str) -> None:
    path = paths.K8S_DIR / "deployment.yaml"
    docs = copy.deepcopy(compose.load_yaml_documents(path))
    mutate(docs)
    problems = manifests.k8s_problems(docs, path)
    assert any(expected in p for p in problems), problems


def test_kubernetes_patterns() -> None:
    image = dockerfiles.base_image()

    def steps(pod: dict) -> tuple[list[list[str]], list[list[str]]]:
        return (
            [manifests.container_args(c, image) for c in pod.get("initContainers", [])],
            [manifests.container_args(c, image) for c in pod["containers"]],
        )

    docs = compose.load_yaml_documents(paths.K8S_DIR / "deployment.yaml")
    assert steps(_pod(docs)) == ([["install"], ["migrate"]], [["serve"]])
    docs = compose.load_yaml_documents(paths.K8S_DIR / "job-migrate.yaml")
    assert steps(_pod(docs, "Job")) == ([["install"]], [["migrate"]])
    # The replicas still install, into their own emptyDir, but never migrate.
    assert steps(_pod(docs)) == ([["install"]], [["serve", "--wait-for-migrations"]])
    for path in K8S_FILES:
        objects = manifests.k8s_objects(compose.load_yaml_documents(path))
        assert "ENABLED_PLUGINS" in objects[("ConfigMap", "portal-boot-config")]["data"]
        assert "database-url" in objects[("Secret", "portal-database")]["stringData"]
        assert objects[("PersistentVolumeClaim", "portal-plugin-wheels")]["spec"][
            "accessModes"
        ] == ["ReadOnlyMany"]


# --- drift: every command, flag and variable the files name exists --------------------


def test_every_invocation_is_found() -> None:
    found = {(inv.where.split(":")[0], inv.args[:1]) for inv in drift.invocations()}
    assert ("Dockerfile.with-plugins", ("install",)) in found
    assert ("split.yaml", ("serve",)) in found
    assert ("job-migrate.yaml", ("serve",)) in found
    assert ("all-in-one.yaml", ("run",)) in found


@pytest.mark.parametrize(
    "invocation", drift.invocations(), ids=lambda inv: f"{inv.where} {' '.join(inv.args)}"
)
def test_invocation_parses_with_the_real_cli(invocation: drift.Invocation) -> None:
    assert drift.invocation_problems(invocation) == []


@pytest.mark.parametrize(
    "path",
    paths.deployment_files(),
    ids=[str(p.relative_to(paths.REPO)) for p in paths.deployment_files()],
)
def test_every_name_mentioned_exists(path: Path) -> None:
    assert drift.mention_problems(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        (
            ("serve", "--wait-for-migratons"),
            {},
            "No such option",
        ),  # a typo: refused by the CLI itself, never passed to uvicorn
        (("migrate", "--too", "s3_plugin@base"), {}, "No such option"),
        (("upgrade",), {}, "no such command"),
        (
            ("install",),
            {"PORTAL_BOOT_WHEELDIR": "/plugins"},
            "unknown variable PORTAL_BOOT_WHEELDIR",
        ),
        (("install",), {"PORTAL_BOOT_SIGNATURES": "maybe"}, "not one of"),
        (("run",), {"AUTO_RUN_PLUGIN_MIGRATIONS": "nope"}, "not a boolean"),
        (("install", "--signatures", "off"), {}, "signatures off"),
        (("run",), {"PORTAL_BOOT_SIGNATURES": "off"}, "signatures off"),
        (
            ("install",),
            {"PORTAL_BOOT_WHEEL_DIR": "/w", "PORTAL_BOOT_REQUIREMENTS": "x==1"},
            "exclusive",
        ),
    ],
)
def test_drift_check_catches_a_broken_invocation(args, environ, expected: str) -> None:
    problems = drift.invocation_problems(drift.Invocation("broken", args, environ))
    assert any(expected in p for p in problems), problems


def test_drift_check_catches_an_unknown_name_in_text(tmp_path: Path) -> None:
    text = "# set PORTAL_BOOT_WHEELS_DIR, then run `portal-boot upgrade`\nDATABASE_URL_FILES: x\n"
    problems = "\n".join(drift.mention_problems(tmp_path / "x.yaml", text))
    assert "PORTAL_BOOT_WHEELS_DIR" in problems
    assert "portal-boot upgrade" in problems
    assert "DATABASE_URL_FILES" in problems


def test_drift_check_reads_a_broken_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through the file reader: a compose file with a misspelt variable and an
    unknown flag is reported."""
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    text = (paths.COMPOSE_DIR / "split.yaml").read_text(encoding="utf-8")
    text = text.replace("PORTAL_BOOT_TRUSTED_KEYS:", "PORTAL_BOOT_TRUSTED_KEY:").replace(
        'command: ["migrate"]', 'command: ["migrate", "--sqll"]'
    )
    (compose_dir / "split.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(paths, "COMPOSE_DIR", compose_dir)
    monkeypatch.setattr(paths, "K8S_DIR", tmp_path / "none")
    monkeypatch.setattr(paths, "DOCS", tmp_path / "none.md")
    problems = "\n".join(p for inv in drift.invocations() for p in drift.invocation_problems(inv))
    assert "PORTAL_BOOT_TRUSTED_KEY" in problems
    assert "--sqll" in problems


def test_vendored_compose_schema_is_the_published_one() -> None:
    """tests/schemas/README.md names the source; the bytes must not have been edited."""
    import hashlib

    digest = hashlib.sha256(paths.COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest == "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
    assert json.loads(paths.COMPOSE_SCHEMA.read_text(encoding="utf-8"))["id"] == "compose_spec.json"


def test_yaml_files_have_no_duplicate_keys() -> None:
    """PyYAML keeps the last of two equal keys silently; Compose and kubectl may not."""

    class Strict(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        keys = [
            k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"
        ]
        dupes = {k for k in keys if keys.count(k) > 1}
        assert not dupes, f"duplicate keys {dupes} at line {node.start_mark.line + 1}"
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    for path in [*COMPOSE_FILES, *K8S_FILES]:
        list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=Strict))
