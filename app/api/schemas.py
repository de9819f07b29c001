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
from app.privacy.rules import consent_not_ahead

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
    given_at: Annotated[AwareTime, AfterValidator(consent_not_ahead)] = Field(
        description="When the person gave it (ISO 8601; not in the future)."
    )


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
    max_fmr: Annotated[float, Field(ge=1e-7, le=0.1)] | None = Field(
        None,
        description="Match only at this false match rate or lower (one comparison of two "
        "different people; e.g. 1e-4 for a stricter check than the default threshold's "
        "~0.8%); no looser than the collection's verify_max_fmr (422 rate_not_stricter). "
        "What it costs in false rejections: docs/ACCURACY.md.",
    )


class IdentifyRequest(_Form):
    collection: CollectionField = None
    face_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None,
        description="Search with this stored face instead of an image (the face itself "
        "is left out of the answer); send no image then.",
    )
    top_k: Annotated[int, Field(ge=1, le=100)] | None = None
    prior: Prior | None = Field(
        None,
        description="How likely the person searched for is enrolled at all, to re-weight "
        "open_set.probability (default 0.5).",
    )
    mode: Mode = None
    fpir: Annotated[float, Field(ge=1e-4, le=0.5)] | None = Field(
        None,
        description="Name a subject (best) only at this false-positive identification rate "
        "or lower: the share of searches for people who are not enrolled that name "
        "someone. No looser than the collection's identify_fpir (422 rate_not_stricter).",
    )


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
    detector: str = Field(
        description="hog, or the fallback that found the face when HOG found nothing "
        "(yunet by default, cnn if FACEVERIFY_DETECT_FALLBACK=cnn)."
    )
    multiple_faces: bool
    quality: QualityOut
    # Defaults: a client reading a server from before issue 39 gets None / [] here.
    pose: PoseOut | None = None
    inter_eye_px: float | None = Field(None, description="Pixels between the eye centres.")
    checks: list[str] = Field(
        default_factory=list,
        description="Stable codes of the hard limits the face fails, as AWS Rekognition "
        "filters faces: face_too_small (under FACEVERIFY_MIN_INTER_EYE px between the "
        "eyes), extreme_pose (|yaw| > 45 or |pitch| > 30 degrees), low_sharpness, "
        "low_brightness. /enroll refuses such a face; a probe is compared all the same "
        "and its answer is less sure (docs/QUALITY.md).",
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
    checks: list[str] = Field(
        default_factory=list,
        description="Stable codes of the hard limits the face fails (as in a probe's "
        "checks): /enroll would refuse it.",
    )


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
    small_probe: bool = Field(
        False,
        description="The probe's face has fewer px between the eyes than the calibration's "
        "small-probe limit (16), and was scored by its small-probe refit: the percent is "
        "less sure for the same distance (docs/ACCURACY.md, faces by size and pose).",
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
    max_fmr: float | None = Field(
        None,
        description="The false match rate the threshold was held to (the request's or the "
        "collection's max_fmr; null: the threshold's own).",
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
    """A subject near the photo, with 1:1 figures: how this one comparison would be
    judged on its own. Whether the search names someone is open_set's question."""

    subject_id: str
    face_id: str
    distance: float = Field(description="1:1: Euclidean distance to the subject's nearest face.")
    score: float = Field(
        description="1:1: the match percent of this one comparison (as /verify gives it). "
        "Not the chance that the search found the person: see open_set.probability."
    )
    match: bool = Field(description="1:1: distance <= threshold.")
    curve: Literal["fast", "mixed", "thorough"] = Field(
        description="The calibration curve that scored this candidate."
    )
    threshold: float = Field(description="Its curve's threshold (match: distance <= it).")


class OpenSetOut(BaseModel):
    """The open-set decision on the nearest subject: is it the person, or is the person
    not enrolled? (docs/ACCURACY.md, "Open-set identification")"""

    named: bool = Field(description="The nearest subject is best.")
    probability: Annotated[float, AfterValidator(lambda p: round(p, 4))] | None = Field(
        description="P(the nearest subject is the person in the photo), 0-1, given this "
        "search (its distances and the collection's size) at `prior` that the person is "
        "enrolled at all; null from the nearest-distance fallback rule."
    )
    prior: float = Field(description="The prior the probability is stated at.")
    fpir: float = Field(
        description="The false-positive identification rate the decision was made at: the "
        "share of searches for people who are not enrolled that would name someone."
    )
    subjects: int = Field(description="N: the subjects searched.")
    supported: bool = Field(
        description="false: the calibration data cannot support this fpir at N subjects "
        "(the collection is past the size its impostor tail reaches), so nobody is named."
    )
    reason: str | None = Field(
        description="Why the nearest was not named: below_open_set_threshold, "
        "outside_1to1_threshold or fpir_unsupported."
    )
    rule: str = Field(description="The open-set rule's version (from the calibration file).")
    curve: Literal["fast", "mixed", "thorough"] = Field(
        description="The calibration curve whose rule decided."
    )


class IdentifyResponse(BaseModel):
    best: CandidateOut | None = Field(
        description="The nearest subject, when the open-set rule names it: null means "
        "unknown (the person is likely not enrolled)."
    )
    candidates: list[CandidateOut]
    open_set: OpenSetOut | None = Field(
        description="The decision on the nearest subject; null when the collection is empty."
    )
    threshold: float = Field(description="The nearest candidate's curve's 1:1 threshold.")
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
