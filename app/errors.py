"""Domain errors. The API maps each class to an HTTP status and a stable ``code`` in one
table (app/api/problems.py); nothing here knows HTTP.

    FaceVerifyError
    ├── InputError                 the request itself is unusable
    │   ├── InvalidImage           bytes of a known format that do not decode (truncated...)
    │   ├── UnsupportedMediaType   bytes that are no image format we read
    │   ├── ImageTooLarge          more pixels than the configured cap
    │   ├── InvalidBase64          a JSON image string that is not base64
    │   ├── UnsupportedContentType a request body that is neither multipart nor JSON
    │   ├── RequestTooLarge        a request body over the configured byte cap
    │   ├── RequestBodyTimeout     a request body arriving slower than the minimum rate
    │   ├── ClientDisconnected     the client went away while sending its request
    │   ├── InvalidRequest         missing/ill-typed fields
    │   │   ├── TooManyImages      more photos in one enrollment than the cap
    │   │   ├── IdempotencyKeyReused  an Idempotency-Key sent again with another request
    │   │   └── RateNotStricter    a request's fpir/max_fmr looser than its collection's
    │   ├── FaceMismatch           a new face too far from the subject's other faces
    │   └── ConsentRequired        enrollment in a collection that requires consent, without it
    ├── FaceError                  the image decodes but its faces do not fit the use
    │   ├── NoFace
    │   ├── MultipleFaces          carries the boxes found
    │   ├── FaceTooSmall           under the minimum box side or distance between the eyes
    │   ├── FaceNotEnrollable      enrollment face past a hard limit (pose, sharpness, light)
    │   └── FaceQualityTooLow      enrollment photo under the quality floor, with reasons
    ├── NotFoundError
    │   ├── CollectionNotFound
    │   ├── SubjectNotFound
    │   ├── FaceNotFound
    │   ├── KeyNotFound
    │   └── SubjectExpired         past its retention or expiry: never matches, purged soon
    ├── SubjectHasNoFaces          verify against a subject whose faces were all deleted
    ├── SubjectExists              enroll to an existing subject without add=true
    ├── CollectionExists           create a collection whose id is taken
    ├── CollectionProtected        delete the default collection
    ├── RequestCancelled           the request timed out before its work was stored
    ├── Unauthorized               no API key, or an unknown or revoked one
    ├── Forbidden                  a valid key without the scope the endpoint needs
    ├── ServiceBusy                no inference slot within the wait
    │   ├── TooManyRequests        more requests waiting than the queue (or the key's share) holds
    │   │   └── RateLimited        the key's requests per second are used up
    │   ├── DatabaseBusy           another writer held the database past the wait
    │   ├── IndexLoading           identify before the 1:N index has loaded
    │   └── AuditUnavailable       the audit trail could not record the request
    ├── NotReady                   models not loaded or database unreachable (readiness)
    └── ModelFileError             weights missing or with the wrong sha256 (start-up)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from app.geometry import Box


@dataclass(eq=False)
class FaceVerifyError(Exception):
    """Base of every error this service raises on purpose.

    ``detail`` is the human-readable sentence; a subclass declares any further fields as
    typed dataclass fields (keyword-only), and those become members of the problem+json
    body (app/api/problems.py) and of its OpenAPI schema. Nothing travels as ``**kwargs``.
    """

    detail: str

    def __post_init__(self) -> None:
        Exception.__init__(self, self.detail)

    def __str__(self) -> str:
        return self.detail

    @classmethod
    def extra_fields(cls) -> tuple[str, ...]:
        """Names of the fields this error adds to a problem body."""
        return tuple(f.name for f in fields(cls) if f.name != "detail")

    @property
    def extra(self) -> dict[str, Any]:
        """The extra fields that are set (None ones are left out of the body)."""
        values = {name: getattr(self, name) for name in self.extra_fields()}
        return {k: v for k, v in values.items() if v is not None}


class InputError(FaceVerifyError):
    pass


class InvalidImage(InputError):
    pass


class UnsupportedMediaType(InputError):
    pass


@dataclass(eq=False, kw_only=True)
class ImageTooLarge(InputError):
    max_pixels: int
    width: int | None = None
    height: int | None = None


@dataclass(eq=False, kw_only=True)
class InvalidBase64(InputError):
    field: str


class UnsupportedContentType(InputError):
    pass


@dataclass(eq=False, kw_only=True)
class RequestTooLarge(InputError):
    max_bytes: int


@dataclass(eq=False, kw_only=True)
class RequestBodyTimeout(InputError):
    min_bytes_per_second: int


class ClientDisconnected(InputError):
    pass


@dataclass(eq=False, kw_only=True)
class InvalidRequest(InputError):
    # Pydantic-style field errors without the input values: {loc, msg, type}.
    errors: list[dict[str, Any]] | None = None


@dataclass(eq=False, kw_only=True)
class TooManyImages(InvalidRequest):
    max_images: int


class IdempotencyKeyReused(InvalidRequest):
    pass


@dataclass(eq=False, kw_only=True)
class RateNotStricter(InvalidRequest):
    """A request may only tighten its collection's decision rate (issue 36): an
    ``fpir`` or ``max_fmr`` above the collection's is refused, not quietly capped."""

    field: str
    requested: float
    allowed: float


