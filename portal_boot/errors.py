"""The exception hierarchy. One class per failure kind, one exit status per class.

Only :mod:`portal_boot.cli` turns these into an exit; everything below raises.
Messages say what failed and what to change, and never hold a secret.
"""

from __future__ import annotations


class BootError(Exception):
    """Base of every expected failure. Subclasses set the SPEC's exit status."""

    exit_code = 1


class UsageError(BootError):
    """A missing, malformed or contradictory setting (status 2)."""

    exit_code = 2


class SignatureError(BootError):
    """A wheel is not signed by a trusted, valid key (status 3)."""

    exit_code = 3


class InstallError(BootError):
    """The plugin install failed; the previous generation stays in use (status 4)."""

    exit_code = 4


class DatabaseError(BootError):
    """The database did not answer before the deadline, or refused us (status 5)."""

    exit_code = 5


class MigrationError(BootError):
    """A migration failed, or a pre-flight check found a problem (status 6)."""

    exit_code = 6


class LockTimeout(BootError):
    """The cross-replica migration lock was not obtained in time (status 7)."""

    exit_code = 7


class AppStartupError(BootError):
    """The application's own startup failed after the exec: its lifespan startup, or
    an error raised while importing it (status 8). Raised by nothing in portal-boot's
    process: the serve launcher exits with this status and prints this name."""

    exit_code = 8


class Terminated(SystemExit):
    """Raised from the SIGTERM handler (status 143).

    A ``SystemExit`` on purpose: libraries let it through their ``except Exception``
    blocks, and psycopg cancels the running statement on the server when a
    ``SystemExit`` interrupts a query, so a stopped migration does not keep running
    (and holding the lock) in a backend whose client is gone.
    """

    exit_code = 143

    def __init__(self, message: str = "stopped by SIGTERM") -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


def who() -> str:
    """This process's user, as a permission message names it: ``uid 10001 (portal), gid 0``.
    OpenShift's arbitrary uid has no name: then only the number."""
    import grp
    import os
    import pwd

    uid, gid = os.geteuid(), os.getegid()
    try:
        user = f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        user = f"uid {uid}"
    try:
        group = f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        group = f"gid {gid}"
    return f"{user}, {group}"


def denied(exc: OSError, doing: str, fix: str = "") -> str:
    """One line for a permission problem: what was refused, where, to whom, and the fix.
    ``doing`` says what was tried ("cannot use the plugin target")."""
    path = exc.filename if exc.filename is not None else "?"
    fix = fix or (
        f"give this user (or its group) access to {path}: e.g. chown it to the user the "
        "container runs as, or, for OpenShift's arbitrary uid in group 0, chgrp 0 and chmod g=u"
    )
    return f"{doing} {path} ({exc.strerror or exc}) as {who()}: {fix}"
