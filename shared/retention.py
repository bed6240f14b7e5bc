"""Bounded storage for the command ledger: whole days past the retention period are dropped, never scanned for."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from shared.ledger import Ledger

log = logging.getLogger(__name__)

# Days before the retention period that are looked at, so that a timer that did not run for a while still catches
# up; each is one partition, read by its key alone.
LOOKBACK_DAYS = 30


def drop_expired(ledger: Ledger, retention_days: int, now: datetime | None = None) -> int:
    """Delete the rows of every day older than ``retention_days`` (up to `LOOKBACK_DAYS` back); the count."""
    oldest_kept = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    dropped = ledger.drop_days_before(oldest_kept, LOOKBACK_DAYS)
    log.info("ledger retention: %d row(s) older than %d day(s) dropped", dropped, retention_days)
    return dropped