@dataclass(eq=False, kw_only=True)
class FaceMismatch(InputError):
    image_index: int
    distance: float
    threshold: float


@dataclass(eq=False, kw_only=True)
class ConsentRequired(InputError):
    """The collection requires consent (issue 27) and the enrollment carries none."""

    collection: str

    @classmethod
    def for_collection(cls, collection: str) -> ConsentRequired:
        return cls(
            f"Collection {collection!r} requires consent: send consent with the document "
            "id or version the person agreed to and when they did (consent.reference, "
            "consent.given_at).",
            collection=collection,
        )


class FaceError(FaceVerifyError):
    pass


@dataclass(eq=False, kw_only=True)
class NoFace(FaceError):
    # Which photo of a request with several; None when there is one.
    image_index: int | None = None


@dataclass(eq=False, kw_only=True)
class MultipleFaces(FaceError):
    boxes: list[Box]
    image_index: int | None = None


@dataclass(eq=False, kw_only=True)
class FaceTooSmall(FaceError):
    box: Box
    min_face_side: int
    image_index: int | None = None
    # Pixels between the eye centres, and the minimum (None: refused by min_face_side).
    inter_eye_px: float | None = None
    min_inter_eye_px: float | None = None


@dataclass(eq=False, kw_only=True)
class FaceNotEnrollable(FaceError):
    # Stable codes of the hard limits failed (app/face/quality.py CHECKS), and what to do.
    reasons: list[str]
    advice: list[str]
    image_index: int | None = None


@dataclass(eq=False, kw_only=True)
class FaceQualityTooLow(FaceError):
    quality: float
    min_quality: float
    # Stable reason codes, worst first, and what to do about each (app/face/quality.py).
    reasons: list[str]
    advice: list[str]
    image_index: int | None = None


class NotFoundError(FaceVerifyError):
    pass


@dataclass(eq=False, kw_only=True)
class SubjectNotFound(NotFoundError):
    subject_id: str

    @classmethod
    def for_id(cls, subject_id: str) -> SubjectNotFound:
        return cls(f"No subject with id {subject_id!r}.", subject_id=subject_id)


@dataclass(eq=False, kw_only=True)
class CollectionNotFound(NotFoundError):
    collection: str

    @classmethod
    def for_id(cls, collection: str) -> CollectionNotFound:
        return cls(f"No collection with id {collection!r}.", collection=collection)


@dataclass(eq=False, kw_only=True)
class FaceNotFound(NotFoundError):
    face_id: str
    subject_id: str | None = None


@dataclass(eq=False, kw_only=True)
class KeyNotFound(NotFoundError):
    key_id: str


@dataclass(eq=False, kw_only=True)
class SubjectExpired(NotFoundError):
    """Past its expiry or its collection's retention: it never matches again, and the
    next purge deletes it."""

    subject_id: str
    due_at: str

    @classmethod
    def for_subject(cls, subject_id: str, due: datetime) -> SubjectExpired:
        return cls(
            f"Subject {subject_id!r} is past its retention (due {due.isoformat()}): it no "
            "longer matches and is deleted at the next purge.",
            subject_id=subject_id,
            due_at=due.isoformat(),
        )


