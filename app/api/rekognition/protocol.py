"""The Rekognition-compatible endpoint (issue 40): ``POST /`` with ``X-Amz-Target:
RekognitionService.<Operation>`` and a JSON body (AWS JSON 1.1), signed with AWS
Signature Version 4, on the same server and port as faceverify's own API (an SDK's
``endpoint_url`` is the server's base URL).

The order of the checks is the point: the target and the Authorization header are
checked first, then the credential (known, not revoked) and the request's date, then the
key's rate and its share of the queue, all before a byte of the body is read; then the
body is read (capped as every body is) and the signature over it checked; only a request
that passes all of these reaches an operation. An unsigned or wrongly signed request
reads and writes nothing. Every answer, errors included, is in Rekognition's form
(app/api/rekognition/errors.py), and every signed call is an audit event
(``aws_<operation>``: aws_index_faces...).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from app.api.audit import arm, audited
from app.api.deps import admitted, refuse_if_full, take_rate
from app.api.inputs import parse_json
from app.api.lanes import in_lane
from app.api.rekognition import sigv4
from app.api.rekognition.errors import JSON_1_1, AwsError, from_domain
from app.api.rekognition.operations import OPERATIONS, Call
from app.api.rekognition.shapes import Params
from app.errors import FaceVerifyError
from app.keys import KeyStore, Principal
from app.logs import request_id_var
from app.privacy.events import current_audit, note

log = logging.getLogger("faceverify.api")
router = APIRouter()
TARGET_PREFIX = "RekognitionService."
CONTENT_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json")


def _signed_request(request: Request, body: bytes) -> sigv4.SignedRequest:
    return sigv4.SignedRequest(
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        body=body,
    )


def _operation(request: Request) -> str:
    target = request.headers.get("x-amz-target", "")
    name = target.removeprefix(TARGET_PREFIX)
    if not target.startswith(TARGET_PREFIX) or name not in OPERATIONS:
        raise AwsError(
            "UnknownOperationException",
            f"Unknown or unsupported operation {target!r}; supported: "
            + ", ".join(sorted(OPERATIONS)),
        )
    return name


async def signed_call(request: Request) -> AsyncIterator[Call]:
    """The checks above, in order; the call holds its place in the queue (fair shares
    between keys, as every inference request does) until its answer is built."""
    operation = _operation(request)
    keys: KeyStore = request.app.state.keys
    found: dict[str, object] = {}

    def secret_for(access_key_id: str) -> str | None:
        credential = keys.aws_credential(access_key_id)
        if credential is None:
            return None
        found["principal"] = credential[1]
        return credential[0]

    try:
        pending = sigv4.authenticate(_signed_request(request, b""), secret_for)
        principal = cast(Principal, found["principal"])
        refuse_if_full(request, principal)
        try:
            body = await request.body()
        except ClientDisconnect:
            raise AwsError(
                "InvalidParameterException", "The client closed the connection."
            ) from None
        sigv4.confirm(pending, _signed_request(request, body))
        # Only a signed request counts against the key's rate: one signed with a wrong
        # secret must not use up a credential's requests (its id is no secret).
        request.state.principal = principal
        take_rate(request, principal)
    except sigv4.SignatureError as exc:
        raise AwsError(exc.kind, exc.message) from None
    except FaceVerifyError as exc:
        raise from_domain(exc) from None
    draft = current_audit.get()
    if draft is not None:
        arm(request.scope, draft, principal)
        draft.action = action(operation)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        raise AwsError("SerializationException", f"Send {JSON_1_1}, not {content_type!r}.")
    try:
        params = Params(parse_json(body or b"{}"))
    except (ValueError, FaceVerifyError) as exc:
        raise AwsError("SerializationException", f"The body is not valid JSON: {exc}") from None
    call = Call(
        request=request,
        service=request.app.state.service,
        keys=keys,
        settings=request.app.state.settings,
        principal=principal,
        region=pending.credential.region,
        params=params,
        operation=operation,
    )
    try:
        with admitted(request):
            yield call
    except FaceVerifyError as exc:
        raise from_domain(exc) from None


def action(operation: str) -> str:
    """An operation's audit action: IndexFaces -> aws_index_faces."""
    return "aws_" + re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


SignedCall = Annotated[Call, Depends(signed_call)]


@router.post("/", include_in_schema=False)
@audited("rekognition")
@in_lane
def rekognition(request: Request, call: SignedCall) -> Response:
    """Amazon Rekognition's face operations (docs/REKOGNITION.md)."""
    note(collection=call.principal.collection)
    try:
        answer = OPERATIONS[call.operation](call)
    except FaceVerifyError as exc:
        raise from_domain(exc) from None
    except AwsError:
        raise
    except Exception:
        # The traceback to the log only; the SDK gets Rekognition's InternalServerError.
        log.exception("unhandled error in Rekognition %s", call.operation)
        raise AwsError(
            "InternalServerError", "An internal error occurred; it has been logged."
        ) from None
    # x-amzn-RequestId: the SDKs put it in ResponseMetadata.RequestId (the X-Request-ID).
    return Response(
        json.dumps(answer), media_type=JSON_1_1, headers={"x-amzn-RequestId": request_id_var.get()}
    )


def install(app: FastAPI) -> None:
    """Answer AwsError in Rekognition's form wherever it is raised."""

    @app.exception_handler(AwsError)
    async def _aws(request: Request, exc: AwsError) -> Response:
        answer = exc.response()
        answer.headers["x-amzn-RequestId"] = request_id_var.get()
        return answer
