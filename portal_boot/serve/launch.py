"""``python -m portal_boot.serve.launch [--log-format=F --log-level=L] TARGET APP [uvicorn
options]``: run uvicorn with the plugin target appended to ``sys.path`` (after
site-packages, so the image's own packages win). This is what
:func:`portal_boot.serve.exec_uvicorn` execs.

With ``--log-format=json`` uvicorn's own lines (startup, errors, access) come out as
portal-boot's JSON, through its scrub filter (:func:`portal_boot.logs.uvicorn_log_config`).

When uvicorn cannot start, the closing line says which of these it was:
the app cannot be imported, or the address cannot be bound (a configuration
problem, status 2); or the application's own startup failed (its lifespan, or an
error raised while importing it: status 8, with the first line of its error).

On the warm path: imports only what uvicorn itself needs, plus portal-boot's
logging module in JSON mode.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

_CONFIG = 2  # portal-boot's UsageError
_APP_FAILED = 8  # portal-boot's AppStartupError


class _StartupWatch(logging.Handler):
    """On uvicorn's error logger during startup: what went wrong, from the records
    uvicorn writes before it exits with its status 3."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.kind: str | None = None
        self.detail = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.kind is not None and self.kind != "lifespan-end":
            return
        if isinstance(record.msg, OSError):
            self.kind, self.detail = "bind", str(record.msg)
            return
        message = record.getMessage()
        if message.startswith("Error loading ASGI app"):
            self.kind, self.detail = "import", message
        elif "lifespan" in record.pathname:
            if message.startswith("Application startup failed"):
                self.kind = self.kind or "lifespan-end"
                return
            self.kind, self.detail = "lifespan", _error_line(message, record)


def _error_line(message: str, record: logging.LogRecord) -> str:
    """The first line of the application's error: a traceback's exception line."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        first = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "no message"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _log_config(log_format: str, level: str, watch: _StartupWatch) -> dict[str, Any]:
    import copy

    from uvicorn.config import LOGGING_CONFIG

    if log_format == "json":
        from portal_boot.logs import uvicorn_log_config

        config = uvicorn_log_config(level)
    else:
        config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["portal_boot_startup"] = {"()": lambda: watch}
    error_logger = config["loggers"].setdefault("uvicorn.error", {})
    error_logger["handlers"] = [*error_logger.get("handlers", []), "portal_boot_startup"]
    return config


def _register_secrets() -> None:
    """The scrub filter of JSON mode masks the database password wherever it appears,
    as in portal-boot's own process (URL-shaped passwords are masked regardless)."""
    from portal_boot.dburl import secrets_of
    from portal_boot.logs import add_secret

    for var in (
        "PORTAL_BOOT_DATABASE_URL", "DATABASE_URL", "DATABASE_URL_ASYNC",
        "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
    ):  # fmt: skip
        value = os.environ.get(var)
        if value is None and os.environ.get(f"{var}_FILE"):
            try:
                with open(os.environ[f"{var}_FILE"], encoding="utf-8") as file:
                    value = file.read().strip()
            except OSError:
                value = None
        for url in (value or "").split():
            for secret in secrets_of(url):
                add_secret(secret)


def _time_requests() -> None:
    """JSON access lines carry ``duration_ms``: the app uvicorn loads is wrapped so that
    each request's start is known to the log filter (a context variable)."""
    import time

    from uvicorn.config import Config

    from portal_boot.logs import request_started

    original = Config.load

    def load(self: Config) -> None:
        original(self)
        app = self.loaded_app

        async def timed(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                request_started.set(time.perf_counter())
            await app(scope, receive, send)

        self.loaded_app = timed

    Config.load = load  # type: ignore[method-assign]


def _close(log_format: str, code: int, kind: str, message: str, trace: str = "") -> None:
    line = f"portal-boot: {kind}: {message}"
    if log_format == "json":
        from portal_boot.logs import scrub

        entry = {"level": "error", "message": scrub(line), "status": code}
        if trace:
            entry["traceback"] = scrub(trace)
        line = json.dumps(entry)
    elif trace:
        sys.stderr.write(trace)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _verdict(watch: _StartupWatch) -> tuple[int, str, str]:
    if watch.kind == "import":
        return (
            _CONFIG,
            "UsageError",
            f"the application cannot be imported ({watch.detail}): check --app / "
            "PORTAL_BOOT_APP and that its module is in the image",
        )
    if watch.kind == "bind":
        return (
            _CONFIG,
            "UsageError",
            f"the address cannot be bound ({watch.detail}): check --host / PORTAL_BOOT_HOST "
            "and --port / PORTAL_BOOT_PORT (is another server on that port?)",
        )
    if watch.kind in ("lifespan", "lifespan-end"):
        return (
            _APP_FAILED,
            "AppStartupError",
            f"the application failed to start ({watch.detail or 'its lifespan startup failed'}):"
            " its own startup (lifespan) raised, see its error above; fix the application or"
            " what it needs at startup",
        )
    return (
        _CONFIG,
        "UsageError",
        "uvicorn could not start the application (its error is above): check --app / "
        "PORTAL_BOOT_APP, --host / PORTAL_BOOT_HOST and --port / PORTAL_BOOT_PORT",
    )


def main() -> None:
    args = sys.argv[1:]
    options = {"--log-format": "text", "--log-level": "info"}
    while args and args[0].split("=", 1)[0] in options:
        name, _, value = args.pop(0).partition("=")
        options[name] = value
    log_format, level = options["--log-format"], options["--log-level"]
    target, *uvicorn_args = args
    if os.path.isdir(target):
        sys.path.append(target)
    # uvicorn imports the app relative to the working directory, as its own CLI does.
    import uvicorn.config
    from uvicorn.main import STARTUP_FAILURE
    from uvicorn.main import main as uvicorn_main

    watch = _StartupWatch()
    # The default of uvicorn's --log-config (an explicit --log-config after -- wins).
    config = _log_config(log_format, level, watch)
    uvicorn.config.LOGGING_CONFIG.clear()
    uvicorn.config.LOGGING_CONFIG.update(config)
    if log_format == "json":
        _register_secrets()
        _time_requests()
    try:
        uvicorn_main(args=uvicorn_args, prog_name="uvicorn")
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        # uvicorn's 3 reads as portal-boot's "signature verification failed": say what
        # it is, with portal-boot's status for it.
        code, kind, message = _verdict(watch)
        _close(log_format, code, kind, message)
        raise SystemExit(code) from None
    except Exception as exc:  # raised by the application's module while uvicorn imported it
        import traceback

        first = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
        _close(
            log_format,
            _APP_FAILED,
            "AppStartupError",
            f"the application failed to start ({detail}): importing it raised (the "
            "traceback is above); fix the application or what it needs at startup",
            traceback.format_exc(),
        )
        raise SystemExit(_APP_FAILED) from None


if __name__ == "__main__":
    main()
