"""``--no-plugins`` / ``PORTAL_BOOT_NO_PLUGINS=true``: install an empty generation.

The explicit way to remove the last plugin. An empty or missing wheel folder stays an
error (a volume that did not mount must not uninstall everything), and with no wheel
folder and no requirements the installed generation is kept; this switch is the one
way to say "no plugins", and it refuses to be combined with a wheel folder or
requirements. The previous generation is kept beside the new one, for rollback.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from portal_boot.wheels import generations as gens
from portal_boot.wheels import unchanged as noop
from portal_boot.wheels.build import build_generation

log = logging.getLogger(__name__)


def _digest() -> str:
    return noop.set_digest([])


def is_pending(target: Path) -> bool:
    """Whether the target holds anything but an empty generation."""
    state = gens.read_state(gens.current_generation(target))
    return state is None or state.get("digest") != _digest()


def install_nothing(target: Path, *, lock_timeout: float) -> Path:
    """Switch ``target`` to an empty generation (a no-op when it is one already).
    Returns the generation. Raises InstallError, LockTimeout."""
    started = time.monotonic()
    gens.check_target(target)
    digest = _digest()
    current = gens.current_generation(target)
    state = gens.read_state(current)
    if current and state and state.get("digest") == digest:
        log.info("install: no-op, no plugins: generation %s is already empty", current.name)
        return current
    with gens.locked(target, lock_timeout):
        current = gens.current_generation(target)
        state = gens.read_state(current)
        if current and state and state.get("digest") == digest:
            log.info("install: no-op, no plugins: generation %s is already empty", current.name)
            return current
        gens.clean_leftovers(target)
        new_state = {
            "digest": digest,
            "request": None,
            "verified": None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wheels": [],
        }
        generation = build_generation(target, [], new_state)
        gens.prune(target, {generation, *([current] if current else [])})
    log.info(
        "install: no plugins (--no-plugins): empty generation %s in %d ms%s",
        generation.name,
        round((time.monotonic() - started) * 1000),
        f", the previous one ({current.name}) kept for rollback" if current else "",
    )
    return generation
