"""The install driver: signed wheels into a fresh generation of the target.

Pipeline: if the current generation recorded a verification of exactly these wheels,
signatures, keys and settings that has not lapsed, a no-op that stages nothing and
runs no gpg (why that is safe: :mod:`portal_boot.wheels.unchanged`). Otherwise: stage
(copy or download into a private folder, :mod:`portal_boot.wheels.staging`) -> verify
the copies -> inspect them -> compare the set's digest with the current generation's
(equal: a no-op, nothing is compiled; the verification is recorded) -> under the
install lock, build a new generation and switch the target to it atomically
(:mod:`portal_boot.wheels.build`, :mod:`portal_boot.wheels.generations`). Any failure
leaves the target as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portal_boot.wheels import generations as gens
from portal_boot.wheels import staging
from portal_boot.wheels import unchanged as noop
from portal_boot.wheels.build import build_generation
from portal_boot.wheels.request import Request
from portal_boot.wheels.staging import InstalledWheel

if TYPE_CHECKING:
    from portal_boot.wheels.signatures import Verified

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InstallResult:
    generation: Path
    changed: bool  # False: the same set was already installed (nothing ran)
    digest: str
    wheels: tuple[InstalledWheel, ...]
    seconds: float


def verify(request: Request) -> list[Verified]:
    """Stage every wheel and check its signature; install nothing.

    The returned records name the wheel folder's files (for an index, the
    downloaded file names). Raises SignatureError (3), also for missing keys;
    UsageError (2) for a missing or empty wheel folder; InstallError (4) when a
    download from the index fails.
    """
    with staging.folder() as folder:
        staged = staging.stage(request, folder)
        results = staging.verify(request, list(staged))
    source = request.wheel_dir or Path()
    out = []
    for name, item in results.items():
        if item is None:
            continue
        out.append(
            dataclasses.replace(item, path=source / name, signature=source / item.signature.name)
        )
    return out


# --- the step -------------------------------------------------------------------------


def _noop(
    target: Path, generation: Path, state: dict[str, Any], started: float, why: str
) -> InstallResult:
    wheels = tuple(InstalledWheel(**w) for w in state.get("wheels", ()))
    log.debug("install: no-op decided in %.1f ms", (time.monotonic() - started) * 1000)
    if gens.untidy(target):  # an install killed after its switch, before its clean-up
        gens.tidy(target)
    log.info(
        "install: no-op, %s: generation %s already holds these %d wheel%s",
        why,
        generation.name,
        len(wheels),
        "" if len(wheels) == 1 else "s",
    )
    return InstallResult(generation, False, state["digest"], wheels, time.monotonic() - started)


def _record(
    generation: Path,
    state: dict[str, Any],
    prepared: staging.Prepared,
    verified: dict[str, Any] | None,
    pins: str | None,
) -> None:
    """Record a passed verification (with the signers: a generation installed with
    signatures off has none) and the request in a live generation, atomically; on a
    read-only target, skip it (the next boot verifies again)."""
    update: dict[str, Any] = {}
    if verified:
        update["verified"] = verified
        update["wheels"] = [dataclasses.asdict(wheel) for _, wheel in prepared.wheels]
    if pins:
        update["request"] = pins
    if not update or all(state.get(k) == v for k, v in update.items()):
        return
    try:
        gens.write_state(generation, {**state, **update})
    except OSError as exc:
        log.debug("install: verification not recorded in %s (%s)", generation.name, exc)


def _verification(
    request: Request, prepared: staging.Prepared, pins: str | None
) -> dict[str, Any] | None:
    """The record of the verification the staged files just passed (None: signatures
    off, or nothing that could prove it again)."""
    if not request.required:
        return None
    return noop.record(request, noop.staged_files(prepared.staged), prepared.verified, pins)


def install(request: Request, *, target: Path, lock_timeout: float) -> InstallResult:
    """Stage, verify and install the wheels into a new generation of the target, then
    switch the target to it atomically. A no-op when the same set is installed;
    without staging or gpg when :mod:`portal_boot.wheels.unchanged` can prove it.

    Raises SignatureError (3) before anything is written; UsageError (2) for a
    missing or empty wheel folder; InstallError (4) for a wheel that
    cannot be installed, an unmet requirement, or a target portal-boot did not
    create. On any failure the target is unchanged.
    """
    started = time.monotonic()
    gens.check_target(target)
    current = gens.current_generation(target)
    state = gens.read_state(current)
    pins = noop.request_digest(request) if request.requirements else None
    if current and state:
        if request.requirements:
            same, why = noop.request_unchanged(request, state, pins) if pins else (
                False, "the requirements are not all exact pins")  # fmt: skip
        else:
            same, why = noop.folder_unchanged(request, state)
        if same:
            return _noop(target, current, state, started, why)
        log.debug("install: staging and verifying: %s", why)
    timings: dict[str, float] = {}  # seconds per step, logged at debug level
    with staging.folder() as folder:
        prepared = staging.prepare(request, folder, timings)
        wheels = prepared.wheels
        digest = noop.set_digest([wheel for _, wheel in wheels])
        verified = _verification(request, prepared, pins)
        if current and state and state.get("digest") == digest:
            _record(current, state, prepared, verified, pins)
            return _noop(target, current, state, started, "same wheels")
        with gens.locked(target, lock_timeout):
            # Another replica may have installed this very set while we waited.
            current = gens.current_generation(target)
            state = gens.read_state(current)
            if current and state and state.get("digest") == digest:
                _record(current, state, prepared, verified, pins)
                return _noop(
                    target, current, state, started, "installed meanwhile by another process"
                )
            gens.clean_leftovers(target)
            new_state = {
                "digest": digest,
                "request": pins,
                "verified": verified,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "wheels": [dataclasses.asdict(wheel) for _, wheel in wheels],
            }
            generation = build_generation(
                target, wheels, new_state, requirements=request.requirements, timings=timings
            )
            gens.prune(target, {generation, *([current] if current else [])})
    for _, wheel in wheels:
        log.info(
            "install: %s %s (%s) signed by %s",
            wheel.name,
            wheel.version,
            wheel.file,
            wheel.signer or "nobody (signatures off)",
        )
    seconds = time.monotonic() - started
    log.debug(
        "install: timings %s total=%dms",
        " ".join(f"{step}={round(t * 1000)}ms" for step, t in timings.items()),
        round(seconds * 1000),
    )
    log.info(
        "install: %d wheel%s into generation %s in %d ms",
        len(wheels),
        "" if len(wheels) == 1 else "s",
        generation.name,
        round(seconds * 1000),
    )
    return InstallResult(generation, True, digest, tuple(w for _, w in wheels), seconds)


# --- for `portal-boot status` ---------------------------------------------------------


def wheel_states(request: Request) -> list[tuple[Path, str | None, str]]:
    """Each wheel of the folder with its signer and signature state; raises nothing
    for a bad signature (that is a state), UsageError for an unusable folder."""
    assert request.wheel_dir is not None
    wheels = staging.folder_wheels(request.wheel_dir)
    if not request.required:
        return [(path, None, "not checked (signatures off)") for path in wheels]
    from portal_boot.wheels import signatures

    return signatures.check(
        wheels,
        keys=request.trusted_keys,
        fingerprints=request.trusted_fingerprints,
        environ=request.environ,
    )


def is_pending(request: Request, target: Path) -> bool:
    """Whether an install would change the target (reads, never writes or downloads)."""
    state = gens.read_state(gens.current_generation(target))
    if state is None:
        return True
    if request.requirements:
        pins = noop.request_digest(request)
        return pins is None or state.get("request") != pins
    assert request.wheel_dir is not None
    wheels = [
        InstalledWheel("", "", path.name, staging.sha256(path), None)
        for path in staging.folder_wheels(request.wheel_dir)
    ]
    return noop.set_digest(wheels) != state.get("digest")
