"""Errors as exceptions: one base class, one subclass per problem ``code`` the server
answers (RFC 9457 problem+json), each with that code's typed fields and the request id.

The table is checked against the server's own (tests/test_schema.py): a code or a field
on one side only fails the test."""

from __future__ import annotations

from typing import Any, ClassVar

from faceverify_client.models import Box


class FaceVerifyError(Exception):
    """Any error answer of the service (or a failure to reach it: :class:`ConnectionFailed`)."""

    code: ClassVar[str] = "internal_error"
    #: The fields this code carries besides status, code and detail.
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, detail: str, *, status: int = 0, request_id: str | None = None, body: Any = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.request_id = request_id
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.detail}{where}"


class ConnectionFailed(FaceVerifyError):
    """The server could not be reached, or the connection broke, after every retry."""

    code = "connection_failed"


class _Busy(FaceVerifyError):
    """A refusal to retry later; ``retry_after`` in seconds (the Retry-After header)."""

    fields: ClassVar[tuple[str, ...]] = ("retry_after",)
    retry_after: int | None


class InvalidImage(FaceVerifyError):
    code = "invalid_image"


class InvalidBase64(FaceVerifyError):
    code, fields = "invalid_base64", ("field",)
    field: str | None


class UnsupportedMediaType(FaceVerifyError):
    code = "unsupported_media_type"


class UnsupportedContentType(FaceVerifyError):
    code = "unsupported_content_type"


class ImageTooLarge(FaceVerifyError):
    code = "image_too_large"
    fields: ClassVar[tuple[str, ...]] = ("max_pixels", "width", "height")
    max_pixels: int | None
    width: int | None
    height: int | None


class RequestTooLarge(FaceVerifyError):
    code = "request_too_large"
    fields: ClassVar[tuple[str, ...]] = ("max_bytes",)
    max_bytes: int | None


class RequestBodyTimeout(FaceVerifyError):
    code = "request_body_timeout"
    fields: ClassVar[tuple[str, ...]] = ("min_bytes_per_second",)
    min_bytes_per_second: int | None


class ClientDisconnected(FaceVerifyError):
    code = "client_disconnected"


class ValidationFailed(FaceVerifyError):
    code = "validation_error"
    fields: ClassVar[tuple[str, ...]] = ("errors",)
    errors: list[dict[str, Any]] | None


class TooManyImages(ValidationFailed):
    code = "too_many_images"
    fields: ClassVar[tuple[str, ...]] = ("errors", "max_images")
    max_images: int | None


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"


class RateNotStricter(ValidationFailed):
    """An fpir or max_fmr looser than the collection's."""

    code = "rate_not_stricter"
    fields: ClassVar[tuple[str, ...]] = ("errors", "field", "requested", "allowed")
    field: str | None
    requested: float | None
    allowed: float | None


class FaceMismatch(FaceVerifyError):
    code = "face_mismatch"
    fields: ClassVar[tuple[str, ...]] = ("image_index", "distance", "threshold")
    image_index: int | None
    distance: float | None
    threshold: float | None


class BadRequest(FaceVerifyError):
    code = "bad_request"


class FaceError(FaceVerifyError):
    code = "face_error"


class NoFace(FaceError):
    code = "no_face"
    fields: ClassVar[tuple[str, ...]] = ("image_index",)
    image_index: int | None


class MultipleFaces(FaceError):
    code = "multiple_faces"
    fields: ClassVar[tuple[str, ...]] = ("boxes", "image_index")
    boxes: list[Box] | None
    image_index: int | None


class FaceTooSmall(FaceError):
    code = "face_too_small"
    fields: ClassVar[tuple[str, ...]] = (
        "box",
        "min_face_side",
        "image_index",
        "inter_eye_px",
        "min_inter_eye_px",
    )
    box: Box | None
    min_face_side: int | None
    image_index: int | None
    inter_eye_px: float | None
    min_inter_eye_px: float | None


class FaceNotEnrollable(FaceError):
    """The face is past a hard limit (``reasons``: extreme_pose, low_sharpness,
    low_brightness)."""

    code = "face_not_enrollable"
    fields: ClassVar[tuple[str, ...]] = ("reasons", "advice", "image_index")
    reasons: list[str] | None
    advice: list[str] | None
    image_index: int | None


class FaceQualityTooLow(FaceError):
    code = "face_quality_too_low"
    fields: ClassVar[tuple[str, ...]] = (
        "quality",
        "min_quality",
        "reasons",
        "advice",
        "image_index",
    )
    quality: float | None
    min_quality: float | None
    reasons: list[str] | None
    advice: list[str] | None
    image_index: int | None


class NotFound(FaceVerifyError):
    code = "not_found"


class SubjectNotFound(NotFound):
    code = "subject_not_found"
    fields: ClassVar[tuple[str, ...]] = ("subject_id",)
    subject_id: str | None


