"""The service's background work (issue 27), on one thread:

- every few seconds, the erasure a delete left over (a WAL checkpoint a reader held up;
  PostgreSQL's vacuum, within FACEVERIFY_ERASE_VACUUM_SECONDS of a delete);
- every FACEVERIFY_PURGE_INTERVAL_SECONDS, the retention purge (app/privacy/retention.py)
  and, with FACEVERIFY_AUDIT_RETENTION_DAYS, the audit trail's pruning.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from app.privacy.erasure import Erasure
from app.privacy.retention import Retention
from app.privacy.trail import AuditTrail
from app.settings import Settings

log = logging.getLogger("faceverify.upkeep")

# Seconds between the erasure checks.
TICK = 2.0


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        erasure: Erasure,
        retention: Retention,
        audit: AuditTrail | None,
    ) -> None:
        self.settings = settings
        self.erasure = erasure
        self.retention = retention
        self.audit = audit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upkeep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.retention.flush()

    def _run(self) -> None:
        interval = self.settings.purge_interval_seconds
        last_purge = time.monotonic() - interval  # a first round soon after start
        while not self._stop.wait(TICK):
            try:
                self.erasure.upkeep()
                self.retention.flush()
                if time.monotonic() - last_purge >= interval:
                    last_purge = time.monotonic()
                    self.round()
            except Exception as exc:  # noqa: BLE001 - logged; the next turn tries again
                log.warning("background upkeep failed: %s", exc)

    def round(self) -> tuple[int, int]:
        """One purge round: subjects deleted, audit events pruned."""
        purged = self.retention.purge()
        pruned = 0
        days = self.settings.audit_retention_days
        if self.audit is not None and days:
            before = self.retention.clock() - timedelta(days=days)
            pruned = self.audit.prune(before=before)
        return purged, pruned
