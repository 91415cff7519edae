"""The configuration a data product stores for an S3 technical asset.

A plain dataclass: the example portal only discovers and lists plugins, and a
plugin should need nothing the portal image does not already have.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class S3TechnicalAssetConfiguration:
    kind: ClassVar[str] = "s3"
    table: ClassVar[str] = "s3_plugin_buckets"

    bucket: str
    prefix: str = ""
    region: str = "eu-west-1"
    versioning_enabled: bool = False