class CollectionNotFound(NotFound):
    code = "collection_not_found"
    fields: ClassVar[tuple[str, ...]] = ("collection",)
    collection: str | None


class FaceNotFound(NotFound):
    code = "face_not_found"
    fields: ClassVar[tuple[str, ...]] = ("face_id", "subject_id")
    face_id: str | None
    subject_id: str | None


class KeyNotFound(NotFound):
    code = "key_not_found"
    fields: ClassVar[tuple[str, ...]] = ("key_id",)
    key_id: str | None


class SubjectExpired(NotFound):
    code = "subject_expired"
    fields: ClassVar[tuple[str, ...]] = ("subject_id", "due_at")
    subject_id: str | None
    due_at: str | None


class ConsentRequired(FaceVerifyError):
    code = "consent_required"
    fields: ClassVar[tuple[str, ...]] = ("collection",)
    collection: str | None


class SubjectHasNoFaces(FaceVerifyError):
    code = "subject_has_no_faces"
    fields: ClassVar[tuple[str, ...]] = ("subject_id",)
    subject_id: str | None


class SubjectExists(FaceVerifyError):
    code = "subject_exists"
    fields: ClassVar[tuple[str, ...]] = ("subject_id",)
    subject_id: str | None


class CollectionExists(FaceVerifyError):
    code = "collection_exists"
    fields: ClassVar[tuple[str, ...]] = ("collection",)
    collection: str | None


class CollectionProtected(FaceVerifyError):
    code = "collection_protected"
    fields: ClassVar[tuple[str, ...]] = ("collection",)
    collection: str | None


class Unauthorized(FaceVerifyError):
    code = "unauthorized"


class Forbidden(FaceVerifyError):
    code = "forbidden"
    fields: ClassVar[tuple[str, ...]] = ("required_scope",)
    required_scope: str | None


class ServiceBusy(_Busy):
    code = "service_busy"


class RequestTimeout(_Busy):
    code = "request_timeout"


class TooManyRequests(ServiceBusy):
    code = "too_many_requests"


class RateLimited(TooManyRequests):
    code = "rate_limited"


class DatabaseBusy(ServiceBusy):
    code = "database_busy"


class IndexLoading(ServiceBusy):
    code = "index_loading"


class AuditUnavailable(ServiceBusy):
    code = "audit_unavailable"


class NotReady(FaceVerifyError):
    code = "not_ready"


class ModelFileError(FaceVerifyError):
    code = "model_file_error"


class InternalError(FaceVerifyError):
    code = "internal_error"


class MethodNotAllowed(FaceVerifyError):
    code = "method_not_allowed"


class HttpError(FaceVerifyError):
    code = "http_error"


#: Every code the client knows, to its class.
BY_CODE: dict[str, type[FaceVerifyError]] = {
    cls.code: cls
    for cls in [
        InvalidImage, InvalidBase64, UnsupportedMediaType, UnsupportedContentType,
        ImageTooLarge, RequestTooLarge, RequestBodyTimeout, ClientDisconnected,
        ValidationFailed, TooManyImages, IdempotencyKeyReused, RateNotStricter, FaceMismatch,
        BadRequest,
        FaceError, NoFace, MultipleFaces, FaceTooSmall, FaceNotEnrollable, FaceQualityTooLow,
        NotFound,
        SubjectNotFound, CollectionNotFound, FaceNotFound, KeyNotFound, SubjectExpired,
        ConsentRequired, SubjectHasNoFaces, SubjectExists, CollectionExists,
        CollectionProtected, Unauthorized, Forbidden, ServiceBusy, RequestTimeout,
        TooManyRequests, RateLimited, DatabaseBusy, IndexLoading, AuditUnavailable,
        NotReady, ModelFileError, InternalError, MethodNotAllowed, HttpError,
    ]
}  # fmt: skip


def error_from(status: int, body: Any, request_id: str | None) -> FaceVerifyError:
    """The exception for a problem+json answer (an unknown code: its nearest class by
    status, so a newer server's code still raises something sensible)."""
    data = body if isinstance(body, dict) else {}
    code = data.get("code")
    cls = BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = {401: Unauthorized, 403: Forbidden, 404: NotFound, 429: TooManyRequests}.get(
            status, ServiceBusy if status == 503 else FaceVerifyError
        )
    detail = str(data.get("detail") or f"HTTP {status}")
    error = cls(detail, status=status, request_id=request_id, body=data)
    for name in cls.fields:
        value = data.get(name)
        if name == "box" and isinstance(value, dict):
            value = Box.model_validate(value)
        elif name == "boxes" and isinstance(value, list):
            value = [Box.model_validate(b) for b in value]
        setattr(error, name, value)
    return error
