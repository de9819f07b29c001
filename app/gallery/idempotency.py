"""Idempotency-Key records: an enrollment's key stored in its own transaction, and read
back for a retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.gallery.engine import StoreBase
from app.gallery.models import (
    IdempotencyRecord,
)
from app.gallery.records import (
    IdempotencyClaim,
    IdempotentEnrollment,
    _aware,
)

# How long an Idempotency-Key is remembered (payment APIs keep theirs for 24 hours).
IDEMPOTENCY_RETENTION = timedelta(hours=24)


def _record_idempotency(
    session: Session,
    claim: IdempotencyClaim,
    collection: str,
    subject_id: str,
    face_ids: list[str],
) -> None:
    now = datetime.now(UTC)
    # Forget expired keys (this one included, so it may be used afresh).
    session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - IDEMPOTENCY_RETENTION)
    )
    # A plain INSERT: a second request with the same key fails on the primary key, and its
    # whole transaction (its faces) rolls back.
    session.add(
        IdempotencyRecord(
            owner=claim.owner,
            key=claim.key,
            request_sha256=claim.request_sha256,
            collection_id=collection,
            subject_id=subject_id,
            face_ids=face_ids,
            created_at=now,
        )
    )
    session.flush()


def find_idempotent(session: Session, owner: str, key: str) -> IdempotentEnrollment | None:
    """The enrollment recorded under this key, if within the retention period."""
    row = session.get(IdempotencyRecord, (owner, key))
    if row is None or _aware(row.created_at) < datetime.now(UTC) - IDEMPOTENCY_RETENTION:
        return None
    return IdempotentEnrollment(
        row.request_sha256, row.collection_id, row.subject_id, list(row.face_ids)
    )


class IdempotencyRecords(StoreBase):
    """Reading the enrollment recorded under an Idempotency-Key."""

    def find_idempotent(self, *, owner: str, key: str) -> IdempotentEnrollment | None:
        """The enrollment recorded under this key, if within the retention period."""
        with Session(self.engine) as session:
            return find_idempotent(session, owner, key)
