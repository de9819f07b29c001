"""RFC 9457 problem+json responses: one table from domain error to status and code."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, get_type_hints

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors

log = logging.getLogger("faceverify.api")

PROBLEM_JSON = "application/problem+json"

# Each domain error's HTTP status (its stable code is app/errors.py ERROR_CODES). Every
# subclass of FaceVerifyError has its own line (tests/api/test_problems.py enumerates
# them), so a new error cannot silently take its parent's status.
ERROR_STATUS: dict[type[errors.FaceVerifyError], int] = {
    errors.InvalidImage: 400,
    errors.InvalidBase64: 400,
    errors.UnsupportedMediaType: 415,
    errors.UnsupportedContentType: 415,
    errors.ImageTooLarge: 413,
    errors.RequestTooLarge: 413,
    errors.RequestBodyTimeout: 408,
    # nginx's 499: nobody reads the answer; logged as info, not as an error.
    errors.ClientDisconnected: 499,
    errors.TooManyImages: 422,
    errors.IdempotencyKeyReused: 422,
    errors.RateNotStricter: 422,
    errors.FaceMismatch: 422,
    errors.InvalidRequest: 422,
    errors.InputError: 400,
    errors.NoFace: 422,
    errors.MultipleFaces: 422,
    errors.FaceTooSmall: 422,
    errors.FaceNotEnrollable: 422,
    errors.FaceQualityTooLow: 422,
    errors.FaceError: 422,
    errors.SubjectNotFound: 404,
    errors.CollectionNotFound: 404,
    errors.FaceNotFound: 404,
    errors.KeyNotFound: 404,
    errors.SubjectExpired: 404,
    errors.ConsentRequired: 422,
    errors.AuditUnavailable: 503,
    errors.NotFoundError: 404,
    errors.SubjectHasNoFaces: 409,
    errors.SubjectExists: 409,
    errors.CollectionExists: 409,
    errors.CollectionProtected: 409,
    errors.RequestCancelled: 503,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.TooManyRequests: 429,
    errors.RateLimited: 429,
    errors.DatabaseBusy: 503,
    errors.ServiceBusy: 503,
    errors.IndexLoading: 503,
    errors.NotReady: 503,
    errors.ModelFileError: 500,
    errors.FaceVerifyError: 500,
}
ERROR_TABLE: dict[type[errors.FaceVerifyError], tuple[int, str]] = {
    cls: (status, errors.ERROR_CODES[cls]) for cls, status in ERROR_STATUS.items()
}


class _ProblemBase(BaseModel):
    type: str
    title: str
    status: int
    code: str = Field(description="Stable machine-readable error code.")
    detail: str
    instance: str | None = None


def _problem_model() -> type[BaseModel]:
    """RFC 9457 problem details, with every domain error's extra members (optional,
    each described with the codes that carry it), read from the error classes' typed
    fields, so the schema cannot drift from what the service sends."""
    carriers: dict[str, list[str]] = {}
    types: dict[str, Any] = {}
    for cls, (_, code) in ERROR_TABLE.items():
        hints = get_type_hints(cls)
        for name in cls.extra_fields():
            carriers.setdefault(name, []).append(code)
            types.setdefault(name, hints[name])
    carriers.setdefault("errors", []).append("validation_error")
    extras: dict[str, Any] = {
        name: (
            types[name] | None,
            Field(None, description="Sent with code " + ", ".join(sorted(set(codes))) + "."),
        )
        for name, codes in sorted(carriers.items())
    }
    model: type[BaseModel] = create_model(
        "Problem",
        __base__=_ProblemBase,
        __doc__="RFC 9457 problem details; `code` is stable, `detail` is for people.",
        **extras,
    )
    return model


Problem = _problem_model()


def status_and_code(exc: errors.FaceVerifyError) -> tuple[int, str]:
    return ERROR_TABLE.get(type(exc), (500, "internal_error"))


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _title(status),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(jsonable_encoder({k: v for k, v in (extra or {}).items() if v is not None}))
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="faceverify"'

    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: errors.FaceVerifyError, *, instance: str | None = None) -> JSONResponse:
    """The problem+json answer to a domain error: its table entry, its detail, and its
    typed extra fields as members (``retry_after`` also as the Retry-After header)."""
    status, code = status_and_code(exc)
    retry_after = (
        exc.retry_after if isinstance(exc, errors.ServiceBusy | errors.RequestCancelled) else None
    )
    return problem(
        status, code, exc.detail, instance=instance, extra=exc.extra, retry_after=retry_after
    )


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else "Error"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(errors.FaceVerifyError)
    async def _domain(request: Request, exc: errors.FaceVerifyError) -> JSONResponse:
        status, code = status_and_code(exc)
        if isinstance(exc, errors.ClientDisconnected):
            log.info("client disconnected during %s %s", request.method, request.url.path)
        elif status >= 500 and status not in (503, 504):
            log.error("%s on %s: %s", code, request.url.path, exc.detail)
        return problem_for(exc, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422,
            "validation_error",
            "The request's fields are missing or invalid; see errors.",
            instance=request.url.path,
            extra={"errors": validation_errors(exc.errors())},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        response = problem(exc.status_code, code, detail, instance=request.url.path)
        # Starlette puts the route's methods in the 405's Allow header; keep it.
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; the client gets no internals.
        log.exception("unhandled error on %s", request.url.path)
        return problem(
            500,
            "internal_error",
            "An unexpected error occurred; it has been logged.",
            instance=request.url.path,
        )


def validation_errors(raw: Any) -> list[dict[str, Any]]:
    """Pydantic's error list without the input values (they may be image bytes)."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in raw
    ]
