"""The schemas of the admin side: collections and their schedules, the audit trail,
the subject export, health and /info (split from schemas.py by subject)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import CollectionId, FaceOut, SubjectOut
from app.settings import RETENTION_DAYS_MAX

RetentionDays = Annotated[
    int | None,
    Field(
        strict=True,  # not true (1 day) nor "5" (issue 37)
        ge=1,
        le=RETENTION_DAYS_MAX,
        description="Delete a subject this many days after its last enrollment or "
        "successful verify (null: keep until deleted).",
    ),
]


IdentifyFpir = Annotated[
    float | None,
    Field(
        ge=1e-4,
        le=0.5,
        description="/identify names a subject (`best`) only at this false-positive "
        "identification rate or lower: the share of searches for people who are not "
        "enrolled that would name someone, at the collection's size (null: "
        "FACEVERIFY_IDENTIFY_FPIR, 0.01). A request may ask for a lower one.",
    ),
]
VerifyMaxFmr = Annotated[
    float | None,
    Field(
        ge=1e-7,
        le=0.1,
        description="/verify matches only at this false match rate or lower (one "
        "comparison of two different people), on top of the threshold (null: the "
        "threshold alone, ~0.8%). A request may ask for a lower one.",
    ),
]


class CollectionCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection_id: CollectionId
    retention_days: RetentionDays = None
    consent_required: bool = Field(
        False, strict=True, description="A new subject needs consent at enrollment."
    )
    identify_fpir: IdentifyFpir = None
    verify_max_fmr: VerifyMaxFmr = None


class CollectionUpdateRequest(BaseModel):
    """Only the fields sent change."""

    model_config = ConfigDict(extra="forbid")
    retention_days: RetentionDays = None
    consent_required: bool | None = Field(None, strict=True)
    identify_fpir: IdentifyFpir = None
    verify_max_fmr: VerifyMaxFmr = None


class CollectionOut(BaseModel):
    collection_id: str
    created_at: datetime
    subjects: int
    faces: int = Field(description="Faces stored, of any model.")
    retention_days: int | None = Field(
        None, description="The retention schedule: days after last use (null: none)."
    )
    consent_required: bool = False
    identify_fpir: float | None = Field(
        None,
        description="The false-positive identification rate /identify names a subject at "
        "(the collection's, else FACEVERIFY_IDENTIFY_FPIR; null in an export: the "
        "server's default).",
    )
    verify_max_fmr: float | None = Field(
        None, description="The largest false match rate /verify accepts (null: the threshold's)."
    )


class AuditEventOut(BaseModel):
    id: int | None = Field(description="null for a key bound to a collection.")
    position: int | None = Field(
        description="In the hash chain (null: not sealed yet, or a key bound to a collection)."
    )
    at: str
    request_id: str
    key_id: str | None
    collection: str | None
    action: str
    subjects: list[str]
    status: int
    code: str | None
    match: bool | None
    score: float | None
    client: str | None
    detail: dict[str, Any] | None
    chain: str | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_after: int | str | None = Field(
        description="Pass as ?after= for the next page (an opaque cursor for a key bound to "
        "a collection)."
    )


class FaceExport(FaceOut):
    embedding: list[float] | None = Field(None, description="Only with include_embeddings=true.")


class SubjectExport(BaseModel):
    """Everything the service holds about one person (a subject access request)."""

    collection: CollectionOut
    subject: SubjectOut
    due_at: datetime | None = Field(
        description="When the retention schedule or expires_at deletes it (null: never)."
    )
    faces: list[FaceExport]
    audit_events: list[AuditEventOut]
    exported_at: datetime


class DeleteCollectionResponse(CollectionOut):
    deleted: bool
    keys_revoked: bool = Field(description="API keys bound to it were revoked.")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    identify: Literal["ready", "loading"] = Field(
        description="loading: the 1:N index is still being filled after start-up (identify "
        "answers 503 index_loading meanwhile; everything else works)."
    )


class InfoModel(BaseModel):
    name: str
    file: str
    sha256: str
    licence: str


class InfoSettings(BaseModel):
    detect_max_side: int
    detect_upsample: int
    detect_retry_max_side: int
    detect_quick_side: int
    num_jitters: int
    template_views: int
    probe_mode: Literal["fast", "thorough"]
    min_face_side: int
    max_image_pixels: int
    max_upload_bytes: int
    max_concurrent_inference: int
    database: str = Field(description="The database's kind (sqlite, postgresql), no URL.")
    vector_search: Literal["pgvector", "memory"] = Field(
        description="Where identify searches: in PostgreSQL with pgvector, or in each "
        "process's memory."
    )


class GalleryCounts(BaseModel):
    faces: int = Field(description="Faces of the running encoder model.")
    subjects: int
    collections: dict[str, int] = Field(
        description="Faces per collection the key may see (the largest 100 for an admin "
        "key of every collection)."
    )


class PrivacyOut(BaseModel):
    audit_trail: bool
    audit_retention_days: int = Field(description="0: audit events are kept for good.")
    purge_interval_seconds: float
    encryption_at_rest: bool
    schedules: dict[str, CollectionOut] = Field(
        description="Retention and consent of the collections the key may see (those "
        "with a schedule or a consent rule, for an admin key of every collection)."
    )


class AccessOut(BaseModel):
    scopes: list[str]
    collection: str | None = Field(description="The key's collection; null: every one.")


class BuildOut(BaseModel):
    sbom: str | None = Field(
        description="Path of the CycloneDX SBOM of this installation (the image's), or null."
    )
    licenses: str | None = Field(description="Path of its licence list (LICENSES.md), or null.")


class InfoResponse(BaseModel):
    service: Literal["faceverify"]
    version: str
    models: list[InfoModel] = Field(description="Weight files, checked by sha256.")
    encoder: str = Field(description="The encoder model and runtime faces are stored with.")
    model: str = Field(description="The encoder model's registry name.")
    pipeline_version: str
    threshold: float
    calibration: dict[str, Any] = Field(
        description="The calibration file's summary (its fast curve), "
        "calibration_matches_pipeline, and every curve in use under 'curves'."
    )
    calibration_matches_pipeline: bool
    gallery: GalleryCounts
    access: AccessOut = Field(description="What the key that asked may do.")
    privacy: PrivacyOut
    build: BuildOut = Field(description="Where the software inventory is (issue 29).")
    settings: InfoSettings
