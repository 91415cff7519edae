"""The configuration a data product stores for a Databricks technical asset.

A plain dataclass: the example portal only discovers and lists plugins, and a
plugin should need nothing the portal image does not already have.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class DatabricksTechnicalAssetConfiguration:
    kind: ClassVar[str] = "databricks"
    table: ClassVar[str] = "databricks_plugin_workspaces"
    # Where this plugin's Alembic history is recorded (see migrations/env.py).
    version_table: ClassVar[str] = "alembic_version_databricks_plugin"

    workspace_url: str
    catalog: str = "main"
    schema: str = "default"
