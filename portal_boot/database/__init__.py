"""Stage 3: wait until the database really answers.

Plain functions over a URL and a deadline: :func:`wait_for_database` (what
``wait-db`` runs) and :func:`check_url` (refuse a URL no wait can fix, before any
work). Reading order: :mod:`.wait` (the deadline, the backoff, the TCP knock),
:mod:`.probes` (one attempt per database kind), :mod:`.verdicts` (what a failed
attempt means). The URL itself is :mod:`portal_boot.dburl`, shared by every stage.
"""

from __future__ import annotations

from portal_boot.database.verdicts import FIX_URL
from portal_boot.database.wait import check_url, wait_for_database

__all__ = ["FIX_URL", "check_url", "wait_for_database"]
