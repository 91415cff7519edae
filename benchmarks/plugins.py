"""Generated plugins for the "many plugins" scenarios: N small plugin packages with M
Alembic revisions each, written straight into wheels (a zip with a correct RECORD,
which pip and PyPA's ``installer`` accept like any other), in milliseconds.

Each plugin looks like the examples: ``portal-bench-pNN`` ships the package
``bench_pNN`` with ``schema.py`` (the entry point's class, in the group
``data_product_portal.plugins``) and ``migration/`` holding M revisions. Revision 1
creates a table that references the core's ``data_products``; the next ones add a
column each. Both ways of chaining onto the core that SPEC.md allows are used:
even plugins branch from ``core_0002`` (``down_revision``), odd ones start their own
base and ``depends_on`` it; every plugin has its own branch label.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

GROUP = "data_product_portal.plugins"
CORE_HEAD = "core_0002"

_SCHEMA = '''"""Benchmark plugin {index}."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class {cls}:
    table = "{package}_items"
    name: str
'''

_REVISION = '''"""{package}: revision {step}

Revision ID: {rev}
Revises: {down_doc}
"""
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = {depends!r}


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''

_CREATE = """    op.create_table(
        "{table}",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "data_product_id",
            sa.Integer(),
            sa.ForeignKey("data_products.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(100), nullable=False),
    )"""

_ADD = """    op.add_column("{table}", sa.Column("col_{step}", sa.String(50), nullable=True))"""


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    out_dir: Path,
    name: str,
    version: str,
    files: dict[str, str],
    entry_points: dict[str, str],
    requires: tuple[str, ...] = (),
) -> Path:
    """``{name}-{version}-py3-none-any.whl`` with METADATA, WHEEL, entry_points.txt, RECORD."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries = {path: text.encode() for path, text in files.items()}
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {req}" for req in requires]
    entries[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    entries[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: portal-boot-benchmark\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    entries[f"{info}/entry_points.txt"] = (
        f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    ).encode()
    record = [f"{path},{_hash(data)},{len(data)}" for path, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in entries.items():
            # A fixed date: the same sources give the same bytes (and sha256).
            info_ = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            info_.external_attr = 0o644 << 16
            info_.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info_, data)
    return wheel


def plugin_files(index: int, revisions: int) -> tuple[str, str, dict[str, str]]:
    """(distribution name, entry-point class, files) of generated plugin ``index``."""
    package = f"bench_p{index:02d}"
    cls = f"BenchP{index:02d}Configuration"
    table = f"{package}_items"
    files = {
        f"{package}/__init__.py": f'"""Benchmark plugin {index}."""\n__version__ = "1.0.0"\n',
        f"{package}/schema.py": _SCHEMA.format(index=index, cls=cls, package=package),
    }
    for step in range(1, revisions + 1):
        rev = f"{package}_{step:04d}"
        if step == 1:
            labels = (package,)
            down, depends = (CORE_HEAD, None) if index % 2 == 0 else (None, CORE_HEAD)
            upgrade = _CREATE.format(table=table)
            downgrade = f'    op.drop_table("{table}")'
        else:
            labels, down, depends = None, f"{package}_{step - 1:04d}", None
            upgrade = _ADD.format(table=table, step=step)
            downgrade = f'    op.drop_column("{table}", "col_{step}")'
        files[f"{package}/migration/{rev}.py"] = _REVISION.format(
            package=package,
            step=step,
            rev=rev,
            down_doc=down or "",
            down=down,
            labels=labels,
            depends=depends,
            upgrade=upgrade,
            downgrade=downgrade,
        )
    return f"portal-bench-p{index:02d}", cls, files


def build(out_dir: Path, count: int, revisions: int) -> list[Path]:
    """Write ``count`` plugin wheels into ``out_dir``; returns their paths."""
    wheels = []
    for index in range(1, count + 1):
        name, cls, files = plugin_files(index, revisions)
        package = name.removeprefix("portal-").replace("-", "_")
        wheels.append(
            write_wheel(
                out_dir,
                name,
                "1.0.0",
                files,
                {cls: f"{package}.schema:{cls}"},
                requires=("sqlalchemy>=2.0",),
            )
        )
    return wheels
