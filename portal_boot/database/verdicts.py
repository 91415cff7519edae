"""What a failed connection attempt means: wait and retry, stop, or fix the settings.

:func:`classify` maps a driver's SQLSTATE and message to a :class:`Verdict`;
:func:`judge` turns a driver's exception into the exception to raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from portal_boot.dburl import redact
from portal_boot.errors import DatabaseError, UsageError

RETRY, FATAL, USAGE = "retry", "fatal", "usage"
FIX_URL = "--database-url / PORTAL_BOOT_DATABASE_URL (or DATABASE_URL)"


@dataclass(frozen=True)
class Verdict:
    action: str  # RETRY, FATAL or USAGE
    reason: str  # short, for the log and the error line
    hint: str = ""  # what to change, for FATAL and USAGE


_CREDENTIALS = f"fix the user or password in {FIX_URL}"
_CREATE_DB = f"create it, or fix its name in {FIX_URL}"
_SQLSTATES = {
    "57P03": Verdict(RETRY, "the database system is starting up"),
    "57P01": Verdict(RETRY, "the server is shutting down"),
    "53300": Verdict(RETRY, "too many connections"),
    "28P01": Verdict(FATAL, "password authentication failed", _CREDENTIALS),
    "28000": Verdict(FATAL, "the server does not admit this user", _CREDENTIALS),
    "3D000": Verdict(FATAL, "the database does not exist", _CREATE_DB),
}
# libpq before the connection (psycopg resolves host names itself), and the C library.
_DNS = (
    "could not translate host name|failed to resolve host|name or service not known"
    "|temporary failure in name resolution|nodename nor servname"
)
# libpq's connection errors carry no SQLSTATE (psycopg's sqlstate is None), so
# mostly the message is all there is. First match wins; the reason is the matched
# text unless one is given.
_MESSAGES: tuple[tuple[str, str, str | None, str], ...] = (
    (r'password authentication failed for user "[^"]*"', FATAL, None, _CREDENTIALS),
    (r"no password supplied", FATAL, None, f"add the password to {FIX_URL}"),
    (r'role "[^"]*" does not exist', FATAL, None, _CREDENTIALS),
    (r"access denied for user \S+", FATAL, None, _CREDENTIALS),  # MySQL 1045
    (r"no pg_hba\.conf entry for [^\n]*", FATAL, None,
     "allow this client in the server's pg_hba.conf, or fix the user, database or sslmode"),
    (r'database "[^"]*" does not exist', FATAL, None, _CREATE_DB),
    (r"unknown database '[^']*'", FATAL, None, _CREATE_DB),  # MySQL 1049
    (r"permission denied for database [^\n]*", FATAL, None,
     "GRANT CONNECT on the database to the user, or use another user"),
    (r"server does not support SSL[^\n]*|certificate verify failed", FATAL, None,
     f"fix sslmode in {FIX_URL}"),
    (r'invalid connection option "[^"]*"|invalid [\w ]+ value[^\n]*', USAGE, None,
     f"fix the parameter in {FIX_URL}"),
    (r"the database system is [\w ]+", RETRY, None, ""),
    (r"connection refused", RETRY, "connection refused", ""),
    (_DNS, RETRY, "the host name does not resolve yet", ""),
    # No Unix socket yet: the server is not up.
    (r"no such file or directory", RETRY, "no server socket yet", ""),
    (r"too many clients already|remaining connection slots are reserved", RETRY, None, ""),
)  # fmt: skip


def classify(sqlstate: str | None, message: str) -> Verdict:
    """Decide from a failed attempt whether waiting can help. Pure.

    Anything unrecognised is retried: a server whose messages are translated must
    not turn "starting up" into a failed boot; the deadline bounds the cost.
    """
    if sqlstate in _SQLSTATES:
        return _SQLSTATES[sqlstate]
    for pattern, action, reason, hint in _MESSAGES:
        found = re.search(pattern, message, re.IGNORECASE)
        if found:
            return Verdict(action, redact(reason or found[0]), hint)
    # psycopg's first line reads 'connection to server at "h", port p failed: <reason>'.
    line = (message.strip().splitlines() or ["unknown error"])[0]
    return Verdict(RETRY, redact(line.rsplit(" failed: ", 1)[-1].strip() or line))


class NotReady(Exception):
    """One attempt failed in a way that waiting can cure."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail or reason

    @property
    def port_closed(self) -> bool:
        return self.reason in ("connection refused", "no server socket yet")

    @property
    def starting(self) -> bool:
        return self.reason.startswith("the database system is")


def judge(exc: BaseException, where: str) -> Exception:
    """The exception to raise for a driver's error: NotReady, DatabaseError or UsageError."""
    message = str(exc)
    verdict = classify(getattr(exc, "sqlstate", None), message)
    if verdict.action == RETRY:
        return NotReady(verdict.reason, redact(" ".join(message.split())))
    if verdict.action == USAGE:
        return UsageError(f"the database URL is not usable ({verdict.reason}): {verdict.hint}")
    return DatabaseError(
        f"the database at {where} refused the connection ({verdict.reason}): {verdict.hint}"
    )
