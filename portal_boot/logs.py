"""Logging: configured once by the CLI; text or one JSON object a line, on stderr.

Every record passes a filter that masks URL passwords and any secret registered
with :func:`add_secret`, so a password cannot reach the output even through a
third-party message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
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


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback here so it is scrubbed too (debug level only).
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            record.exc_info = None
            record.exc_text = None
        record.msg = scrub(message)
        record.args = None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("step", "event", "duration_ms", "status"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", level: str = "info") -> None:
    """Install the one stderr handler. Safe to call again (replaces it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubFilter())
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s portal-boot %(levelname)s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    # Libraries chat at info (alembic's "Running upgrade ..." is worth keeping).
    for noisy in (
        "sqlalchemy", "gnupg", "urllib3", "filelock", "testcontainers", "alembic.runtime.plugins",
    ):  # fmt: skip
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


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
