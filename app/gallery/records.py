"""The plain records the gallery store takes and returns (never ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from app.gallery.models import (
    Face,
    Subject,
)
from app.geometry import Box
from app.settings import RETENTION_DAYS_MAX


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
        return {"reference": self.reference, "given_at": _aware(self.given_at).isoformat()}


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
class EmbeddingRows:
    face_ids: list[str]
    collections: list[str]
    subject_ids: list[str]
    matrix: np.ndarray  # (N, dim) float32


def due_at(times: SubjectTimes, retention_days: int | None) -> datetime | None:
    """When a subject is due for deletion: its expiry, or ``retention_days`` after its
    last use (its creation if never used), whichever comes first; None: never."""
    due = [_aware(times.expires_at)] if times.expires_at is not None else []
    if retention_days is not None:
        used = times.last_used_at or times.created_at
        due.append(_aware(used) + timedelta(days=retention_days))
    return min(due, default=None)


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes (stored as UTC).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _subject_record(subject: Subject, face_count: int) -> SubjectRecord:
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


def _face_record(face: Face) -> FaceRecord:
    return FaceRecord(
        id=face.id,
        subject_id=face.subject_id,
        box=Box(face.box_left, face.box_top, face.box_right, face.box_bottom),
        detector_score=face.detector_score,
        encoder=face.encoder,
        pipeline_version=face.pipeline_version,
        created_at=face.created_at,
    )


# A consent given later than this ahead of the server's clock is refused (clock skew).
CONSENT_SKEW = timedelta(minutes=5)


def checked_retention_days(value: object) -> int | None:
    """``value`` if it is a retention schedule the API takes (None, or a whole number of
    days from 1 to RETENTION_DAYS_MAX; not true, not "5"); else ValueError."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= RETENTION_DAYS_MAX:
        raise ValueError(
            f"retention_days is a whole number of days from 1 to {RETENTION_DAYS_MAX}, or none"
        )
    return value


def checked_consent(consent: Consent, now: datetime) -> Consent:
    """``consent`` if it was given no later than now; else ValueError (issue 37: a
    consent dated 2999 was stored)."""
    consent_not_ahead(consent.given_at, now)
    if not consent.reference.strip() or len(consent.reference) > 256:
        raise ValueError("consent.reference is 1 to 256 characters")
    return consent


def consent_not_ahead(given_at: datetime, now: datetime | None = None) -> datetime:
    """A consent time no later than ``now`` (the API's validator); else ValueError."""
    if _aware(given_at) > (now or datetime.now(UTC)) + CONSENT_SKEW:
        raise ValueError("consent cannot be given in the future")
    return given_at
