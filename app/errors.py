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
    │   │   └── IdempotencyKeyReused  an Idempotency-Key sent again with another request
    │   └── FaceMismatch           a new face too far from the subject's other faces
    ├── FaceError                  the image decodes but its faces do not fit the use
    │   ├── NoFace
    │   ├── MultipleFaces          carries the boxes found
    │   └── FaceTooSmall
    ├── NotFoundError
    │   ├── SubjectNotFound
    │   ├── FaceNotFound
    │   └── KeyNotFound
    ├── SubjectHasNoFaces          verify against a subject whose faces were all deleted
    ├── SubjectExists              enroll to an existing subject without add=true
    ├── RequestCancelled           the request timed out before its work was stored
    ├── Unauthorized               no API key, or an unknown or revoked one
    ├── Forbidden                  a valid key without the scope the endpoint needs
    ├── ServiceBusy                no inference slot within the wait
    │   └── TooManyRequests        more requests waiting than the queue holds
    ├── NotReady                   models not loaded or database unreachable (readiness)
    └── ModelFileError             weights missing or with the wrong sha256 (start-up)
"""

from __future__ import annotations

from typing import Any


class FaceVerifyError(Exception):
    """Base of every error this service raises on purpose."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InputError(FaceVerifyError):
    pass


class InvalidImage(InputError):
    pass


class UnsupportedMediaType(InputError):
    pass


class ImageTooLarge(InputError):
    pass


class InvalidBase64(InputError):
    pass


class UnsupportedContentType(InputError):
    pass


class RequestTooLarge(InputError):
    pass


class RequestBodyTimeout(InputError):
    pass


class ClientDisconnected(InputError):
    pass


class InvalidRequest(InputError):
    pass


class TooManyImages(InvalidRequest):
    pass


class IdempotencyKeyReused(InvalidRequest):
    pass


class FaceMismatch(InputError):
    pass


class FaceError(FaceVerifyError):
    pass


class NoFace(FaceError):
    pass


class MultipleFaces(FaceError):
    pass


class FaceTooSmall(FaceError):
    pass


class NotFoundError(FaceVerifyError):
    pass


class SubjectNotFound(NotFoundError):
    pass


class FaceNotFound(NotFoundError):
    pass


class KeyNotFound(NotFoundError):
    pass


class SubjectHasNoFaces(FaceVerifyError):
    pass


class SubjectExists(FaceVerifyError):
    pass


class RequestCancelled(FaceVerifyError):
    pass


class Unauthorized(FaceVerifyError):
    pass


class Forbidden(FaceVerifyError):
    pass


class ServiceBusy(FaceVerifyError):
    pass


class TooManyRequests(ServiceBusy):
    pass


class NotReady(FaceVerifyError):
    pass


class ModelFileError(FaceVerifyError):
    pass
