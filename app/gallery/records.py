"""The plain records the gallery store takes and returns (never ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from app.gallery.models import (
    Face,
    Subject,
)
from app.geometry import Box


@dataclass(frozen=True)
class NewFace:
    embedding: np.ndarray
    box: Box
    detector_score: float


@dataclass(frozen=True)
class IdempotencyClaim:
    """An Idempotency-Key to record with an enrollment, in the same transaction."""

    owner: str
    key: str
    request_sha256: str


@dataclass(frozen=True)
class IdempotentEnrollment:
    request_sha256: str
    collection: str
    subject_id: str
    face_ids: list[str]


class IdempotencyKeyTaken(Exception):
    """Another request recorded this Idempotency-Key first (nothing of ours was stored)."""


@dataclass(frozen=True)
class FaceRecord:
    id: str
    subject_id: str
    box: Box
    detector_score: float
    encoder: str
    pipeline_version: str
    created_at: datetime


@dataclass(frozen=True)
class SubjectRecord:
    id: str
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    face_count: int
    # The retention clock: the last enrollment or successful verify (hour resolution).
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    consent: dict[str, Any] | None = None


@dataclass(frozen=True)
class CollectionRecord:
    id: str
    created_at: datetime
    subjects: int
    faces: int
    retention_days: int | None = None
    consent_required: bool = False
    # None: the server's defaults (FACEVERIFY_IDENTIFY_FPIR; the threshold's own FMR).
    identify_fpir: float | None = None
    verify_max_fmr: float | None = None


@dataclass(frozen=True)
class CollectionPolicy:
    """What a request must know of its collection: the retention schedule, the consent
    rule, whether any subject has an expiry date, and the decision rates (None: the
    server's defaults)."""

    retention_days: int | None = None
    consent_required: bool = False
    dated: bool = False
    identify_fpir: float | None = None
    verify_max_fmr: float | None = None


@dataclass(frozen=True)
class Consent:
    """The caller's record of a person's consent (issue 27): their document id or
    version, and when it was given."""

    reference: str
    given_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "given_at": utc(self.given_at).isoformat()}


@dataclass(frozen=True)
class SubjectTimes:
    """What decides when a subject is due for deletion."""

    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


# reload_collection: many faces changed at once (an import); reload that collection.
ChangeKind = Literal[
    "add_face",
    "delete_face",
    "delete_subject",
    "create_collection",
    "delete_collection",
    "reload_collection",
]


@dataclass(frozen=True)
class Change:
    version: int
    kind: ChangeKind
    collection: str
    # Empty for delete_collection.
    subject_id: str
    # The face added or deleted; None for delete_subject and delete_collection.
    face_id: str | None


@dataclass(frozen=True)
class Added:
    """Faces a transaction stored, with their plain embeddings (for the vector mirror).
    ``bulk``: an import of ``total`` faces, written in batches like this one."""

    collection: str
    face_ids: list[str]
    subject_ids: list[str]
    encoder: str
    vectors: np.ndarray
    bulk: bool = False
    total: int = 0


@dataclass(frozen=True)
class EmbeddingRows:
    face_ids: list[str]
    collections: list[str]
    subject_ids: list[str]
    matrix: np.ndarray  # (N, dim) float32


def utc(moment: datetime) -> datetime:
    """``moment`` with its time zone: SQLite returns naive datetimes (stored as UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def subject_record(subject: Subject, face_count: int) -> SubjectRecord:
    return SubjectRecord(
        id=subject.id,
        name=subject.name,
        metadata=subject.meta,
        created_at=subject.created_at,
        face_count=face_count,
        last_used_at=subject.last_used_at,
        expires_at=subject.expires_at,
        consent=subject.consent,
    )


def face_record(face: Face) -> FaceRecord:
    return FaceRecord(
        id=face.id,
        subject_id=face.subject_id,
        box=Box(face.box_left, face.box_top, face.box_right, face.box_bottom),
        detector_score=face.detector_score,
        encoder=face.encoder,
        pipeline_version=face.pipeline_version,
        created_at=face.created_at,
    )
