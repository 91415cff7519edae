"""Real wheels for the tests, built in milliseconds.

A wheel is a zip with a ``.dist-info`` folder (METADATA, WHEEL, RECORD, and
optionally entry_points.txt). :func:`build_wheel` writes exactly that, with a
correct RECORD, so pip, uv and PyPA's ``installer`` accept it like any other;
going through a build backend would cost a second a wheel and need one installed.
The broken wheels (a corrupt zip, entries that escape the target) are crafted by
hand, since no backend would produce them.

``plugin_wheels`` (session-scoped) builds the whole catalogue once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import gpgkeys
import pytest

GROUP = "data_product_portal.plugins"
MISSING_REQUIREMENT = "portal-test-no-such-dependency>=1.0"

# A schema module and an Alembic revision, so a test plugin looks like the real ones.
_SCHEMA = "class {cls}:\n    version = {version!r}\n"
_REVISION = '''"""{name} {version}"""
revision = "{rev}"
down_revision = None
branch_labels = ("{package}",)
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _normalized(name: str) -> str:
    return name.replace("-", "_")


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    files: Mapping[str, str | bytes],
    *,
    requires: Iterable[str] = (),
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    tag: str = "py3-none-any",
    raw_entries: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``{name}-{version}-{tag}.whl`` into ``out_dir`` and return its path.

    ``files`` maps archive paths to contents. ``raw_entries`` are written as-is and
    left out of RECORD's checks (for crafting hostile archives: ``../x``, ``/x``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = _normalized(name)
    dist_info = f"{dist}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {req}" for req in requires]
    entries: dict[str, bytes] = {
        path: content.encode() if isinstance(content, str) else content
        for path, content in files.items()
    }
    entries[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    root_is_purelib = "true" if tag.endswith("-none-any") else "false"
    entries[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: portal-boot-tests\n"
        f"Root-Is-Purelib: {root_is_purelib}\nTag: {tag}\n"
    ).encode()
    if entry_points:
        text = ""
        for group, points in entry_points.items():
            text += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
        entries[f"{dist_info}/entry_points.txt"] = text.encode()
    raw = dict(raw_entries or {})
    record_lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in entries.items()]
    record_lines += [f"{path},{_record_hash(data)},{len(data)}" for path, data in raw.items()]
    record_lines.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = out_dir / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in {**entries, **raw}.items():
            archive.writestr(path, data)
    return wheel


def build_plugin(
    out_dir: Path,
    package: str,
    version: str = "1.0.0",
    *,
    requires: Iterable[str] = (),
    raw_entries: Mapping[str, bytes] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """A plugin like the examples: ``portal-<package>`` with ``<package>.schema``, an
    entry point in the plugin group and a ``migration/`` folder."""
    cls = "".join(part.title() for part in package.split("_")) + "Configuration"
    files = {
        **(extra_files or {}),
        f"{package}/__init__.py": f"__version__ = {version!r}\n",
        f"{package}/schema.py": _SCHEMA.format(cls=cls, version=version),
        f"{package}/migration/{package}_0001.py": _REVISION.format(
            name=package, version=version, rev=f"{package}_0001", package=package
        ),
    }
    return build_wheel(
        out_dir,
        f"portal-{package.replace('_', '-')}",
        version,
        files,
        requires=requires,
        entry_points={GROUP: {cls: f"{package}.schema:{cls}"}},
        raw_entries=raw_entries,
    )


@dataclasses.dataclass(frozen=True)
class PluginWheels:
    """Every test wheel, each in its own folder so a test copies only what it means to."""

    alpha_v1: Path  # portal-alpha-plugin 1.0.0, package alpha_plugin
    alpha_v2: Path  # the same plugin, 2.0.0, for upgrades
    beta: Path  # portal-beta-plugin 1.0.0, requires only what the image has
    needy: Path  # requires MISSING_REQUIREMENT, which no environment has
    escape: Path  # an entry "../escaped.py"
    absolute: Path  # an entry "/tmp/portal-boot-absolute.py"
    corrupt: Path  # not a zip at all, named .whl
    sneaky: Path  # for PIP_FIND_LINKS: must never be installed
    sdist: Path  # a source distribution, which is never installed
    big: Path  # 800 modules: an install slow enough to be killed half-way
    gamma: Path  # requires portal-gamma-lib (not in the image) and packaging (in it)
    gamma_lib: Path


def _corrupt(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "portal_corrupt_plugin-1.0.0-py3-none-any.whl"
    # A zip's local header magic followed by garbage: looks like a zip to a glance,
    # fails any real read.
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return path


def make_plugin_wheels(root: Path) -> PluginWheels:
    sdist = root / "sdist" / "portal-gamma-plugin-1.0.0.tar.gz"
    sdist.parent.mkdir(parents=True)
    sdist.write_bytes(b"not really a tarball: it must never be opened")
    return PluginWheels(
        alpha_v1=build_plugin(root / "alpha1", "alpha_plugin", "1.0.0"),
        alpha_v2=build_plugin(root / "alpha2", "alpha_plugin", "2.0.0"),
        beta=build_plugin(root / "beta", "beta_plugin", requires=["packaging>=20"]),
        needy=build_plugin(root / "needy", "needy_plugin", requires=[MISSING_REQUIREMENT]),
        escape=build_plugin(
            root / "escape", "escape_plugin", raw_entries={"../escaped.py": b"print('out')\n"}
        ),
        absolute=build_plugin(
            root / "absolute",
            "absolute_plugin",
            raw_entries={"/tmp/portal-boot-absolute.py": b"print('out')\n"},
        ),
        corrupt=_corrupt(root / "corrupt"),
        sneaky=build_plugin(root / "sneaky", "sneaky_plugin"),
        sdist=sdist,
        big=build_plugin(
            root / "big",
            "big_plugin",
            extra_files={f"big_plugin/mod{i:04d}.py": f"VALUE = {i}\n" for i in range(800)},
        ),
        gamma=build_plugin(
            root / "gamma", "gamma_plugin", requires=["portal-gamma-lib>=1.0", "packaging>=20"]
        ),
        gamma_lib=build_wheel(
            root / "gamma_lib", "portal-gamma-lib", "1.0.0", {"gamma_lib/__init__.py": "X = 1\n"}
        ),
    )


@pytest.fixture(scope="session")
def plugin_wheels(tmp_path_factory: pytest.TempPathFactory) -> PluginWheels:
    return make_plugin_wheels(tmp_path_factory.mktemp("wheels"))


@dataclasses.dataclass(frozen=True)
class SigningKeys:
    good: gpgkeys.Key  # its public key is in ``trusted``
    other: gpgkeys.Key  # a valid key the operator does not trust
    trusted: Path  # the --trusted-keys file


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKeys]:
    lab = gpgkeys.GpgLab()
    try:
        good, other = lab.generate("good"), lab.generate("other")
        trusted = good.export(tmp_path_factory.mktemp("keys") / "trusted.asc")
        yield SigningKeys(good, other, trusted)
    finally:
        lab.close()


def signed_folder(folder: Path, *wheels: Path, key: gpgkeys.Key | None) -> Path:
    """Copy ``wheels`` into ``folder`` and sign each copy with ``key`` (None: unsigned)."""
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        copy = folder / wheel.name
        shutil.copyfile(wheel, copy)
        if key is not None and copy.name.endswith(".whl"):
            key.sign(copy)
    return folder
