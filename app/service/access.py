"""A subject access request (GDPR art. 15): everything the service holds about one
person, gathered in one place (issue 27)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.gallery.records import (
    CollectionRecord,
    FaceRecord,
    SubjectRecord,
    SubjectTimes,
    due_at,
)

if TYPE_CHECKING:
    from app.service.core import FaceService

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
    service: FaceService, *, collection: str, subject_id: str, embeddings: bool
) -> SubjectExport:
    subject, faces = service.get_subject(collection=collection, subject_id=subject_id)
    record = service.get_collection(collection=collection)
    stored = (
        service.store.subject_face_bytes(collection=collection, subject_id=subject_id)
        if embeddings
        else {}
    )
    events: list[dict[str, Any]] = []
    if service.audit is not None:
        events = service.audit.query(collection=collection, subject=subject_id, limit=EXPORT_EVENTS)
    times = SubjectTimes(subject.created_at, subject.last_used_at, subject.expires_at)
    return SubjectExport(
        collection=record,
        subject=subject,
        faces=faces,
        embeddings=stored,
        events=events,
        due_at=due_at(times, record.retention_days),
        exported_at=service.retention.clock(),
    )
