"""The Helm chart (charts/portal-boot): linted and rendered by real Helm 3 and Helm 4 over a
matrix of values (both migration patterns x a wheel volume or baked plugins x OpenShift
mode, and every optional value set); every rendered object is checked like k8s/ is (the
Kubernetes schemas, strict; the restricted-pod and portal-boot checks; every command and
variable through the real CLI). No Helm hook anywhere; the migration Job's name follows the
image and the plugin set and nothing else a site changes.

Helm comes from scripts/install-helm.sh (scripts/test.sh runs it).
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from deploy import dockerfiles, drift, manifests, paths
from deploy import helm as chart
from deploy.helm import HELM_VERSIONS, Case, HelmError

CASES = chart.matrix()
K8S_VERSIONS = manifests.schema_versions()


def _case_ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


@functools.cache
def _rendered_text(case_id: str, version: str) -> str:
    case = next(c for c in CASES if c.id == case_id)
    return chart.template_text(case.values, version=version)


def _docs(case: Case, version: str = HELM_VERSIONS[-1]) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(_rendered_text(case.id, version)) if d]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def _pods(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: spec for d in docs for spec in manifests.pod_specs(d)}


def _serve_container(docs: list[dict]) -> dict:
    return _pods(docs)["Deployment"]["containers"][0]


def _environment(container: dict, docs: list[dict]) -> dict[str, str]:
    return manifests.container_environment(container, manifests.k8s_objects(docs))


def _job_name(values: dict, **kwargs: Any) -> str:
    return _one(chart.render(values, **kwargs), "Job")["metadata"]["name"]


# --- Helm itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", HELM_VERSIONS)
def test_helm_is_the_pinned_version(version: str) -> None:
    proc = chart.run_helm(version, "version", "--short")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"v{version}+"), proc.stdout


@pytest.mark.parametrize("version", HELM_VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_helm_lint_finds_nothing(case: Case, version: str) -> None:
    proc = chart.lint(case.values, version=version)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_helm_3_and_helm_4_render_the_same_objects(case: Case) -> None:
    assert _docs(case, HELM_VERSIONS[0]) == _docs(case, HELM_VERSIONS[-1])


# --- every rendered object -------------------------------------------------------------------


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_rendered_objects_match_the_kubernetes_schemas(case: Case, k8s_version: str) -> None:
    docs = _docs(case)
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Service", "Deployment"}
    assert [e for doc in docs for e in manifests.k8s_schema_errors(doc, k8s_version)] == []


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_rendered_objects_are_consistent_and_restricted(case: Case) -> None:
    docs = _docs(case)
    problems = manifests.k8s_problems(
        docs, Path(f"chart {case.id}"), chart.external_objects(case.values)
    )
    assert problems == []
    for kind, pod in _pods(docs).items():
        containers = [*pod.get("initContainers", []), *pod["containers"]]
        # Every container is one the portal-boot checks recognise (none is skipped).
        assert all(manifests.is_portal_container(c) for c in containers), kind
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
        fixed = {k: context.get(k) for k in ("runAsUser", "runAsGroup", "fsGroup")}
        if case.openshift:  # the SCC assigns them from the namespace's range
            assert fixed == {"runAsUser": None, "runAsGroup": None, "fsGroup": None}
        else:
            assert fixed == {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_rendered_commands_and_variables_pass_the_drift_checks(case: Case) -> None:
    docs = _docs(case)
    found = drift.manifest_invocations(f"chart {case.id}", docs, dockerfiles.base_image())
    assert len(found) == sum(
        len([*p.get("initContainers", []), *p["containers"]]) for p in _pods(docs).values()
    )
    assert [p for inv in found for p in drift.invocation_problems(inv)] == []
    text = _rendered_text(case.id, HELM_VERSIONS[-1])
    assert drift.mention_problems(Path(f"{case.id}.yaml"), text) == []


def test_no_helm_hook_anywhere() -> None:
    """A hook Job never runs under Argo CD, and a post-install hook deadlocks
    `helm install --wait`: the chart has none, in its sources or in any rendering."""
    for path in paths.chart_files():
        assert "helm.sh/hook" not in path.read_text(encoding="utf-8"), path
    for case in CASES:
        for version in HELM_VERSIONS:
            assert "helm.sh/hook" not in _rendered_text(case.id, version), case.id


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_helm_itself_finds_no_hook_and_notes_that_pass_the_drift_checks(case: Case) -> None:
    """Helm's own view of the release: its HOOKS section is empty (Helm would run
    anything listed there outside the release's resources), and the NOTES it prints after
    an install name the Job and give commands the CLI accepts."""
    out = chart.dry_run_install(case.values)
    hooks = out[out.index("\nHOOKS:\n") + len("\nHOOKS:\n") : out.index("\nMANIFEST:\n")]
    assert hooks.strip() == "", hooks
    notes = out[out.index("\nNOTES:\n") :]
    assert drift.mention_problems(Path("NOTES.txt"), notes) == []
    commands = [argv for line in notes.splitlines() for _, argv in drift._shell_portal_boot(line)]
    assert [["status"]] == commands, notes
    if case.migrations == "job":
        job = _one(_docs(case), "Job")["metadata"]["name"]
        assert f"job/{job}" in notes


# --- the two patterns --------------------------------------------------------------------------


def _steps(pod: dict) -> tuple[list[list[str]], list[list[str]]]:
    """Each container's portal-boot command, without what it passes on to uvicorn."""
    image = dockerfiles.base_image()

    def own(container: dict) -> list[str]:
        args = manifests.container_args(container, image)
        return args[: args.index("--")] if "--" in args else args

    return (
        [own(c) for c in pod.get("initContainers", [])],
        [own(c) for c in pod["containers"]],
    )


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_the_pattern_is_the_one_asked_for(case: Case) -> None:
    docs = _docs(case)
    pods = _pods(docs)
    install = [["install"]] if case.wheels == "pvc" else []
    if case.migrations == "initContainer":
        assert "Job" not in pods
        assert _steps(pods["Deployment"]) == ([*install, ["migrate"]], [["serve"]])
    else:
        # One Job migrates; the replicas install (each into its own emptyDir) and wait.
        assert _steps(pods["Job"]) == (install, [["migrate"]])
        assert _steps(pods["Deployment"]) == (install, [["serve", "--wait-for-migrations"]])
        assert pods["Job"]["restartPolicy"] == "Never"
    values = chart.merged_values(case.values)
    serve_args = _serve_container(docs)["args"]
    if values["uvicornArgs"]:
        assert serve_args[serve_args.index("--") + 1 :] == values["uvicornArgs"]
    else:
        assert "--" not in serve_args
    # install, migrate and serve read one ENABLED_PLUGINS.
    for pod in pods.values():
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            env = _environment(container, docs)
            assert env["ENABLED_PLUGINS"] == ",".join(values["plugins"]["enabled"])
            assert (env.get("PORTAL_BOOT_WHEEL_DIR") is not None) == (case.wheels == "pvc")
    if case.wheels == "none":
        assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
        for pod in pods.values():
            assert {v["name"] for v in pod["volumes"]} == {"database", "tmp"}


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_the_variables_being_added_to_the_cli_are_set_only_when_asked_for(case: Case) -> None:
    """PORTAL_BOOT_MIGRATION_DATABASE_URL and PORTAL_BOOT_HEALTH_PATH (see
    paths.UPCOMING_VARIABLES): a release that sets neither value runs with today's CLI."""
    docs = _docs(case)
    values = chart.merged_values(case.values)
    direct = bool(values["database"]["migrationUrlKey"] or values["database"]["migrationUrl"])
    image = dockerfiles.base_image()
    for pod in _pods(docs).values():
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            env = _environment(container, docs)
            step = manifests.container_args(container, image)[0]
            assert ("PORTAL_BOOT_MIGRATION_DATABASE_URL_FILE" in env) == (
                direct and step == "migrate"
            ), container["name"]
            assert ("PORTAL_BOOT_HEALTH_PATH" in env) == (
                bool(values["healthPath"]) and step == "serve"
            ), container["name"]
            assert not {"PORTAL_BOOT_MIGRATION_DATABASE_URL", "DATABASE_URL"} & set(env), (
                "a URL in the environment instead of a file"
            )


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_the_startup_probe_allows_for_the_migration_wait(case: Case) -> None:
    """Not a guess: the probe outlasts everything `serve` waits for before uvicorn
    answers, so a slow migration ends in portal-boot's own message, not in a kill."""
    docs = _docs(case)
    values = chart.merged_values(case.values)
    serve = _serve_container(docs)
    probe = serve["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    wait = float(_environment(serve, docs)["PORTAL_BOOT_DB_TIMEOUT"])
    if case.migrations == "job":
        job = _one(docs, "Job")
        # The replicas wait for as long as the Job may run, and the probe for that wait
        # (wait-db, then the wait for the heads, each up to PORTAL_BOOT_DB_TIMEOUT).
        assert wait >= job["spec"]["activeDeadlineSeconds"]
        assert budget >= 2 * wait + values["appStartSeconds"]
    else:
        # The init containers wait for the database and the lock; the probe starts after.
        assert budget >= values["appStartSeconds"]
        wait = 0
    deadline = _one(docs, "Deployment")["spec"]["progressDeadlineSeconds"]
    assert deadline >= budget


# --- the migration Job's name ------------------------------------------------------------------

JOB = {"migrations": "job", "image": chart.IMAGE, "plugins": {"enabled": ["a", "b"]}}


def _with(**changes: Any) -> dict:
    values = copy.deepcopy(JOB)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    return values


@pytest.mark.parametrize(
    "changed",
    [
        _with(image__tag="1.2.4"),
        _with(image__digest="sha256:" + "cd" * 32),
        _with(image__repository="registry.example.com/other/portal-boot"),
        _with(plugins__enabled=["a", "b", "c"]),
        _with(plugins__enabled=["a"]),
        _with(plugins__enabled=[]),
        _with(plugins__revision="2026-12-02"),
        _with(wheels__source="none"),
    ],
    ids=[
        "tag",
        "digest",
        "repository",
        "plugin-added",
        "plugin-disabled",
        "all-plugins",
        "new-wheels",
        "baked",
    ],
)
def test_the_job_name_changes_with_the_image_and_the_plugin_set(changed: dict) -> None:
    assert _job_name(changed) != _job_name(JOB)


@pytest.mark.parametrize(
    "unchanged",
    [
        JOB,
        _with(plugins__enabled=["b", "a"]),  # the same set
        _with(replicaCount=5),
        _with(resources={"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}),
        _with(probes__readiness__periodSeconds=5),
        _with(appStartSeconds=300),
        _with(healthPath="/api/v2/version"),
        _with(uvicornArgs=["--proxy-headers"]),
        _with(logFormat="text"),
        _with(database__timeout=30, database__lockTimeout=900),
        _with(service__port=8080),
        _with(podAnnotations={"example.com/team": "data"}),
    ],
    ids=[
        "same-values",
        "plugin-order",
        "replicas",
        "backend-resources",
        "probes",
        "app-start",
        "health-path",
        "uvicorn-args",
        "log-format",
        "timeouts",
        "service",
        "pod-annotations",
    ],
)
def test_the_job_name_stays_when_nothing_it_runs_changes(unchanged: dict) -> None:
    """A Flux reconcile or an Argo CD sync of the same release, or a change to the
    serving pods only, leaves the finished Job alone: nothing re-runs."""
    assert _job_name(unchanged) == _job_name(JOB)


def test_the_job_name_is_a_valid_name_for_the_longest_release_name() -> None:
    release = "a" * 53  # Helm's limit
    name = _job_name(JOB, release=release)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert name != _job_name(_with(image__tag="1.2.4"), release=release)


def test_the_serving_pods_roll_when_the_plugin_set_changes() -> None:
    def annotations(values: dict) -> dict:
        return _one(chart.render(values), "Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]

    base = annotations(JOB)
    assert annotations(_with(plugins__revision="2026-12-02")) != base
    assert annotations(_with(plugins__enabled=["a"])) != base
    assert annotations(_with(replicaCount=5)) == base


# --- values a site gets wrong --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "release", "expected"),
    [
        ({}, "portal-boot", "choose another release name or set fullnameOverride"),
        ({"database": {"existingSecret": ""}}, "portal", "database.existingSecret"),
        (
            {"trustedKeys": {"existingConfigMap": ""}},
            "portal",
            "trustedKeys: existingConfigMap, existingSecret or keys is required",
        ),
        ({"migrations": "jobs"}, "portal", "initContainer"),
        ({"wheels": {"source": "image"}}, "portal", "pvc"),
        ({"plugins": {"enabled": "a,b"}}, "portal", "enabled"),
        ({"probes": {"readiness": {"httpGet": {"path": "/"}}}}, "portal", "httpGet"),
    ],
    ids=[
        "release-name",
        "no-database",
        "no-keys",
        "pattern",
        "wheel-source",
        "plugin-list",
        "probe-path-elsewhere",
    ],
)
@pytest.mark.parametrize("version", HELM_VERSIONS)
def test_wrong_values_are_refused_with_a_clear_message(
    values: dict, release: str, expected: str, version: str
) -> None:
    with pytest.raises(HelmError) as failure:
        chart.template_text(values, version=version, release=release)
    assert expected in str(failure.value)
    assert "Use --debug" in str(failure.value) or len(str(failure.value).splitlines()) <= 6


def test_a_parent_chart_may_pass_global_values() -> None:
    assert chart.render({"global": {"imageRegistry": "registry.example.com"}})


@pytest.mark.parametrize("version", HELM_VERSIONS)
def test_kubernetes_older_than_the_checked_schemas_is_refused(version: str) -> None:
    oldest = ".".join(map(str, manifests.OLDEST_CHECKED))
    chart.template_text({}, version=version, kube_version=f"{oldest}.0")
    with pytest.raises(HelmError, match="kubeVersion"):
        chart.template_text(
            {}, version=version, kube_version=f"1.{manifests.OLDEST_CHECKED[1] - 1}.0"
        )


def test_the_baked_target_is_where_dockerfile_with_plugins_installs() -> None:
    image = dockerfiles.read_dockerfile(paths.DOCKERFILES[1], parent=dockerfiles.base_image())
    assert chart.default_values()["wheels"]["bakedTarget"] == image.env["PORTAL_BOOT_TARGET"]


def test_the_defaults_name_the_objects_k8s_uses() -> None:
    """The chart's defaults take the Secret and the keys' ConfigMap that docs/deployment.md
    has the operator create for k8s/, so one set of instructions serves both."""
    from deploy import compose

    values = chart.default_values()
    objects = manifests.k8s_objects(compose.load_yaml_documents(paths.K8S_DIR / "deployment.yaml"))
    secret = objects[("Secret", values["database"]["existingSecret"])]
    assert values["database"]["urlKey"] in secret["stringData"]
    assert ("ConfigMap", values["trustedKeys"]["existingConfigMap"]) in paths.K8S_EXTERNAL_OBJECTS


# --- the checks catch a broken rendering ---------------------------------------------------------


def _baked_job_case() -> Case:
    return next(c for c in CASES if c.id == "job-none")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda docs: _pods(docs)["Deployment"]["containers"][0]["volumeMounts"].append(
                {"name": "tmp", "mountPath": "/opt/portal-boot"}
            ),
            "hides the plugins baked",
        ),
        (
            lambda docs: _pods(docs)["Deployment"]["containers"][0]["startupProbe"][
                "httpGet"
            ].update(path="/healthz"),
            "must GET /health",
        ),
        (
            lambda docs: _pods(docs)["Job"]["containers"][0]["env"].append(
                {"name": "PORTAL_BOOT_MIGRATION_DATABASE_URL_FILES", "value": "/x"}
            ),
            "unknown variable PORTAL_BOOT_MIGRATION_DATABASE_URL_FILES",
        ),
        (
            lambda docs: _pods(docs)["Deployment"]["containers"][0].update(
                args=["serve", "--wait-for-migration"]
            ),
            "No such option",
        ),
    ],
    ids=["volume-over-baked-plugins", "probe-path", "misspelt-variable", "misspelt-flag"],
)
def test_the_checks_catch_a_broken_rendering(mutate, expected: str) -> None:
    docs = copy.deepcopy(_docs(_baked_job_case()))
    mutate(docs)
    problems = manifests.k8s_problems(docs, Path("broken"), chart.external_objects({}))
    problems += [
        p
        for inv in drift.manifest_invocations("broken", docs, dockerfiles.base_image())
        for p in drift.invocation_problems(inv)
    ]
    assert any(expected in p for p in problems), problems


