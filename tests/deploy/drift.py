"""Drift: every portal-boot command, flag and variable the deployment files (and
docs/deployment.md) name must exist in the CLI, and parse with it."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy import compose, dockerfiles, manifests, paths


def cli_commands() -> set[str]:
    from portal_boot.cli import cli

    return set(cli.commands)


def known_variables() -> set[str]:
    """Every variable portal-boot reads: each option's names and their ``_FILE`` forms."""
    from portal_boot.settings import OPTIONS

    names: set[str] = set()
    for option in OPTIONS:
        for var in option.envvars:
            names.update({var, f"{var}_FILE"})
    return names


def is_known_variable(name: str) -> bool:
    upcoming = {v for var in paths.UPCOMING_VARIABLES for v in (var, f"{var}_FILE")}
    return (
        name in known_variables()
        or name.startswith("PIP_")
        or name in paths.GENERIC_VARIABLES
        or name in upcoming
        or name in paths.IMAGE_VARIABLES
    )


def parse_cli(args: Sequence[str]) -> dict[str, Any]:
    """Parse ``portal-boot ARGS`` with the real click command, invoking nothing.

    Raises ``click.ClickException`` (unknown command, unknown flag, missing value) or
    AssertionError when ``run``/``serve`` would silently pass an unknown flag to uvicorn.
    Returns the command name and the parsed parameters.
    """
    import click

    from portal_boot.cli import cli

    args = list(args) or ["run"]  # no command at all is `run`
    name, rest = args[0], args[1:]
    command = cli.commands.get(name)
    if command is None:
        raise click.UsageError(f"no such command {name!r} (known: {sorted(cli.commands)})")
    rest = _without_upcoming_options(command, name, rest)
    parent = click.Context(cli, info_name="portal-boot")
    ctx = command.make_context(name, list(rest), parent=parent)
    params = dict(ctx.params)
    # run and serve accept unknown options for uvicorn (ignore_unknown_options): a typo
    # in a portal-boot flag would go to uvicorn unnoticed. Only what follows "--" may.
    passed = params.get("uvicorn_args") or ()
    if "--" in rest:
        allowed = tuple(rest[rest.index("--") + 1 :])
        assert tuple(passed) == allowed, f"portal-boot {' '.join(args)}: {passed} reach uvicorn"
    else:
        assert not passed, f"portal-boot {' '.join(args)}: {list(passed)} are not portal-boot flags"
    return {"command": name, "params": params}


def _without_upcoming_options(command: Any, name: str, args: list[str]) -> list[str]:
    """``args`` less the options of paths.UPCOMING_OPTIONS that ``command`` does not have
    yet (and their values); the rest is parsed as usual."""
    have = {opt for param in command.params for opt in getattr(param, "opts", ())}
    upcoming = {opt for cmd, opt in paths.UPCOMING_OPTIONS if cmd == name and opt not in have}
    kept: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif "--" in args[:i]:
            kept.append(arg)
        elif arg in upcoming:
            skip = True
        elif arg.split("=", 1)[0] not in upcoming:
            kept.append(arg)
    return kept


