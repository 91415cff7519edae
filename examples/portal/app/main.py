"""A tiny pure-ASGI application, so the example needs nothing beyond portal-boot's
own dependencies.

``GET /health`` says the process is up; ``GET /health/plugins`` lists the plugins
the application discovers in its entry-point group, exactly as a real portal would
find them once portal-boot has installed them and made them importable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

DEFAULT_GROUP = "data_product_portal.plugins"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _selectors() -> list[str]:
    raw = os.environ.get("ENABLED_PLUGINS", "")
    if raw.strip().startswith("["):  # a JSON list, as the real portal reads it
        return [str(item).strip() for item in json.loads(raw) if str(item).strip()]
    return [item.strip() for item in raw.replace("\n", ",").split(",") if item.strip()]


def _matches(ep: metadata.EntryPoint, selector: str) -> bool:
    # The same spellings portal-boot accepts: the entry-point name, the guides'
    # "module.path.ClassName", "module:Class", or the distribution name.
    module, _, attr = ep.value.partition(":")
    dotted = f"{module.strip()}.{attr.strip()}" if attr else module.strip()
    dist = ep.dist.metadata["Name"] if ep.dist is not None else None
    return selector in {ep.name, dotted, ep.value, dist}


def discovered_plugins() -> list[dict[str, str | None]]:
    """The enabled entry points of the plugin group, sorted by name."""
    group = os.environ.get("PORTAL_BOOT_ENTRY_POINT_GROUP", DEFAULT_GROUP)
    selectors = _selectors()
    plugins = []
    seen = set()
    for ep in metadata.entry_points(group=group):
        if selectors and not any(_matches(ep, s) for s in selectors):
            continue
        if (ep.name, ep.value) in seen:  # the same distribution twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        plugins.append(
            {
                "name": ep.name,
                "value": ep.value,
                "distribution": ep.dist.metadata["Name"] if ep.dist is not None else None,
                "version": ep.dist.version if ep.dist is not None else None,
            }
        )
    return sorted(plugins, key=lambda p: str(p["name"]))


async def _send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"].rstrip("/") or "/", scope["method"]
    if method not in ("GET", "HEAD"):
        await _send_json(send, 405, {"detail": "method not allowed"})
    elif path == "/health":
        await _send_json(send, 200, {"status": "ok"})
    elif path == "/health/plugins":
        plugins = discovered_plugins()
        await _send_json(send, 200, {"total_plugins": len(plugins), "plugins": plugins})
    else:
        await _send_json(send, 404, {"detail": "not found"})
