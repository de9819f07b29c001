"""Idempotency-Key records: an enrollment's key stored in its own transaction, and read
back for a retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.gallery.models import IdempotencyRecord
from app.gallery.records import (
    IdempotencyClaim,
    IdempotencyKeyTaken,
    IdempotentEnrollment,
    utc,
)

if TYPE_CHECKING:
    from app.gallery.unit import Transaction

# How long an Idempotency-Key is remembered (payment APIs keep theirs for 24 hours).
IDEMPOTENCY_RETENTION = timedelta(hours=24)


def find(session: Session, owner: str, key: str) -> IdempotentEnrollment | None:
    """The enrollment recorded under this key, if within the retention period."""
    row = session.get(IdempotencyRecord, (owner, key))
    if row is None or utc(row.created_at) < datetime.now(UTC) - IDEMPOTENCY_RETENTION:
        return None
    return IdempotentEnrollment(
        row.request_sha256, row.collection_id, row.subject_id, list(row.face_ids)
    )


class IdempotencyRows:
    """A transaction's Idempotency-Key record: claimed first (IdempotencyKeyTaken when
    another request holds it), recorded with the faces it stored."""

    def __init__(self, tx: Transaction) -> None:
        self.session = tx.session
        # The key this transaction records (a duplicate at commit is translated).
        self.claimed: IdempotencyClaim | None = None

    def claim(self, claim: IdempotencyClaim) -> None:
        """IdempotencyKeyTaken when ``claim``'s key is recorded (writers queue on the
        version row, so what this reads cannot change before the commit)."""
        if find(self.session, claim.owner, claim.key) is not None:
            raise IdempotencyKeyTaken(claim.key)
        self.claimed = claim

    def record(self, collection: str, subject_id: str, face_ids: list[str]) -> None:
        """The claimed key, with what this request stored (nothing claimed: nothing)."""
        claim = self.claimed
        if claim is None:
            return
        now = datetime.now(UTC)
        # Forget expired keys (this one included, so it may be used afresh).
        self.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.created_at < now - IDEMPOTENCY_RETENTION
            )
        )
        # A plain INSERT: a second request with the same key fails on the primary key,
        # and its whole transaction (its faces) rolls back.
        self.session.add(
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
        self.session.flush()


class IdempotencyReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find(self, *, owner: str, key: str) -> IdempotentEnrollment | None:
        """The enrollment recorded under this key, if within the retention period."""
        with Session(self.engine) as session:
            return find(session, owner, key)
