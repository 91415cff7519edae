"""Helpers for the migration tests: the example portal copied into a test's folder,
installed plugins written straight into a target folder (a package, its
``*.dist-info`` and its ``migration/`` revisions: what pip leaves behind), and
looks at the database. No tests here; the test modules import these."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa

from portal_boot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "portal"
GROUP = "data_product_portal.plugins"


def copy_example(dest: Path) -> Path:
    """The example portal in ``dest``; returns its alembic.ini."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    return dest / "alembic.ini"


def revision(
    rev: str,
    down: str | Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    depends_on: str | Sequence[str] | None = None,
    upgrade: str = "pass",
    downgrade: str = "pass",
) -> str:
    """The text of a revision file, in the shape of Alembic's script.py.mako."""

    def lit(value: object) -> str:
        return repr(tuple(value) if isinstance(value, list) else value)

    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    down_body = textwrap.indent(textwrap.dedent(downgrade).strip(), "    ")
    return (
        f'"""{rev}\n\nRevision ID: {rev}\nRevises: {down}\n"""\n'
        "from typing import Sequence, Union\n\n"
        "from alembic import op\n"
        "import sqlalchemy as sa\n\n"
        f"revision: str = {rev!r}\n"
        f"down_revision: Union[str, Sequence[str], None] = {lit(down)}\n"
        f"branch_labels: Union[str, Sequence[str], None] = {lit(labels)}\n"
        f"depends_on: Union[str, Sequence[str], None] = {lit(depends_on)}\n\n\n"
        f"def upgrade() -> None:\n{body}\n\n\n"
        f"def downgrade() -> None:\n{down_body}\n"
    )


def create_table(name: str) -> str:
    return f"op.create_table({name!r}, sa.Column('id', sa.Integer(), primary_key=True))"


def drop_table(name: str) -> str:
    return f"op.drop_table({name!r})"


@dataclasses.dataclass
class InstalledPlugin:
    name: str
    distribution: str
    package: str
    root: Path  # the target folder
    dist_info: Path

    @property
    def package_dir(self) -> Path:
        return self.root / self.package

    @property
    def migration_dir(self) -> Path:
        return self.package_dir / "migration"

    def remove(self) -> None:
        shutil.rmtree(self.package_dir)
        shutil.rmtree(self.dist_info)


def _class_name(package: str) -> str:
    return "".join(part.capitalize() for part in package.split("_")) + "Configuration"


def install_plugin(
    target: Path,
    package: str,
    revisions: Mapping[str, str],
    *,
    name: str | None = None,
    distribution: str | None = None,
    version: str = "1.0.0",
    group: str = GROUP,
) -> InstalledPlugin:
    """Write an installed plugin into ``target``, as pip --target would leave it:
    ``revisions`` maps a file name in ``<package>/migration/`` to its text."""
    name = name or package
    distribution = distribution or f"data-product-portal-{package.replace('_', '-')}"
    cls = _class_name(package)
    files: dict[str, str] = {
        f"{package}/__init__.py": f'"""The {name} plugin (a test fixture)."""\n',
        f"{package}/schema.py": f"class {cls}:\n    name = {name!r}\n",
    }
    for filename, text in revisions.items():
        files[f"{package}/migration/{filename}"] = text
    dist_name = distribution.replace("-", "_")
    dist_info = f"{dist_name}-{version}.dist-info"
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    files[f"{dist_info}/entry_points.txt"] = f"[{group}]\n{name} = {package}.schema:{cls}\n"
    files[f"{dist_info}/INSTALLER"] = "pip\n"
    record = []
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        record.append(f"{rel},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    (target / dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return InstalledPlugin(name, distribution, package, target, target / dist_info)


def install_example_plugin(target: Path, package: str) -> None:
    """One of the repository's example plugins (examples/plugins/), laid out in
    ``target`` as pip would install it: its package and a ``*.dist-info``."""
    import re

    source = REPO / "examples" / "plugins" / package
    pyproject = (source / "pyproject.toml").read_text()
    distribution = re.search(r'^name = "([^"]+)"', pyproject, re.MULTILINE).group(1)  # type: ignore[union-attr]
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)  # type: ignore[union-attr]
    entry = re.search(r'^(\w+) = "([\w.]+:\w+)"', pyproject, re.MULTILINE)
    assert entry, "the example's pyproject.toml has no entry point"
    shutil.copytree(
        source / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
    )
    dist_info = target / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[{GROUP}]\n{entry[1]} = {entry[2]}\n")
    files = sorted(p.relative_to(target) for p in (target / package).rglob("*") if p.is_file())
    (dist_info / "RECORD").write_text(
        "".join(f"{f},,\n" for f in files) + f"{dist_info.name}/RECORD,,\n"
    )


def s3_plugin(target: Path, **extra_revisions: str) -> InstalledPlugin:
    """The example S3 plugin's revisions: its own branch, on top of core_0002."""
    return install_plugin(
        target,
        "s3_plugin",
        {
            "s3_0001_buckets.py": revision(
                "s3_0001", None, labels=["s3_plugin"], depends_on="core_0002",
                upgrade=create_table("s3_buckets"), downgrade=drop_table("s3_buckets"),
            ),
            "s3_0002_objects.py": revision(
                "s3_0002", "s3_0001",
                upgrade=create_table("s3_objects"), downgrade=drop_table("s3_objects"),
            ),
            **extra_revisions,
        },
    )  # fmt: skip


def snowflake_plugin(target: Path) -> InstalledPlugin:
    return install_plugin(
        target,
        "snowflake_plugin",
        {
            "snowflake_0001_warehouses.py": revision(
                "snowflake_0001", None, labels=["snowflake_plugin"], depends_on="core_0001",
                upgrade=create_table("snowflake_warehouses"),
                downgrade=drop_table("snowflake_warehouses"),
            ),
        },
    )  # fmt: skip


def settings(ini: Path, target: Path | None = None, **values: object) -> Settings:
    return Settings(
        alembic_config=ini,
        target=target or ini.parent / "no-plugins",
        db_timeout=values.pop("db_timeout", 10.0),  # type: ignore[arg-type]
        lock_timeout=values.pop("lock_timeout", 30.0),  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def current(url: str) -> set[str]:
    return set(query(url, "SELECT version_num FROM alembic_version"))


def query(url: str, sql: str, **params: object) -> list:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).scalars())
    finally:
        engine.dispose()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` with its content hash: a byte-for-byte fingerprint."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def migrate_args(ini: Path, url: str, *more: str, target: Path | None = None) -> list[str]:
    args = ["migrate", "--alembic-config", str(ini), "--database-url", url]
    if target is not None:
        args += ["--target", str(target)]
    return [*args, *more]
