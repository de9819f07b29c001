"""Request and response schemas, named for their direction. Storage rows live in
app/gallery/models.py; these are what crosses HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from app.api.inputs import json_depth, parse_json
from app.errors import InvalidRequest
from app.gallery.ids import NAME_MAX, nfkc, not_only_dots, one_script
from app.gallery.models import COLLECTION_ID_PATTERN, SUBJECT_ID_MAX, SUBJECT_ID_PATTERN
from app.geometry import Box

# Metadata is a small record about a person, not a document.
METADATA_MAX_DEPTH = 8


SubjectId = Annotated[
    str,
    BeforeValidator(nfkc),
    StringConstraints(min_length=1, max_length=SUBJECT_ID_MAX, pattern=SUBJECT_ID_PATTERN),
    AfterValidator(not_only_dots),
    AfterValidator(one_script),
]
Prior = Annotated[float, Field(gt=0, lt=1)]
Mode = Annotated[
    Literal["fast", "thorough"] | None,
    Field(
        description="How the photo is embedded. fast: its aligned chip (and the mirror "
        "near the threshold); thorough: the enrollment template's views, more accurate at "
        "several times the encoder's cost. Default: the server's FACEVERIFY_PROBE_MODE."
    ),
]
CollectionId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=COLLECTION_ID_PATTERN)
]
CollectionField = Annotated[
    CollectionId | None,
    Field(
        description="The collection to act on, for admin keys not bound to one (default "
        "'default'); a bound key acts on its own. Also accepted as a query parameter."
    ),
]


class _Form(BaseModel):
    # Multipart sends every field as text; JSON sends real types. Both validate here.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def to_utc(value: datetime) -> datetime:
    """The time in UTC (the store keeps UTC; SQLite drops an offset without converting);
    one without an offset is taken as UTC. OverflowError past the calendar's ends."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _aware_utc(value: datetime) -> datetime:
    try:
        return to_utc(value)
    except OverflowError as exc:  # 0001-01-01 at +14:00 is before the calendar
        raise ValueError("the time is outside the calendar once converted to UTC") from exc


AwareTime = Annotated[datetime, AfterValidator(_aware_utc)]


