"""Parsing one setting's raw text: each parser takes the value and the name to blame
(the flag or the variable it came from) and returns the value or raises UsageError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from portal_boot.errors import UsageError

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def as_text(raw: str, where: str) -> str:
    value = raw.strip()
    if not value:
        raise UsageError(f"{where} is empty: give it a value or unset it")
    return value


def as_path(raw: str, where: str) -> Path:
    value = as_text(raw, where)
    if "\0" in value:
        raise UsageError(f"{where} holds a NUL character: give a plain path")
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~someone" for a user that does not exist
        raise UsageError(f"{where}={raw!r}: cannot expand '~': give an absolute path") from None


def as_bool(raw: str, where: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{where}={raw!r} is not a boolean: use true/false, 1/0 or yes/no")


def as_json_list(raw: str, where: str) -> tuple[str, ...] | None:
    """A JSON list of strings (``'["a", "b"]'``, as applications parse ENABLED_PLUGINS
    with pydantic), or None when ``raw`` is not one. Malformed JSON starting with '['
    is a usage error: it was meant as JSON."""
    value = raw.strip()
    if not value.startswith("["):
        return None
    import json

    try:
        items = json.loads(value)
    except ValueError as exc:
        raise UsageError(
            f"{where} starts with '[' but is not a JSON list ({exc.msg} at character "
            f"{exc.pos + 1}): write a JSON list of strings ('[\"a\", \"b\"]') or a "
            "comma-separated list (a,b)"
        ) from None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise UsageError(
            f"{where} is JSON but not a list of strings: write '[\"a\", \"b\"]' or a,b"
        )
    return tuple(item.strip() for item in items if item.strip())


def as_list(raw: str, where: str) -> tuple[str, ...]:
    # A JSON list of strings, or commas with optional spaces; newlines too, as the
    # guides' ConfigMaps write lists.
    as_json = as_json_list(raw, where)
    if as_json is not None:
        return as_json
    items = [item.strip() for item in raw.replace("\n", ",").split(",")]
    return tuple(item for item in items if item)


def as_requirements(raw: str, where: str) -> tuple[str, ...]:
    as_json = as_json_list(raw, where)
    if as_json is not None:
        return as_json
    # Commas inside extras ("pkg[a,b]==1.0") do not separate requirements.
    items = [item.strip() for item in re.split(r",(?![^\[]*\])", raw.replace("\n", ","))]
    return tuple(item for item in items if item)


def as_seconds(raw: str, where: str) -> float:
    try:
        value = float(as_text(raw, where))
    except ValueError:
        raise UsageError(f"{where}={raw!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{where}={raw!r} must be a positive number of seconds")
    return value


def as_seconds_or_off(raw: str, where: str) -> float:
    """Seconds, or 0 for "off"."""
    try:
        value = float(as_text(raw, where))
    except ValueError:
        raise UsageError(f"{where}={raw!r} is not a number of seconds (0: off)") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{where}={raw!r} must be a number of seconds, 0 or more (0: off)")
    return value


def as_port(raw: str, where: str) -> int:
    try:
        value = int(as_text(raw, where))
    except ValueError:
        raise UsageError(f"{where}={raw!r} is not a port number") from None
    if not 0 < value < 65536:
        raise UsageError(f"{where}={raw!r} is not a port number (1-65535)")
    return value


def as_choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(raw: str, where: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise UsageError(f"{where}={raw!r} is not one of: {', '.join(allowed)}")
        return value

    return parse


def as_app(raw: str, where: str) -> str:
    # Otherwise uvicorn finds out after the install and the migrations, and exits 3:
    # portal-boot's "signature verification failed".
    value = as_text(raw, where)
    module, colon, attribute = value.partition(":")
    if not colon or not all(p.isidentifier() for p in [*module.split("."), *attribute.split(".")]):
        raise UsageError(
            f"{where}={raw!r} is not an ASGI app: give module:attribute (e.g. app.main:app)"
        )
    return value


def as_fingerprints(raw: str, where: str) -> tuple[str, ...]:
    out = []
    for item in as_list(raw, where):
        fpr = item.replace(" ", "").upper()
        if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
            raise UsageError(
                f"{where}: {item!r} is not a full 40-hex-digit fingerprint "
                "(gpg --with-colons --fingerprint shows it)"
            )
        out.append(fpr)
    return tuple(out)


def as_log_level(raw: str, where: str) -> str:
    return as_choice("debug", "info", "warning", "error", "critical")(raw, where)
