"""Compose files as Compose reads them (YAML anchors and ``<<`` merged, variables
interpolated), the Compose Specification's JSON schema, and the checks the schema cannot
make (health-check forms, references, the install -> migrate -> serve chain)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from deploy import dockerfiles, paths

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<sep>:?[-?])(?P<default>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Compose's variable interpolation, applied to every string of a parsed file:
    ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$VAR``, and ``$$`` for ``$``."""
    environ = environ or {}
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        sep, default = match.group("sep"), match.group("default") or ""
        current = environ.get(name)
        if sep == ":-":
            return current if current else default
        if sep == "-":
            return current if current is not None else default
        if sep in (":?", "?") and not current:
            raise ValueError(f"{name} must be set: {default}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def load_compose(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A compose file as Compose sees it before validation: YAML (anchors and ``<<``
    merged), then interpolated with ``environ`` (the defaults when empty)."""
    (doc,) = load_yaml_documents(path)
    return interpolate(doc, environ)


def compose_schema_errors(doc: Mapping[str, Any]) -> list[str]:
    import jsonschema

    schema = json.loads(paths.COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    # The file says "$schema": "http://json-schema.org/draft/2019-09/schema#"; jsonschema
    # knows that draft under its https name only, so the draft is named here.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def is_portal_service(service: Mapping[str, Any]) -> bool:
    image = str(service.get("image", ""))
    build = service.get("build")
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return PurePosixPath(image.split(":")[0]).name == "portal-boot" or dockerfile.startswith(
        "Dockerfile"
    )


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def service_command(service: Mapping[str, Any], image: dockerfiles.ImageConfig) -> list[str]:
    command = service.get("command")
    if command is None:
        return list(image.cmd)
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def startup_order(doc: Mapping[str, Any]) -> list[str]:
    """The services in an order Compose could start them (dependencies first)."""
    services = doc["services"]
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"depends_on cycle through {name}")
        visiting.add(name)
        for dep in sorted(depends_on(services[name])):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


def _mounts(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-form volume entries (short ``src:dst[:ro]`` strings converted)."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
            kind = "bind" if source and source.startswith((".", "/", "~", "$")) else "volume"
            out.append(
                {"type": kind, "source": source, "target": target, "read_only": parts[2:] == ["ro"]}
            )
        else:
            out.append(dict(entry))
    return out


def compose_problems(doc: Mapping[str, Any], path: Path) -> list[str]:
    """What the schema cannot see: references, health checks, portal-boot's needs."""
    problems: list[str] = []
    services = doc.get("services") or {}
    image = dockerfiles.read_dockerfile(paths.DOCKERFILES[0])
    target_parent = str(PurePosixPath(image.env["PORTAL_BOOT_TARGET"]).parent)
    try:
        startup_order(doc)
    except (ValueError, KeyError) as exc:
        problems.append(f"depends_on: {exc}")
    for name, service in services.items():
        where = f"{path.name}: service {name}"
        for dep, condition in depends_on(service).items():
            if dep not in services:
                problems.append(f"{where}: depends_on unknown service {dep!r}")
            elif condition == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{where}: waits for {dep} to be healthy, which has no healthcheck")
        health = service.get("healthcheck")
        if health is not None:
            test = health.get("test")
            first = test[0] if isinstance(test, list) and test else None
            if isinstance(test, list) and first not in ("CMD", "CMD-SHELL", "NONE"):
                problems.append(
                    f"{where}: healthcheck test must start with CMD, CMD-SHELL or NONE, not {first!r}"
                )
        for secret in service.get("secrets") or []:
            secret_name = secret if isinstance(secret, str) else secret.get("source")
            if secret_name not in (doc.get("secrets") or {}):
                problems.append(f"{where}: secret {secret_name!r} is not declared at the top level")
        for mount in _mounts(service):
            if (
                mount.get("type") == "volume"
                and mount.get("source")
                and mount["source"] not in (doc.get("volumes") or {})
            ):
                problems.append(
                    f"{where}: volume {mount['source']!r} is not declared at the top level"
                )
        if str(service.get("image", "")).startswith("postgres"):
            if not str(service["image"]).startswith("postgres:16"):
                problems.append(f"{where}: PostgreSQL 16 expected, not {service['image']}")
            test = (service.get("healthcheck") or {}).get("test") or []
            if not (test[:1] == ["CMD-SHELL"] and "pg_isready" in " ".join(test)):
                problems.append(f"{where}: PostgreSQL needs a pg_isready health check (CMD-SHELL)")
        if not is_portal_service(service):
            continue
        if "entrypoint" in service:
            problems.append(f"{where}: overrides the image's entrypoint (tini, portal-boot)")
        command = service_command(service, image)
        env = service_environment(service)
        mounts = {m["target"]: m for m in _mounts(service)}
        step = command[0] if command else "run"
        if step in ("run", "install", "migrate", "serve"):
            state = mounts.get(target_parent)
            if state is None:
                problems.append(
                    f"{where}: `{step}` needs a volume on {target_parent}, the parent of the plugin target"
                )
            elif step in ("run", "install") and state.get("read_only"):
                problems.append(
                    f"{where}: `{step}` writes to {target_parent}: it cannot be read-only"
                )
            if image.env["PORTAL_BOOT_TARGET"] in mounts:
                problems.append(f"{where}: mount the parent {target_parent}, not the target itself")
        for var, value in env.items():
            if var.endswith("_FILE") and value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                names = [
                    s if isinstance(s, str) else s.get("target") or s.get("source")
                    for s in service.get("secrets") or []
                ]
                if secret not in names:
                    problems.append(
                        f"{where}: {var}={value} but the service has no secret {secret!r}"
                    )
        wheel_dir = env.get("PORTAL_BOOT_WHEEL_DIR")
        if wheel_dir and wheel_dir in mounts and not mounts[wheel_dir].get("read_only"):
            problems.append(f"{where}: the wheel folder {wheel_dir} should be mounted read-only")
        if step == "serve":
            # serve never migrates: another service must, with the same plugins.
            migrators = [
                n
                for n, s in services.items()
                if is_portal_service(s) and service_command(s, image)[:1] in (["migrate"], ["run"])
            ]
            if not migrators:
                problems.append(f"{where}: `serve` but no service migrates")
            for other in migrators:
                mine, theirs = (
                    env.get("ENABLED_PLUGINS"),
                    service_environment(services[other]).get("ENABLED_PLUGINS"),
                )
                if mine != theirs:
                    problems.append(
                        f"{where}: ENABLED_PLUGINS={mine!r} but {other} migrates {theirs!r}"
                    )
    # The split pattern: each portal step waits for the previous one to succeed.
    for name, service in services.items():
        if not is_portal_service(service):
            continue
        step = service_command(service, image)[:1]
        wanted = {"migrate": "install", "serve": "migrate"}.get(step[0] if step else "")
        if wanted is None:
            continue
        before = [
            n
            for n, s in services.items()
            if is_portal_service(s) and service_command(s, image)[:1] == [wanted]
        ]
        for other in before:
            if depends_on(service).get(other) != "service_completed_successfully":
                problems.append(
                    f"{path.name}: service {name} must depend on {other} with condition service_completed_successfully"
                )
    return problems