class ConsentIn(BaseModel):
    """The person's consent as the caller records it (issue 27; BIPA's written release)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    reference: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Your record of it: a document id, a form version, a signature id.",
    )
    given_at: AwareTime = Field(description="When the person gave it (ISO 8601).")


class EnrollRequest(_Form):
    subject_id: SubjectId
    collection: CollectionField = None
    name: Annotated[str, StringConstraints(max_length=NAME_MAX)] | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="Any JSON object (in multipart: a JSON string)."
    )
    face: Literal["single", "largest"] = Field(
        "single",
        description="single: refuse photos with several faces; largest: use the largest face.",
    )
    add: bool = Field(
        False,
        description="false: create a new subject (409 subject_exists if it exists); true: "
        "add faces to an existing one (404 if it does not exist).",
    )
    force: bool = Field(
        False,
        description="Store faces that do not match the subject's other faces (admin keys only).",
    )
    expires_at: AwareTime | None = Field(
        None,
        description="Delete the subject at this time (ISO 8601, in the future), whatever "
        "the collection's schedule; it never matches after it.",
    )
    consent: ConsentIn | None = Field(
        None,
        description="The person's consent (in multipart: a JSON string); required for a "
        "new subject when the collection says so (422 consent_required).",
    )

    @field_validator("consent", mode="before")
    @classmethod
    def _consent_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_json(value, "consent")
            except InvalidRequest as exc:
                raise ValueError(exc.detail) from exc
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_json(value, "metadata")
            except InvalidRequest as exc:
                raise ValueError(exc.detail) from exc
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if json_depth(value) > METADATA_MAX_DEPTH:
            raise ValueError(f"metadata may nest at most {METADATA_MAX_DEPTH} levels deep")
        try:
            text = json.dumps(value, allow_nan=False)
        except ValueError as exc:  # NaN or Infinity: not JSON (issue 9)
            raise ValueError("metadata must be valid JSON (no NaN or Infinity)") from exc
        if len(text) > 16_384:
            raise ValueError("metadata must be at most 16 KiB of JSON")
        return value


class VerifyRequest(_Form):
    subject_id: SubjectId
    collection: CollectionField = None
    prior: Prior | None = Field(
        None, description="Your genuine-attempt rate, to re-weight the percent (default 0.5)."
    )
    mode: Mode = None


class IdentifyRequest(_Form):
    collection: CollectionField = None
    face_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None,
        description="Search with this stored face instead of an image (the face itself "
        "is left out of the answer); send no image then.",
    )
    top_k: Annotated[int, Field(ge=1, le=100)] | None = None
    prior: Prior | None = None
    mode: Mode = None


class DetectRequest(_Form):
    """POST /detect: the photo alone (field ``image``)."""


class CompareRequest(_Form):
    # Two photos, nothing stored: the collection is only checked (a key may name its own).
    collection: CollectionField = None
    prior: Prior | None = None
    mode: Mode = None


# ---- responses ------------------------------------------------------------------------
class QualityOut(BaseModel):
    score: float = Field(
        description="0-100, higher is better: 100 exp(-penalty / 0.1), where the penalty "
        "is the predicted rise (in distance) of this face's distance to other photos of "
        "the same person; a face at 37 is expected 0.1 further than an ideal one "
        "(docs/QUALITY.md)."
    )
    low: bool = Field(
        description="Under FACEVERIFY_ENROLL_MIN_QUALITY: /enroll would refuse it; a "
        "comparison with it is more likely to miss a true match."
    )
    reasons: list[str] = Field(description="Stable codes of what lowered it, worst first.")
    advice: list[str] = Field(description="What to do about each reason, in its order.")


class ProbeOut(BaseModel):
    box: Box
    detector_score: float
    landmarks: list[tuple[float, float]]
    faces_detected: int = Field(
        description="Faces found in the photo; the main one (largest, discounted by its "
        "distance from the centre) is used. Probes are searched quickly first: faces "
        "under ~1/4 of the photo's longest side beside a larger one are not counted "
        "(FACEVERIFY_DETECT_QUICK_SIDE)."
    )
    detector: str = Field(description="hog, or cnn when the HOG detector found nothing.")
    multiple_faces: bool
    quality: QualityOut


class PoseOut(BaseModel):
    roll: float = Field(description="Degrees the eye line is tilted (from the landmarks).")
    yaw: float = Field(
        description="Degrees turned left/right: an estimate from where the nose base lies "
        "between the eyes (five landmarks cannot measure it)."
    )
    pitch: float = Field(
        description="Degrees tilted down (+) or up (-): an estimate from the nose base's "
        "drop below the eyes; cannot tell more than ~20 degrees down."
    )
    estimated: list[str] = Field(
        default=["yaw", "pitch"], description="The angles that are estimates."
    )


class DetectedFaceOut(BaseModel):
    box: Box
    landmarks: list[tuple[float, float]] = Field(
        description="Five points (dlib's order): the eye on the image's right, its outer "
        "then inner corner; the other eye's outer then inner corner; the nose base."
    )
    detector_score: float
    detector: str
    pose: PoseOut
    inter_eye_px: float = Field(description="Pixels between the eye centres.")
    box_px: int = Field(description="The detector box's side in pixels.")
    sharpness: float = Field(
        description="Mean absolute Laplacian of the aligned face over its contrast (x100); "
        "lfw-devtrain's median is 13.5."
    )
    brightness: float = Field(description="Mean grey level of the face, 0-255.")
    contrast: float = Field(description="Grey standard deviation of the face, 0-255.")
    face_likeness: float = Field(
        description="HOG's margin on the aligned face (> 0: clearly a frontal face)."
    )
    quality: QualityOut


class DetectResponse(BaseModel):
    faces: list[DetectedFaceOut] = Field(description="Every face found, most confident first.")
    model: ModelOut
    timing: TimingOut


class ModelOut(BaseModel):
    encoder: str
    pipeline: str


class CalibrationRef(BaseModel):
    version: str
    provisional: bool
    curve: Literal["fast", "mixed", "thorough"] = Field(
        description="The curve that turned the distance into the percent: fast (two fast "
        "embeddings), mixed (an enrollment template and a fast probe, or the reverse), "
        "thorough (two templates). For identify: the best candidate's."
    )


class TimingOut(BaseModel):
    decode_ms: float
    detect_ms: float
    align_ms: float
    encode_ms: float
    search_ms: float
    quality_ms: float
    total_ms: float


class FaceOut(BaseModel):
    face_id: str
    box: Box
    detector_score: float
    encoder: str
    pipeline_version: str
    template: str = Field(
        description="The recipe that made its embedding: fast (the chip and its mirror; "
        "every face enrolled before templates) or viewsN (a template of N views)."
    )
    created_at: datetime


class SubjectOut(BaseModel):
    subject_id: str
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    face_count: int
    last_used_at: datetime | None = Field(
        None, description="Its last enrollment or successful verify (hour resolution)."
    )
    expires_at: datetime | None = Field(None, description="Set at enrollment, if any.")
    consent: dict[str, Any] | None = Field(None, description="The consent it was enrolled with.")


class SubjectDetailOut(SubjectOut):
    faces: list[FaceOut]


class EnrollResponse(BaseModel):
    subject: SubjectOut
    faces: list[FaceOut] = Field(description="The faces this request stored.")
    face_count: int = Field(description="The subject's faces after this request.")
    model: ModelOut
    timing: TimingOut


class FmrOut(BaseModel):
    rate: float = Field(description="Share of impostor pairs at or below this distance.")
    impostor_pairs_at_or_below: int
    impostor_pairs: int = Field(description="Impostor pairs in the calibration data.")
    one_in: int | None = Field(
        description="About 1 in this many strangers would score this close (None: none did)."
    )


class MatchFields(BaseModel):
    match: bool = Field(description="distance <= threshold")
    score: float = Field(description="Match percent, 0.1-99.9, from the calibration.")
    distance: float = Field(description="Euclidean distance between the two embeddings.")
    threshold: float = Field(
        description="FACEVERIFY_THRESHOLD on the fast curve; on the mixed and thorough "
        "curves the distance with the same false match rate (docs/ACCURACY.md)."
    )
    fmr: FmrOut | None = Field(
        description="How often strangers come this close, from the calibration data."
    )


class VerifyResponse(MatchFields):
    subject_id: str
    face_id: str = Field(description="The subject's enrolled face the probe most likely matches.")
    mode: Literal["fast", "thorough"]
    probe: ProbeOut
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


class CompareResponse(MatchFields):
    mode: Literal["fast", "thorough"]
    probe_a: ProbeOut
    probe_b: ProbeOut
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


class CandidateOut(BaseModel):
    subject_id: str
    face_id: str
    distance: float
    score: float
    match: bool
    curve: Literal["fast", "mixed", "thorough"] = Field(
        description="The calibration curve that scored this candidate."
    )
    threshold: float = Field(description="Its curve's threshold (match: distance <= it).")


class IdentifyResponse(BaseModel):
    best: CandidateOut | None = Field(description="The nearest subject, if within threshold.")
    candidates: list[CandidateOut]
    threshold: float = Field(description="The best candidate's curve's threshold.")
    gallery_size: int
    mode: Literal["fast", "thorough"] | None = Field(
        description="How the photo was embedded; null for a face_id search."
    )
    probe: ProbeOut | None = Field(description="The photo's face; null for a face_id search.")
    model: ModelOut
    calibration: CalibrationRef
    timing: TimingOut


class SubjectPage(BaseModel):
    items: list[SubjectOut]
    total: int
    offset: int
    limit: int


class DeleteSubjectResponse(BaseModel):
    subject_id: str
    deleted: bool
    faces_deleted: int


class DeleteFaceResponse(BaseModel):
    subject_id: str
    face_id: str
    deleted: bool
    face_count: int


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    scopes: list[Literal["enroll", "verify", "admin"]] = Field(min_length=1)
    collection: CollectionId | None = Field(
        None,
        description="The collection the key sees and changes (created if new). Default: "
        "'default', or every collection for an admin key.",
    )


class KeyOut(BaseModel):
    key_id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    scopes: list[str]
    collection: str | None = Field(description="Bound collection; null: every collection.")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown in this response only.")


def as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
