"""What the wheel stage is asked to do: the sources and the trust, and nothing else.

Built once from the settings by the stage's entry functions (:mod:`portal_boot.wheels`);
everything below them takes this, or plain values, never the whole settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Request:
    wheel_dir: Path | None  # a folder of signed wheels (air-gapped), or
    requirements: tuple[str, ...]  # pinned requirements fetched from an index
    trusted_keys: Path | None
    trusted_fingerprints: tuple[str, ...]
    signatures: str  # "require" or "off"
    # The only environment children (pip, gpg) get; an index install reads PIP_* from it.
    environ: Mapping[str, str]

    @property
    def required(self) -> bool:
        return self.signatures == "require"
