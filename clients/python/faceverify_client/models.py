"""Response models of the faceverify API, generated from its OpenAPI schema by
tools/generate_models.py: do not edit by hand (the tests regenerate it and fail
when it differs from the server's schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # A newer server may add fields: they are kept, not refused.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AccessOut(_Model):
    scopes: list[str]
    collection: str | None


class AuditEventOut(_Model):
    id: int | None
    position: int | None
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


class AuditPage(_Model):
    items: list[AuditEventOut]
    next_after: int | str | None


class Box(_Model):
    """Pixel box in the decoded (upright) photo: left, top inclusive; right, bottom
    exclusive. A stdlib dataclass, so pydantic puts it in responses as it is."""

    left: int
    top: int
    right: int
    bottom: int


class BuildOut(_Model):
    sbom: str | None
    licenses: str | None


class CalibrationRef(_Model):
    version: str
    provisional: bool
    curve: Literal["fast", "mixed", "thorough"]
    small_probe: bool | None = None


class CandidateOut(_Model):
    """A subject near the photo, with 1:1 figures: how this one comparison would be judged
    on its own. Whether the search names someone is open_set's question."""

    subject_id: str
    face_id: str
    distance: float
    score: float
    match: bool
    curve: Literal["fast", "mixed", "thorough"]
    threshold: float


class CollectionOut(_Model):
    collection_id: str
    created_at: datetime
    subjects: int
    faces: int
    retention_days: int | None = None
    consent_required: bool | None = None
    identify_fpir: float | None = None
    verify_max_fmr: float | None = None


class CompareResponse(_Model):
    match: bool
    score: float
    distance: float
    threshold: float
    fmr: FmrOut | None
    max_fmr: float | None = None
    mode: Literal["fast", "thorough"]
    probe_a: ProbeOut
    probe_b: ProbeOut
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


class DeleteCollectionResponse(_Model):
    collection_id: str
    created_at: datetime
    subjects: int
    faces: int
    retention_days: int | None = None
    consent_required: bool | None = None
    identify_fpir: float | None = None
    verify_max_fmr: float | None = None
    deleted: bool
    keys_revoked: bool


class DeleteFaceResponse(_Model):
    subject_id: str
    face_id: str
    deleted: bool
    face_count: int


class DeleteSubjectResponse(_Model):
    subject_id: str
    deleted: bool
    faces_deleted: int


class DetectResponse(_Model):
    faces: list[DetectedFaceOut]
    model: ModelOut
    timing: TimingOut


class DetectedFaceOut(_Model):
    box: Box
    landmarks: list[tuple[float, float]]
    detector_score: float
    detector: str
    pose: PoseOut
    inter_eye_px: float
    box_px: int
    sharpness: float
    brightness: float
    contrast: float
    face_likeness: float
    quality: QualityOut
    checks: list[str] | None = None


class EnrollResponse(_Model):
    subject: SubjectOut
    faces: list[FaceOut]
    face_count: int
    model: ModelOut
    timing: TimingOut


class FaceExport(_Model):
    face_id: str
    box: Box
    detector_score: float
    encoder: str
    pipeline_version: str
    template: str
    created_at: datetime
    embedding: list[float] | None = None


class FaceOut(_Model):
    face_id: str
    box: Box
    detector_score: float
    encoder: str
    pipeline_version: str
    template: str
    created_at: datetime


class FmrOut(_Model):
    rate: float
    impostor_pairs_at_or_below: int
    impostor_pairs: int
    one_in: int | None


class GalleryCounts(_Model):
    faces: int
    subjects: int
    collections: dict[str, int]


class HealthResponse(_Model):
    status: Literal["ok"]


class IdentifyResponse(_Model):
    best: CandidateOut | None
    candidates: list[CandidateOut]
    open_set: OpenSetOut | None
    threshold: float
    gallery_size: int
    mode: Literal["fast", "thorough"] | None
    probe: ProbeOut | None
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


class InfoModel(_Model):
    name: str
    file: str
    sha256: str
    licence: str


class InfoResponse(_Model):
    service: Literal["faceverify"]
    version: str
    models: list[InfoModel]
    encoder: str
    model: str
    pipeline_version: str
    threshold: float
    calibration: dict[str, Any]
    calibration_matches_pipeline: bool
    gallery: GalleryCounts
    access: AccessOut
    privacy: PrivacyOut
    build: BuildOut
    settings: InfoSettings


