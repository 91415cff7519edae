"""Building a generation: unpack the staged wheels, compile, check requirements, switch.

The installer is PyPA's ``installer``, driven by :mod:`.unpack`: it unpacks a wheel
exactly as its RECORD says (every file's hash and size checked as it is written),
runs no build, reads no pip configuration and touches no network, so a host's
``PIP_FIND_LINKS`` or ``pip.conf`` cannot add anything. Measured on 10 small local
wheels (2-core VM): installer 0.12 s; uv 0.07 s with a warm cache but 0.25-0.31 s
with the cold cache a fresh container has; pip 0.95 s. On a heavy set (boto3, pandas,
pyarrow) the one-pass unpack, the bytecode written as the sources land and the work
spread over the cores are what keep up with uv: benchmarks/heavy.py. Bytecode is
compiled once, here: the image runs with PYTHONDONTWRITEBYTECODE, and a target
without ``.pyc`` files imports several times slower on every start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from portal_boot.errors import InstallError
from portal_boot.wheels import generations as gens
from portal_boot.wheels.staging import InstalledWheel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.monotonic() - started


def _unpack_and_compile(wheels: Sequence[tuple[Path, InstalledWheel]], build: Path) -> None:
    from portal_boot.wheels import unpack

    outcome = unpack.install_wheels(
        [unpack.Wheel(path, wheel.name, wheel.file) for path, wheel in wheels], build
    )
    log.debug(
        "install: unpacked and compiled by %d worker(s), busy %s",
        outcome.workers,
        ", ".join(f"{seconds:.2f} s" for seconds in outcome.busy),
    )
    for warning in outcome.warnings:
        log.warning("install: %s", warning)
    # Not fatal, as with pip: that module fails at import (a py2 leftover in a wheel),
    # not the others.
    for problem in outcome.not_compiled:
        log.warning("install: %s: did not compile, importing it will fail", problem)


def _requested_extras(requirements: Sequence[str]) -> dict[str, frozenset[str]]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: dict[str, frozenset[str]] = {}
    for raw in requirements:
        req = Requirement(raw)
        out[canonicalize_name(req.name)] = frozenset(req.extras)
    return out


def _check(target: Path, build: Path, requirements: Sequence[str]) -> None:
    from portal_boot.wheels import requirements as depcheck

    image = depcheck.image_paths([target, gens.home(target)])
    problems = depcheck.unsatisfied(build, image, _requested_extras(requirements))
    if problems:
        where = "the index" if requirements else "the wheel folder"
        raise InstallError(
            f"{'; '.join(problems)}: add the missing wheels to {where} (or to the image); "
            "the previous generation stays in use"
        )
    for dist, module in depcheck.shadowed(build, image):
        log.warning(
            "install: %s ships %s, which the image already has: the image's copy is the one "
            "imported (the image's packages come first on sys.path)",
            dist,
            module,
        )


def build_generation(
    target: Path,
    wheels: Sequence[tuple[Path, InstalledWheel]],
    state: dict[str, Any],
    *,
    requirements: Sequence[str] = (),
    timings: dict[str, float] | None = None,
) -> Path:
    """Unpack ``wheels`` into a new generation of ``target``, compile it, check its
    requirements (``requirements``: the pinned ones of an index install, whose extras
    count), record ``state`` in it and switch ``target`` to it. Call with the install
    lock held. Raises InstallError; on any failure the half-built folder is removed
    and ``target`` is unchanged. The seconds each step took go into ``timings``."""
    timings = {} if timings is None else timings
    build, gen_id = gens.new_build(target, state["digest"])
    try:
        log.debug("install: unpacking %d wheels with PyPA installer into %s", len(wheels), build)
        with _timed(timings, "unpack_compile"):
            _unpack_and_compile(wheels, build)
        with _timed(timings, "check"):
            _check(target, build, requirements)
        with _timed(timings, "switch"):
            gens.write_state(build, state)
            return gens.publish(target, build, gen_id)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
