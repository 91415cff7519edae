"""Logging: configured once by the CLI; text or one JSON object a line, on stderr.

Every record passes a filter that masks URL passwords and any secret registered
with :func:`add_secret`, so a password cannot reach the output even through a
third-party message.

portal-boot's own loggers (``portal_boot.*``) and Alembic's (``alembic.*``, whose
progress lines portal-boot relays) are *owned*: they write to portal-boot's handler
only, at portal-boot's level, and cannot be disabled, re-levelled or re-handled by
the application's ``logging.config.dictConfig`` / ``fileConfig`` (run by its
``env.py`` or by a module a revision imports). The root logger stays shared: what
the application logs is the application's business.

After the exec, :func:`uvicorn_log_config` gives uvicorn the same JSON format and
filter (``--log-format json``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

from portal_boot.dburl import redact

log = logging.getLogger("portal_boot")

_secrets: set[str] = set()


def add_secret(secret: str | None) -> None:
    """Mask ``secret`` (and its URL-encoded forms) in every later log line and error."""
    if secret and len(secret) >= 3:
        # As given, percent-encoded, form-encoded, and as SQLAlchemy renders it in a URL.
        _secrets.update(
            {secret, quote(secret, safe=""), quote_plus(secret), quote(secret, safe=" +")}
        )


def scrub(text: str) -> str:
    """Redact URL passwords and registered secrets from ``text``."""
    text = redact(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


#: Set by the serve launcher's timing middleware when a request reaches the app; the
#: access line (written when the response starts) reads it for ``duration_ms``.
request_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "portal_boot_request_started", default=None
)


def _access_fields(record: logging.LogRecord) -> None:
    """uvicorn's access records carry (client, method, path, http version, status) as
    their arguments: keep them as fields, before the message is rendered."""
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return
    client, method, path, http_version, status = args
    record.client = str(client)
    record.method = str(method)
    record.path = scrub(str(path))
    record.http_version = str(http_version)
    record.status = status
    started = request_started.get()
    if started is not None:
        record.duration_ms = round((time.perf_counter() - started) * 1000, 1)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _access_fields(record)
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback here so it is scrubbed too (debug level only).
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            record.exc_info = None
            record.exc_text = None
        record.msg = scrub(message)
        record.args = None
        return True


_FIELDS = (
    "step", "event", "duration_ms", "status", "method", "path", "http_version", "client",
)  # fmt: skip


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False)


#: The loggers portal-boot owns (and their children).
OWNED = ("portal_boot", "alembic")
_QUIET = ("alembic.runtime.plugins",)
_NOISY = ("sqlalchemy", "gnupg", "urllib3", "filelock", "testcontainers")


class _Owned:
    """What an owned logger answers, whatever is set on it: the top loggers write to
    portal-boot's handler and do not propagate (the root's handlers may be the
    application's); their children propagate to them. ``disabled`` is always false,
    so ``disable_existing_loggers`` cannot silence them."""

    handler: logging.Handler | None = None
    level = logging.INFO
    levels: dict[str, int] = {}


def _is_owned(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in OWNED)


def _ignore(self: logging.Logger, value: object) -> None:
    pass


class OwnedLogger(logging.Logger):
    """A logger of portal-boot or Alembic: see :class:`_Owned`. Existing loggers get
    this class by :func:`configure`; new ones through the logging manager's factory."""

    disabled = property(lambda self: False, _ignore)  # type: ignore[assignment]
    propagate = property(lambda self: "." in self.name, _ignore)  # type: ignore[assignment]
    handlers = property(  # type: ignore[assignment]
        lambda self: [] if "." in self.name or _Owned.handler is None else [_Owned.handler],
        _ignore,
    )
    level = property(  # type: ignore[assignment]
        lambda self: _Owned.levels.get(
            self.name, logging.NOTSET if "." in self.name else _Owned.level
        ),
        _ignore,
    )


def _logger_factory(previous: Callable[[str], logging.Logger] | None) -> Callable[[str], Any]:
    def make(name: str) -> logging.Logger:
        if _is_owned(name):
            return OwnedLogger(name)
        return (previous or logging.getLoggerClass())(name)

    make.portal_boot = True  # type: ignore[attr-defined]
    return make


def _own_loggers() -> None:
    manager = logging.Logger.manager
    if not getattr(manager.loggerClass, "portal_boot", False):
        manager.loggerClass = _logger_factory(manager.loggerClass)  # type: ignore[assignment]
    for name in OWNED:
        logging.getLogger(name)  # exists, so its children find it as their parent
    for name, logger in list(manager.loggerDict.items()):
        if _is_owned(name) and type(logger) is logging.Logger:
            logger.__class__ = OwnedLogger
    manager._clear_cache()  # type: ignore[attr-defined]


def make_handler(log_format: str = "text") -> logging.Handler:
    """portal-boot's stderr handler: the scrub filter and the format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubFilter())
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s portal-boot %(levelname)s %(message)s", "%H:%M:%S")
        )
    return handler


def configure(log_format: str = "text", level: str = "info") -> None:
    """Install the one stderr handler. Safe to call again (replaces it)."""
    handler = make_handler(log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    _Owned.handler, _Owned.level = handler, numeric
    # Libraries chat at info (alembic's "Running upgrade ..." is worth keeping).
    _Owned.levels = {name: max(numeric, logging.WARNING) for name in _QUIET}
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    _own_loggers()


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``--log-format json``: its startup, error and access
    lines (and the root logger's, until the application configures its own) as
    portal-boot's JSON, one stream (stderr), through the same scrub filter."""
    numeric = level.upper()
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "json",
        "filters": ["scrub"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"scrub": {"()": _ScrubFilter}},
        "formatters": {"json": {"()": _JsonFormatter}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": numeric, "propagate": False},
            "uvicorn.error": {"level": numeric},
            "uvicorn.access": {"handlers": ["json"], "level": numeric, "propagate": False},
        },
        "root": {"handlers": ["json"], "level": numeric},
    }


def summarise(
    ids: Sequence[str], *, full: bool = False, limit: int = 5, count: bool = True
) -> str:
    """Revision ids for one line: all of them up to ``limit`` (or with ``full``), else
    the count (unless ``count`` is false), the first and the last (a real application
    has ~100 pending on a fresh database)."""
    if full or len(ids) <= limit:
        return ", ".join(ids)
    ends = f"{ids[0]} ... {ids[-1]}"
    return f"{len(ids)} revisions, {ends}" if count else ends


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log the start and the end of a step with its duration, in milliseconds."""
    log.info("%s: start", name, extra={"step": name, "event": "start"})
    started = time.monotonic()
    status = "failed"
    try:
        yield
        status = "ok"
    finally:
        ms = round((time.monotonic() - started) * 1000)
        level = logging.INFO if status == "ok" else logging.ERROR
        log.log(
            level,
            "%s: %s in %d ms",
            name,
            "done" if status == "ok" else "failed",
            ms,
            extra={"step": name, "event": "end", "duration_ms": ms, "status": status},
        )