class InfoSettings(_Model):
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
    database: str
    vector_search: Literal["pgvector", "memory"]


class KeyCreated(_Model):
    key_id: str
    name: str
    prefix: str
    scopes: list[str]
    collection: str | None
    created_at: datetime
    revoked_at: datetime | None
    key: str


class KeyOut(_Model):
    key_id: str
    name: str
    prefix: str
    scopes: list[str]
    collection: str | None
    created_at: datetime
    revoked_at: datetime | None


class ModelOut(_Model):
    encoder: str
    pipeline: str


class OpenSetOut(_Model):
    """The open-set decision on the nearest subject: is it the person, or is the person not
    enrolled? (docs/ACCURACY.md, 'Open-set identification')"""

    named: bool
    probability: float | None
    prior: float
    fpir: float
    subjects: int
    supported: bool
    reason: str | None
    rule: str
    curve: Literal["fast", "mixed", "thorough"]


class PoseOut(_Model):
    roll: float
    yaw: float
    pitch: float
    estimated: list[str] | None = None


class PrivacyOut(_Model):
    audit_trail: bool
    audit_retention_days: int
    purge_interval_seconds: float
    encryption_at_rest: bool
    schedules: dict[str, CollectionOut]


class ProbeOut(_Model):
    box: Box
    detector_score: float
    landmarks: list[tuple[float, float]]
    faces_detected: int
    detector: str
    multiple_faces: bool
    quality: QualityOut
    pose: PoseOut | None = None
    inter_eye_px: float | None = None
    checks: list[str] | None = None


class QualityOut(_Model):
    score: float
    low: bool
    reasons: list[str]
    advice: list[str]


class ReadyResponse(_Model):
    status: Literal["ready"]
    identify: Literal["ready", "loading"]


class SubjectDetailOut(_Model):
    subject_id: str
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    face_count: int
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    consent: dict[str, Any] | None = None
    faces: list[FaceOut]


class SubjectExport(_Model):
    """Everything the service holds about one person (a subject access request)."""

    collection: CollectionOut
    subject: SubjectOut
    due_at: datetime | None
    faces: list[FaceExport]
    audit_events: list[AuditEventOut]
    exported_at: datetime


class SubjectOut(_Model):
    subject_id: str
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    face_count: int
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    consent: dict[str, Any] | None = None


class SubjectPage(_Model):
    items: list[SubjectOut]
    total: int
    offset: int
    limit: int


class TimingOut(_Model):
    decode_ms: float
    detect_ms: float
    align_ms: float
    encode_ms: float
    search_ms: float
    quality_ms: float
    total_ms: float


class VerifyResponse(_Model):
    match: bool
    score: float
    distance: float
    threshold: float
    fmr: FmrOut | None
    max_fmr: float | None = None
    subject_id: str
    face_id: str
    mode: Literal["fast", "thorough"]
    probe: ProbeOut
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


AccessOut.model_rebuild()
AuditEventOut.model_rebuild()
AuditPage.model_rebuild()
Box.model_rebuild()
BuildOut.model_rebuild()
CalibrationRef.model_rebuild()
CandidateOut.model_rebuild()
CollectionOut.model_rebuild()
CompareResponse.model_rebuild()
DeleteCollectionResponse.model_rebuild()
DeleteFaceResponse.model_rebuild()
DeleteSubjectResponse.model_rebuild()
DetectResponse.model_rebuild()
DetectedFaceOut.model_rebuild()
EnrollResponse.model_rebuild()
FaceExport.model_rebuild()
FaceOut.model_rebuild()
FmrOut.model_rebuild()
GalleryCounts.model_rebuild()
HealthResponse.model_rebuild()
IdentifyResponse.model_rebuild()
InfoModel.model_rebuild()
InfoResponse.model_rebuild()
InfoSettings.model_rebuild()
KeyCreated.model_rebuild()
KeyOut.model_rebuild()
ModelOut.model_rebuild()
OpenSetOut.model_rebuild()
PoseOut.model_rebuild()
PrivacyOut.model_rebuild()
ProbeOut.model_rebuild()
QualityOut.model_rebuild()
ReadyResponse.model_rebuild()
SubjectDetailOut.model_rebuild()
SubjectExport.model_rebuild()
SubjectOut.model_rebuild()
SubjectPage.model_rebuild()
TimingOut.model_rebuild()
VerifyResponse.model_rebuild()
