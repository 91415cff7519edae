"""After an install: is every requirement of the new generation satisfied?

The plugins run with ``sys.path`` = the image's own paths, then the target (see
:mod:`portal_boot.serve.launch`): for any name found in both, the image's copy is the one
imported. So a requirement is looked up in the image first, then in the
generation, and checked against the copy that will really be imported. Markers
are evaluated for this interpreter; an extra (``pkg[extra]``, on a requirement or
on ``--requirement``) brings in that distribution's extra-only requirements too.
The image's own distributions are trusted for their base requirements.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from importlib import machinery, metadata
from pathlib import Path

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

log = logging.getLogger(__name__)

_NOT_MODULES = {"bin", "include", "__pycache__"}


def image_paths(exclude: Iterable[Path]) -> list[str]:
    """``sys.path`` without the target and its generations (a PYTHONPATH that
    includes the target must not make the old generation count as the image)."""
    excluded = [os.path.realpath(path) for path in exclude]
    kept = []
    for entry in sys.path:
        real = os.path.realpath(entry or os.getcwd())
        if not any(real == ex or real.startswith(ex + os.sep) for ex in excluded):
            kept.append(entry)
    return kept


def _by_name(paths: list[str]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            # The first one on the path is the one the import system uses.
            found.setdefault(canonicalize_name(name), dist)
    return found


class _Image(dict[str, "metadata.Distribution | None"]):
    """The image's distributions, looked up by name when first asked: matching folder
    names is cheap, while reading every METADATA of a big image is not."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths

    def __missing__(self, name: str) -> metadata.Distribution | None:
        self[name] = next(iter(metadata.distributions(name=name, path=self.paths)), None)
        return self[name]


def _label(dist: metadata.Distribution) -> str:
    return f"{dist.metadata['Name']} {dist.version}"


def _applies(req: Requirement, extras: frozenset[str], base: bool) -> bool:
    """Whether ``req`` applies: without extras (when ``base``) or through one of ``extras``."""
    if req.marker is None:
        return base
    wanted = ([""] if base else []) + sorted(extras)
    return any(req.marker.evaluate({"extra": extra}) for extra in wanted)


def unsatisfied(
    generation: Path, image: list[str], requested_extras: Mapping[str, frozenset[str]]
) -> list[str]:
    """One message per requirement that neither the image nor ``generation`` meets."""
    image_dists = _Image(image)
    gen_dists = _by_name([str(generation)])
    problems: list[str] = []
    # (name, extras, base): base=False for an image distribution reached through an
    # extra, whose base requirements the image is trusted for.
    # A generation distribution the image also has is never imported: see shadowed().
    todo = [
        (name, requested_extras.get(name, frozenset()), True)
        for name in gen_dists
        if image_dists[name] is None
    ]
    seen: set[tuple[str, frozenset[str], bool]] = set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        name, extras, base = item
        dist = image_dists[name] or gen_dists[name]
        for raw in dist.requires or ():
            try:
                req = Requirement(raw)
                if not _applies(req, extras, base):
                    continue
            except (InvalidRequirement, UndefinedComparison, UndefinedEnvironmentName) as exc:
                problems.append(f"{_label(dist)} has an unreadable requirement {raw!r} ({exc})")
                continue
            wanted = canonicalize_name(req.name)
            in_image = image_dists[wanted] is not None
            found = image_dists[wanted] or gen_dists.get(wanted)
            if found is None:
                problems.append(f"{_label(dist)} requires {req}, which is not installed")
            elif req.specifier and not req.specifier.contains(found.version, prereleases=True):
                where = "the image" if in_image else "the target"
                problems.append(f"{_label(dist)} requires {req}, but {where} has {_label(found)}")
            elif req.extras:
                todo.append((wanted, frozenset(req.extras), not in_image))
    return sorted(set(problems))


def _top_level(dist: metadata.Distribution) -> set[str]:
    names = set()
    for file in dist.files or ():
        first = file.parts[0] if file.parts else ""
        if not first or first in _NOT_MODULES or first.endswith((".dist-info", ".data")):
            continue
        if len(file.parts) == 1:
            if first.endswith((".py", ".so")):
                names.add(first.split(".", 1)[0])
        elif first.isidentifier():
            names.add(first)
    return names


def shadowed(generation: Path, image: list[str]) -> list[tuple[str, str]]:
    """(distribution, module) for every top-level module of the generation that the
    image also provides: the image's copy wins, the target's is never imported."""
    out = []
    for dist in metadata.distributions(path=[str(generation)]):
        for module in sorted(_top_level(dist)):
            spec = machinery.PathFinder.find_spec(module, image)
            # A namespace package (no loader origin) merges portions instead of hiding them.
            if spec is not None and spec.origin not in (None, "namespace"):
                out.append((_label(dist), module))
    return out
