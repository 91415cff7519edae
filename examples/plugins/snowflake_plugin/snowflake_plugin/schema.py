"""The configuration a data product stores for a Snowflake technical asset.

A plain dataclass: the example portal only discovers and lists plugins, and a
plugin should need nothing the portal image does not already have.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class SnowflakeTechnicalAssetConfiguration:
    kind: ClassVar[str] = "snowflake"
    table: ClassVar[str] = "snowflake_plugin_warehouses"

    database: str
    schema: str
    warehouse: str = "COMPUTE_WH"
