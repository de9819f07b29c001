"""Errors as Amazon Rekognition sends them: a JSON body ``{"__type": ..., "message":
...}`` with the same type in the ``x-amzn-ErrorType`` header, and Rekognition's HTTP
status (400 for nearly everything, as its API reference lists; ThrottlingException and
InternalServerError 500). botocore reads the type from the body and retries the
throttling types (ThrottlingException, ProvisionedThroughputExceededException) and
5xx answers; everything else is final.

Every domain error of faceverify (app/errors.py) has its AWS type here: an unknown
subclass falls back to its nearest listed parent, so none becomes a bare 500.
"""

from __future__ import annotations

import json
import logging

from fastapi.responses import Response

from app import errors

log = logging.getLogger("faceverify.api")
JSON_1_1 = "application/x-amz-json-1.1"

STATUS = {
    "ThrottlingException": 500,
    "InternalServerError": 500,
    "MissingAuthenticationTokenException": 403,
}


class AwsError(Exception):
    """An answer in Rekognition's error form."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status or STATUS.get(kind, 400)

    def response(self) -> Response:
        body = json.dumps({"__type": self.kind, "message": self.message})
        return Response(
            body,
            status_code=self.status,
            media_type=JSON_1_1,
            headers={"x-amzn-ErrorType": self.kind},
        )


def invalid(message: str) -> AwsError:
    return AwsError("InvalidParameterException", message)


def not_found(message: str) -> AwsError:
    return AwsError("ResourceNotFoundException", message)


def access_denied(message: str) -> AwsError:
    return AwsError("AccessDeniedException", message)


# faceverify's errors -> Rekognition's types, most specific first (the first class in
# the exception's MRO that is listed decides).
TYPES: dict[type[errors.FaceVerifyError], str] = {
    errors.ImageTooLarge: "ImageTooLargeException",
    errors.RequestTooLarge: "ImageTooLargeException",
    errors.InvalidImage: "InvalidImageFormatException",
    errors.UnsupportedMediaType: "InvalidImageFormatException",
    errors.InvalidBase64: "InvalidImageFormatException",
    errors.ConsentRequired: "AccessDeniedException",
    errors.Unauthorized: "UnrecognizedClientException",
    errors.Forbidden: "AccessDeniedException",
    errors.CollectionNotFound: "ResourceNotFoundException",
    errors.SubjectNotFound: "ResourceNotFoundException",
    errors.FaceNotFound: "ResourceNotFoundException",
    errors.SubjectExpired: "ResourceNotFoundException",
    errors.NotFoundError: "ResourceNotFoundException",
    errors.CollectionExists: "ResourceAlreadyExistsException",
    errors.SubjectExists: "ResourceAlreadyExistsException",
    errors.RateLimited: "ProvisionedThroughputExceededException",
    errors.TooManyRequests: "ProvisionedThroughputExceededException",
    errors.ServiceBusy: "ThrottlingException",
    errors.RequestCancelled: "ThrottlingException",
    errors.NotReady: "ThrottlingException",
    errors.ClientDisconnected: "InvalidParameterException",
    errors.RequestBodyTimeout: "InvalidParameterException",
    errors.InputError: "InvalidParameterException",
    errors.FaceError: "InvalidParameterException",
    errors.SubjectHasNoFaces: "InvalidParameterException",
    errors.CollectionProtected: "InvalidParameterException",
    errors.FaceVerifyError: "InternalServerError",
}


def from_domain(exc: errors.FaceVerifyError) -> AwsError:
    """The Rekognition error for one of faceverify's (its detail as the message)."""
    kind = next(TYPES[c] for c in type(exc).__mro__ if c in TYPES)
    if kind == "InternalServerError":
        log.error("%s on the Rekognition API: %s", errors.error_code(exc), exc.detail)
        return AwsError(kind, "An internal error occurred; it has been logged.")
    return AwsError(kind, exc.detail)