def check_settings(params: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """Resolve the settings as portal-boot would, from parsed flags and a container's
    environment, so that values (choices, booleans, numbers) and contradictions are
    checked by the real code. ``*_FILE`` variables and unexpanded ``${...}`` values are
    left out: their content is only known at run time. Returns the Settings; raises
    UsageError."""
    from portal_boot.settings import OPTIONS_BY_NAME, resolve

    flags = {k: v for k, v in params.items() if k in OPTIONS_BY_NAME}
    env = {
        k: v
        for k, v in environ.items()
        if not k.endswith("_FILE")
        and "${" not in v
        and (k.startswith("PORTAL_BOOT_") or k in known_variables())
    }
    return resolve(flags, env)


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One portal-boot command line found in a file, and the environment it runs with."""

    where: str
    args: tuple[str, ...]
    environ: Mapping[str, str]


def invocations() -> list[Invocation]:
    """Every portal-boot command the deployment files run, with its environment."""
    found: list[Invocation] = []
    base = dockerfiles.base_image()
    for path in paths.DOCKERFILES:
        image = dockerfiles.read_dockerfile(
            path, parent=base if path != paths.DOCKERFILES[0] else None
        )
        found.append(Invocation(f"{path.name}: CMD", tuple(image.cmd), dict(image.env)))
        for instruction, args in image.instructions:
            if instruction != "RUN":
                continue
            for inline_env, argv in _shell_portal_boot(args):
                found.append(
                    Invocation(f"{path.name}: RUN", tuple(argv), {**image.env, **inline_env})
                )
    for path in sorted(paths.COMPOSE_DIR.glob("*.yaml")):
        doc = compose.load_compose(path)
        for name, service in doc["services"].items():
            if compose.is_portal_service(service):
                env = {**base.env, **compose.service_environment(service)}
                found.append(
                    Invocation(
                        f"{path.name}: {name}", tuple(compose.service_command(service, base)), env
                    )
                )
    for path in sorted(paths.K8S_DIR.glob("*.yaml")):
        found.extend(manifest_invocations(path.name, compose.load_yaml_documents(path), base))
    if paths.DOCS.exists():
        for lineno, snippet in markdown_code(paths.DOCS.read_text(encoding="utf-8")):
            for inline_env, argv in _shell_portal_boot(snippet):
                found.append(Invocation(f"{paths.DOCS.name}:{lineno}", tuple(argv), inline_env))
    return found


def manifest_invocations(
    label: str, docs: Sequence[Mapping[str, Any]], base: dockerfiles.ImageConfig
) -> list[Invocation]:
    """Every portal-boot container of a set of Kubernetes documents (a manifest file, or a
    rendered Helm chart), with its arguments and its environment."""
    found = []
    objects = manifests.k8s_objects(docs)
    for doc in docs:
        for spec in manifests.pod_specs(doc):
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                if not manifests.is_portal_container(container):
                    continue
                args = manifests.container_args(container, base)
                if args is None:  # the entrypoint is replaced: manifests.k8s_problems says so
                    continue
                env = {**base.env, **manifests.container_environment(container, objects)}
                found.append(
                    Invocation(
                        f"{label}: {doc['metadata']['name']}/{container['name']}",
                        tuple(args),
                        env,
                    )
                )
    return found


def markdown_code(text: str) -> Iterator[tuple[int, str]]:
    """(line number, code): every line of a fenced block, every inline `code` span."""
    fenced = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield lineno, line.strip().removeprefix("$ ")
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield lineno, span


_SHELL_SEPARATORS = {"&&", "||", ";", "|", "\\"}
# What may stand before a command: a separator, the end of another command's options
# (kubectl exec ... -- portal-boot ...), or an inline VAR=value.
_BEFORE_COMMAND = _SHELL_SEPARATORS | {"--", "exec"}


def _shell_portal_boot(line: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """``portal-boot ...`` command lines in a shell string, with their inline
    ``VAR=value`` assignments."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return
    i = 0
    while i < len(tokens):
        if (tokens[i] == "portal-boot" or tokens[i].endswith("/bin/portal-boot")) and (
            i == 0 or tokens[i - 1] in _BEFORE_COMMAND or re.fullmatch(r"\w+=.*", tokens[i - 1])
        ):
            j = i - 1
            inline: dict[str, str] = {}
            while j >= 0 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[j]):
                key, _, value = tokens[j].partition("=")
                inline[key] = value
                j -= 1
            end = i + 1
            while end < len(tokens) and tokens[end] not in _SHELL_SEPARATORS:
                end += 1
            yield inline, tokens[i + 1 : end]
            i = end
        i += 1


_VARIABLE_MENTION = re.compile(
    r"\b(PORTAL_BOOT_[A-Z0-9_]+|DATABASE_URL[A-Z0-9_]*|ENABLED_PLUGINS[A-Z0-9_]*|AUTO_RUN_PLUGIN_MIGRATIONS[A-Z0-9_]*)\b"
)
# A command in prose is quoted (`portal-boot migrate --to ...`); in a code block or a
# shell line it starts the line. "portal-boot as its ENTRYPOINT" is prose, not a command.
_QUOTED_COMMAND = re.compile(r"`portal-boot ([a-z][a-z-]*)")
_LINE_COMMAND = re.compile(r"^\s*(?:#\s+)?(?:\$\s+)?portal-boot ([a-z][a-z-]*)")


def mention_problems(path: Path, text: str) -> list[str]:
    """Names in any text, comments included: every portal-boot-looking variable and
    every quoted or line-leading ``portal-boot <command>`` must exist."""
    problems = []
    commands = cli_commands()
    for lineno, line in enumerate(text.splitlines(), 1):
        for var in _VARIABLE_MENTION.findall(line):
            if not is_known_variable(var):
                problems.append(f"{path.name}:{lineno}: unknown variable {var}")
        if path.suffix != ".md":  # Markdown: only its code, below
            for command in {*_QUOTED_COMMAND.findall(line), *_LINE_COMMAND.findall(line)}:
                if command not in commands:
                    problems.append(
                        f"{path.name}:{lineno}: unknown command `portal-boot {command}`"
                    )
    if path.suffix == ".md":
        for lineno, snippet in markdown_code(text):
            for _, argv in _shell_portal_boot(snippet):
                if argv and not argv[0].startswith("-") and argv[0] not in commands:
                    problems.append(
                        f"{path.name}:{lineno}: unknown command `portal-boot {argv[0]}`"
                    )
    return problems


def invocation_problems(invocation: Invocation) -> list[str]:
    """The command parses with the real CLI; every variable its environment sets is one
    portal-boot (or Python, or pip) knows; values resolve as portal-boot would."""
    import click

    from portal_boot.errors import UsageError

    problems = []
    for var in invocation.environ:
        if not is_known_variable(var):
            problems.append(f"{invocation.where}: sets unknown variable {var}")
    try:
        parsed = parse_cli(invocation.args)
    except (click.ClickException, AssertionError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        return [
            *problems,
            f"{invocation.where}: portal-boot {' '.join(invocation.args)}: {message}",
        ]
    try:
        settings = check_settings(parsed["params"], invocation.environ)
    except UsageError as exc:
        problems.append(f"{invocation.where}: portal-boot {' '.join(invocation.args)}: {exc}")
    else:
        # Nothing unsigned runs, ever: no deployment file may turn the checks off.
        if settings.signatures == "off":
            problems.append(
                f"{invocation.where}: portal-boot {' '.join(invocation.args)}: signatures off"
            )
    return problems