@dataclass(eq=False, kw_only=True)
class SubjectHasNoFaces(FaceVerifyError):
    subject_id: str


@dataclass(eq=False, kw_only=True)
class SubjectExists(FaceVerifyError):
    subject_id: str


@dataclass(eq=False, kw_only=True)
class CollectionExists(FaceVerifyError):
    collection: str


@dataclass(eq=False, kw_only=True)
class CollectionProtected(FaceVerifyError):
    """The default collection cannot be deleted (unbound requests and the keys of
    databases made before collections use it)."""

    collection: str


@dataclass(eq=False, kw_only=True)
class RequestCancelled(FaceVerifyError):
    retry_after: int = 1


class Unauthorized(FaceVerifyError):
    pass


@dataclass(eq=False, kw_only=True)
class Forbidden(FaceVerifyError):
    required_scope: str | None = None


@dataclass(eq=False, kw_only=True)
class ServiceBusy(FaceVerifyError):
    # Seconds; also sent as the Retry-After header.
    retry_after: int = 1


class TooManyRequests(ServiceBusy):
    pass


class RateLimited(TooManyRequests):
    """The key's own rate limit (FACEVERIFY_RATE_LIMIT_PER_SECOND) is used up."""


class DatabaseBusy(ServiceBusy):
    """Another writer (a bulk import, say) held the database's write lock past the wait."""


class IndexLoading(ServiceBusy):
    """Identify right after start-up, while the 1:N index is still being filled."""


class AuditUnavailable(ServiceBusy):
    """The audit trail could not record the request, so it is not answered."""


class NotReady(FaceVerifyError):
    pass


class ModelFileError(FaceVerifyError):
    pass


# Each domain error's stable machine-readable code: the problem+json ``code`` of the API
# (app/api/problems.py gives each its HTTP status) and the refusal code of the bulk
# enrollment's report. Every subclass of FaceVerifyError has its own line.
ERROR_CODES: dict[type[FaceVerifyError], str] = {
    InvalidImage: "invalid_image",
    InvalidBase64: "invalid_base64",
    UnsupportedMediaType: "unsupported_media_type",
    UnsupportedContentType: "unsupported_content_type",
    ImageTooLarge: "image_too_large",
    RequestTooLarge: "request_too_large",
    RequestBodyTimeout: "request_body_timeout",
    # nginx's 499: nobody reads the answer; logged as info, not as an error.
    ClientDisconnected: "client_disconnected",
    TooManyImages: "too_many_images",
    IdempotencyKeyReused: "idempotency_key_reused",
    RateNotStricter: "rate_not_stricter",
    FaceMismatch: "face_mismatch",
    InvalidRequest: "validation_error",
    InputError: "bad_request",
    NoFace: "no_face",
    MultipleFaces: "multiple_faces",
    FaceTooSmall: "face_too_small",
    FaceNotEnrollable: "face_not_enrollable",
    FaceQualityTooLow: "face_quality_too_low",
    FaceError: "face_error",
    SubjectNotFound: "subject_not_found",
    CollectionNotFound: "collection_not_found",
    FaceNotFound: "face_not_found",
    KeyNotFound: "key_not_found",
    SubjectExpired: "subject_expired",
    ConsentRequired: "consent_required",
    AuditUnavailable: "audit_unavailable",
    NotFoundError: "not_found",
    SubjectHasNoFaces: "subject_has_no_faces",
    SubjectExists: "subject_exists",
    CollectionExists: "collection_exists",
    CollectionProtected: "collection_protected",
    RequestCancelled: "request_timeout",
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
    TooManyRequests: "too_many_requests",
    RateLimited: "rate_limited",
    DatabaseBusy: "database_busy",
    ServiceBusy: "service_busy",
    IndexLoading: "index_loading",
    NotReady: "not_ready",
    ModelFileError: "model_file_error",
    FaceVerifyError: "internal_error",
}


def error_code(exc: FaceVerifyError) -> str:
    """The stable code of ``exc`` (internal_error for an error with no line)."""
    return ERROR_CODES.get(type(exc), "internal_error")
