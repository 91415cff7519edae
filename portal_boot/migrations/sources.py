"""Where a run's revision files come from: the part of the settings this stage uses.

Built once by the stage's entry functions (:mod:`portal_boot.migrations`); everything
below them takes this, or plain values, never the whole settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Sources:
    alembic_config: Path  # the application's alembic.ini
    migrations_mode: str  # "locations", "link" or "copy"
    target: Path  # the plugin target (plugin revisions may import their package)
    entry_point_group: str  # to find installed plugins that are not enabled
