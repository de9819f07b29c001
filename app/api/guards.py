"""ASGI middleware that guards every route alike, whatever the route reads or returns:
the body's byte cap and minimum upload rate, HEAD answered as GET, security headers.

Pure ASGI (no BaseHTTPMiddleware): each wraps ``receive`` or ``send`` and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestBodyTimeout, RequestTooLarge


class BodyGuard:
    """Every request body, on every route, is capped at ``max_bytes`` and must keep
    arriving at ``min_rate`` bytes/s on average after ``grace`` seconds.

    The cap applies when a route first reads the body (a declared Content-Length over it
    is answered 413 before a byte is read) and while the body streams in (chunked
    bodies). Routes check the API key from the headers before they read the body, so a
    request without a key gets its 401 and its body is never read. The rate
    rule stops a client that trickles a body in from holding a connection and its
    buffers for as long as it likes (issue 9: 40 connections sending a byte every 5 s
    starved every real request); it is checked while waiting for each chunk, so a
    stalled upload ends at the deadline, not at its next byte. Both raise domain errors
    from inside ``receive``, which the app's error handlers turn into problem+json.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, min_rate: float, grace: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.min_rate = min_rate
        self.grace = grace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        start = time.monotonic()
        received = 0
        done = False

        async def guarded_receive() -> Message:
            nonlocal received, done
            if done:  # after the body: http.disconnect listeners wait as long as they like
                return await receive()
            if received == 0 and declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise RequestTooLarge(
                    f"The request body is {int(declared):,} bytes; the cap is {self.max_bytes:,}.",
                    max_bytes=self.max_bytes,
                )
            deadline = start + self.grace + received / self.min_rate
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise RequestBodyTimeout(
                    f"The request body arrived slower than {self.min_rate / 1024:g} KiB/s; "
                    "send it faster or smaller.",
                    min_bytes_per_second=int(self.min_rate),
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(
                        f"The request body is over the cap of {self.max_bytes:,} bytes.",
                        max_bytes=self.max_bytes,
                    )
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        await self.app(scope, guarded_receive, send)


class HeadAsGet:
    """HEAD on any GET route: run the GET and send its headers without the body (RFC
    9110 9.3.2). FastAPI's routes answer HEAD 405 otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# The page and its API calls come from this origin only; nothing may frame it (it has a
# Delete button); the webcam preview is a blob: stream. /docs (Swagger UI) is served from
# app/web/static/swagger with its own small inline start-up script.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """nosniff, no framing and no referrer on every response; a Content-Security-Policy
    on every response (``csp_for(path)`` picks it)."""

    def __init__(self, app: ASGIApp, *, csp_for: Any) -> None:
        self.app = app
        self.csp_for = csp_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.csp_for(scope.get("path", "")).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                if b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", csp))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
