"""The audit trail's HTTP side: every answered request that reads or changes biometric
data has its event, committed before the answer leaves (issue 27).

:class:`AuditAnswers` is pure ASGI and sits outside the request-id middleware, so it
sees every answer that middleware gives (timeouts included). Every route declares
whether it is audited (:func:`audited`, :func:`not_audited`; create_app refuses a route
that declares neither). An audited route gets a draft event in a context variable; the
key check
fills in the key, the route its collection, subjects and outcome. A write records the
draft in its own transaction; for every other request the middleware holds the answer's
first message, has the event committed by the trail's group commit, and only then lets
the answer go. If the event cannot be written the answer is 503 ``audit_unavailable``
instead: never an answer without its event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import fastapi.routing
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_for
from app.errors import AuditUnavailable
from app.gallery.ids import nfkc
from app.keys import Principal
from app.logs import request_id_var
from app.privacy.events import AuditDraft, current_audit
from app.privacy.trail import AuditTrail

F = TypeVar("F", bound=Callable[..., Any])
# The attribute a route's endpoint declares its audit action on.
_DECLARED = "faceverify_audit"


def audited(action: str, success_status: int = 200) -> Callable[[F], F]:
    """Declare a route that reads or changes biometric data: each answer of it is an
    event ``action`` in the trail (``success_status``: the status its success answers)."""

    def declare(endpoint: F) -> F:
        setattr(endpoint, _DECLARED, (action, success_status))
        return endpoint

    return declare


def not_audited(reason: str) -> Callable[[F], F]:
    """Declare a route that touches no biometric data (``reason`` says why): it records
    nothing."""

    def declare(endpoint: F) -> F:
        setattr(endpoint, _DECLARED, None)
        return endpoint

    return declare


def declared(route: object) -> tuple[str, int] | None:
    """The audit action a route declared (None: not audited)."""
    route = getattr(route, "original_route", route)
    return getattr(getattr(route, "endpoint", None), _DECLARED, None)


def api_routes(routes: Sequence[Any]) -> list[APIRoute]:
    """Every API route of an app (FastAPI >= 0.137 keeps included routers as a tree;
    iter_route_contexts flattens it)."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    found = [getattr(r, "original_route", r) for r in (walk(routes) if walk else routes)]
    return [r for r in found if isinstance(r, APIRoute)]


def audit_actions(routes: Sequence[Any]) -> dict[tuple[str, str], tuple[str, int] | None]:
    """(method, path) of every API route -> the action it declared (None: not audited)."""
    return {(m, r.path): declared(r) for r in api_routes(routes) for m in r.methods or ()}


def undeclared(routes: Sequence[Any]) -> list[str]:
    """The routes (method and path) that declare neither :func:`audited` nor
    :func:`not_audited`."""
    return sorted(
        f"{','.join(sorted(r.methods or ()))} {r.path}"
        for r in api_routes(routes)
        if not hasattr(r.endpoint, _DECLARED)
    )


class AuditAnswers:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trail: AuditTrail | None = getattr(scope["app"].state, "audit", None)
        if trail is None:
            await self.app(scope, receive, send)
            return
        draft = AuditDraft(action="")
        token = current_audit.set(draft)
        held: list[Message] = []
        passing = False

        async def audited_send(message: Message) -> None:
            nonlocal passing
            if passing:
                await send(message)
                return
            held.append(message)
            start = held[0]
            if start["status"] >= 400 and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a problem body is one message; wait for its end
            elif start["status"] >= 400:
                return  # hold the start until the problem body says its code
            passing = True
            if not await _recorded(trail, scope, draft, held):
                held[:] = _unavailable(scope, draft.request_id)
            for each in held:
                await send(each)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            # An error no handler answered (the server answers 500): recorded as such.
            if not passing and _audited(scope, draft):
                await _commit(trail, draft.row(500, "internal_error"))
            raise
        finally:
            current_audit.reset(token)


def _audited(scope: Scope, draft: AuditDraft) -> bool:
    """Whether the request is one the trail records, filling in the draft: an audited
    route, called with a valid key (a request without one touched nothing)."""
    known = declared(scope.get("route"))
    principal: Principal | None = scope.get("state", {}).get("principal")
    if known is None or principal is None:
        return False
    draft.action = draft.action or known[0]
    draft.key_id = principal.key_id
    params = scope.get("path_params", {})
    if draft.collection is None:
        draft.collection = params.get("collection_id") or principal.collection
    if not draft.subjects and "subject_id" in params:
        # As the route reads it: "ｖｉｃｔｉｍ" is victim (issue 37).
        draft.subjects = [nfkc(params["subject_id"])]
    client = scope.get("client")
    draft.client = client[0] if client else None
    return True


def arm(scope: Scope, draft: AuditDraft, principal: Principal) -> None:
    """Called by the key check: the draft knows its action, key and request id before
    the route runs, so a write can record it in its transaction."""
    known = declared(scope.get("route"))
    if known is None:
        return
    draft.action, draft.success_status = known
    draft.key_id = principal.key_id
    draft.request_id = request_id_var.get()
    client = scope.get("client")
    draft.client = client[0] if client else None


async def _recorded(
    trail: AuditTrail, scope: Scope, draft: AuditDraft, held: list[Message]
) -> bool:
    """The event of the answer in ``held`` is committed (or was not needed)."""
    if draft.recorded or not _audited(scope, draft):
        return True
    start = held[0]
    draft.request_id = Headers(raw=start.get("headers", [])).get("x-request-id", "-")
    code = None
    if start["status"] >= 400:
        code = _problem_code(b"".join(m.get("body", b"") for m in held[1:]))
    try:
        await _commit(trail, draft.row(start["status"], code))
    except Exception:  # noqa: BLE001 - the answer becomes a 503, never unaudited
        return False
    return True


async def _commit(trail: AuditTrail, row: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(settle, error)

    trail.submit(row, done)
    await future


def _problem_code(body: bytes) -> str | None:
    try:
        found = json.loads(body)
        # problem+json's code, or the Rekognition API's error type (its form has no code).
        value = found.get("code") or found.get("__type")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _unavailable(scope: Scope, request_id: str) -> list[Message]:
    response = problem_for(
        AuditUnavailable(
            "The audit trail could not record this request, so it is not answered. Retry shortly.",
            retry_after=5,
        ),
        instance=scope["path"],
    )
    response.headers["X-Request-ID"] = request_id
    return [
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        },
        {"type": "http.response.body", "body": response.body},
    ]
