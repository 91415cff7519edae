"""Plugin discovery: installed distributions with an entry point in the plugin group.

Nothing is imported: the entry point's module is located through the
distribution's file list, so discovery cannot run plugin code and is fast.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from portal_boot.errors import UsageError, denied

log = logging.getLogger(__name__)

MIGRATION_FOLDERS = ("migration", "migrations")


@dataclasses.dataclass(frozen=True)
class Plugin:
    name: str  # the entry-point name
    value: str  # "package.module:Attribute"
    distribution: str
    version: str
    package_dir: Path | None  # the folder of the package the entry point lives in
    migrations_dir: Path | None  # its migration/ or migrations/ folder, if any

    @property
    def module(self) -> str:
        return self.value.split(":", 1)[0].strip()

    @property
    def dotted(self) -> str:
        """``module.path.ClassName``, the spelling the deployment guides use."""
        module, _, attr = self.value.partition(":")
        return f"{module.strip()}.{attr.strip()}" if attr else module.strip()

    def matches(self, selector: str) -> bool:
        return selector in {self.name, self.dotted, self.value, self.distribution}


def _module_file(dist: metadata.Distribution, module: str) -> Path | None:
    """The file of ``module`` inside ``dist``, without importing anything."""
    parts = module.split(".")
    wanted = {"/".join(parts) + ".py", "/".join(parts) + "/__init__.py"}
    for file in dist.files or ():
        if str(file).replace("\\", "/") in wanted:
            return Path(str(dist.locate_file(file)))
    return None


def _package_dir(dist: metadata.Distribution, module: str) -> Path | None:
    file = _module_file(dist, module)
    if file is None:
        return None
    # "pkg/__init__.py" lives in pkg; "pkg/schema.py" lives in pkg too.
    return file.parent


def _migrations_dir(package_dir: Path | None) -> Path | None:
    if package_dir is None:
        return None
    for name in MIGRATION_FOLDERS:
        candidate = package_dir / name
        if candidate.is_dir():
            return candidate
    return None


def discover(paths: Sequence[Path | str], group: str) -> list[Plugin]:
    """Every entry point of ``group`` in the distributions found on ``paths``,
    sorted by name. A distribution seen twice (an older copy further down the
    path) counts once, the first one, as the import system would pick it."""
    seen: set[str] = set()
    found: list[Plugin] = []
    for dist in metadata.distributions(path=[str(p) for p in paths]):
        name = dist.metadata["Name"] or ""
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            package_dir = _package_dir(dist, ep.value.split(":", 1)[0].strip())
            found.append(
                Plugin(
                    name=ep.name,
                    value=ep.value,
                    distribution=name,
                    version=dist.version,
                    package_dir=package_dir,
                    migrations_dir=_migrations_dir(package_dir),
                )
            )
    return sorted(found, key=lambda p: p.name)


def discover_installed(target: Path, group: str) -> list[Plugin]:
    """The plugins the served application will see: those of the image's own
    environment (``sys.path``, e.g. baked in with pip as the deployment guides do)
    first, then those of the plugin target, the order uvicorn's ``sys.path`` has."""
    import sys

    paths: list[Path | str] = [p for p in sys.path if p]
    try:
        exists = target.exists()
    except OSError as exc:  # Python >= 3.12 raises where older ones said False
        raise UsageError(
            denied(
                exc,
                "cannot read the plugin target",
                f"make {target.parent} readable and searchable by this user or its group "
                "(group 0 with chmod g=u for OpenShift's arbitrary uid), or point --target / "
                "PORTAL_BOOT_TARGET to the folder the install wrote",
            )
        ) from None
    if exists:
        paths.append(target)
    return discover(paths, group)


def select(plugins: Iterable[Plugin], enabled: Sequence[str]) -> list[Plugin]:
    """The plugins ``enabled`` names (entry-point name, ``module.path.ClassName``,
    ``module:Class`` or distribution name); all of them when ``enabled`` is empty.

    Raises :class:`UsageError` for a name that matches no installed plugin.
    """
    plugins = list(plugins)
    if not enabled:
        return plugins
    unknown = [sel for sel in enabled if not any(p.matches(sel) for p in plugins)]
    if unknown:
        known = ", ".join(p.name for p in plugins) or "none"
        raise UsageError(
            f"ENABLED_PLUGINS names {', '.join(unknown)}, which is not installed "
            f"(installed: {known}): fix ENABLED_PLUGINS / --enabled-plugins or install it"
        )
    return [p for p in plugins if any(p.matches(sel) for sel in enabled)]