# --- the deployment guide's Helm section, as a user pastes it -----------------------------------


def _checked(docs: list[dict], where: str, external: set[tuple[str, str]]) -> None:
    assert [e for doc in docs for e in manifests.k8s_schema_errors(doc, K8S_VERSIONS[-1])] == []
    assert manifests.k8s_problems(docs, Path(where), external) == []
    found = drift.manifest_invocations(where, docs, dockerfiles.base_image())
    assert found and [p for inv in found for p in drift.invocation_problems(inv)] == []


@pytest.mark.parametrize("version", HELM_VERSIONS)
def test_the_guide_commands_render_a_release_that_passes_the_checks(
    version: str, tmp_path: Path
) -> None:
    """The guide's install and upgrade blocks, run as written with `helm template` for
    `helm upgrade [--install]` (no cluster here): the objects its kubectl commands create
    are all the release needs, and the upgrade for a new wheel makes a new Job."""
    import yaml

    (tmp_path / "charts").symlink_to(paths.REPO / "charts")
    created: set[tuple[str, str]] = set()
    jobs = []
    for block in chart.guide_blocks(chart.guide_section(), "sh"):
        files, commands = chart.guide_shell(block)
        for name, text in files.items():
            (tmp_path / name).write_text(text, encoding="utf-8")
        for argv in commands:
            if argv[0] == "kubectl" and "create" in argv:
                what = argv[argv.index("create") + 1 :]
                if what[0] == "secret":  # secret generic NAME
                    created.add(("Secret", what[2]))
                elif what[0] == "configmap":
                    created.add(("ConfigMap", what[1]))
            if argv[0] != "helm":
                continue
            assert argv[1] == "upgrade", argv
            args = [a for a in argv[2:] if a != "--install"]
            proc = chart.run_helm(version, "template", *args, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            _checked(docs, f"guide {' '.join(argv[:3])}", created)
            jobs.append(_one(docs, "Job")["metadata"]["name"])
            # --wait gives up no earlier than the rollout may legitimately take.
            timeout = _seconds(argv[argv.index("--timeout") + 1])
            assert timeout >= _one(docs, "Deployment")["spec"]["progressDeadlineSeconds"]
    assert ("Secret", "portal-database") in created
    assert len(jobs) == 2 and jobs[0] != jobs[1], jobs


def _seconds(duration: str) -> int:
    """A Go duration as Helm and Flux take it: 35m, 1h30m, 90s."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_the_guide_argo_cd_and_flux_manifests_render_a_release_that_passes_the_checks() -> None:
    import yaml

    manifests_ = [yaml.safe_load(b) for b in chart.guide_blocks(chart.guide_section(), "yaml")]
    application = next(m for m in manifests_ if m["kind"] == "Application")
    release = next(m for m in manifests_ if m["kind"] == "HelmRelease")
    assert application["spec"]["source"]["path"] == str(paths.CHART_DIR.relative_to(paths.REPO))
    assert release["spec"]["chart"]["spec"]["chart"] == str(paths.CHART_DIR.relative_to(paths.REPO))
    for values in (
        application["spec"]["source"]["helm"]["valuesObject"],
        release["spec"]["values"],
    ):
        docs = chart.render(values)
        _checked(docs, "guide", chart.external_objects(values))
    flux_docs = chart.render(release["spec"]["values"])
    deadline = _one(flux_docs, "Deployment")["spec"]["progressDeadlineSeconds"]
    assert _seconds(release["spec"]["timeout"]) >= deadline
    # Argo CD: no TTL, so a finished Job does not go missing and come back.
    argo_job = _one(chart.render(application["spec"]["source"]["helm"]["valuesObject"]), "Job")
    assert "ttlSecondsAfterFinished" not in argo_job["spec"]
