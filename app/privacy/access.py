"""A subject access request (GDPR art. 15): everything the service holds about one
person, gathered in one place (issue 27)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.gallery import CollectionRecord, FaceRecord, Gallery, SubjectRecord, SubjectTimes
from app.privacy.rules import due_at
from app.privacy.trail import AuditTrail

# Audit events one export lists at most (the oldest first; `faceverify audit export`
# has every one).
EXPORT_EVENTS = 10_000


@dataclass(frozen=True)
class SubjectExport:
    collection: CollectionRecord
    subject: SubjectRecord
    faces: list[FaceRecord]
    embeddings: dict[str, bytes]
    events: list[dict[str, Any]]
    due_at: datetime | None
    exported_at: datetime


def subject_export(
    gallery: Gallery,
    audit: AuditTrail | None,
    *,
    collection: str,
    subject_id: str,
    embeddings: bool,
    now: datetime | None = None,
) -> SubjectExport:
    """What the service holds about one subject (SubjectNotFound), from the store and
    the audit trail (None: the trail is off)."""
    subject = gallery.subjects.get(collection=collection, subject_id=subject_id)
    faces = gallery.faces.of_subject(collection=collection, subject_id=subject_id)
    record = gallery.collections.get(collection=collection)
    stored = (
        gallery.subjects.face_bytes(collection=collection, subject_id=subject_id)
        if embeddings
        else {}
    )
    events: list[dict[str, Any]] = []
    if audit is not None:
        # This lifetime's only: not those of an earlier subject of the same id (issue 37).
        since, after = audit.lifetime(
            collection=collection, subject=subject_id, created_at=subject.created_at
        )
        events = audit.query(
            collection=collection,
            subject=subject_id,
            since=since,
            after=after,
            limit=EXPORT_EVENTS,
        )
    times = SubjectTimes(subject.created_at, subject.last_used_at, subject.expires_at)
    return SubjectExport(
        collection=record,
        subject=subject,
        faces=faces,
        embeddings=stored,
        events=events,
        due_at=due_at(times, record.retention_days),
        exported_at=now or datetime.now(UTC),
    )
