"""``Client`` and ``AsyncClient``: the same methods (each built once, from the request
builders in _calls.py), errors as exceptions, timeouts, and retries that are safe."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx2

from faceverify_client import _calls
from faceverify_client import models as m
from faceverify_client._calls import Call
from faceverify_client.errors import ConnectionFailed, FaceVerifyError, error_from

P = ParamSpec("P")
T = TypeVar("T")

# Statuses a request is sent again for (with Retry-After, or a jittered backoff).
RETRY_STATUSES = frozenset({429, 503})
# Errors where the request never reached the server: any request may be sent again.
NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


class RetryPolicy:
    """At most ``retries`` more attempts and ``max_wait`` seconds of waiting in all;
    each wait is the server's Retry-After, or ``backoff`` * 2^attempt, jittered."""

    def __init__(self, retries: int = 3, backoff: float = 0.5, max_wait: float = 30.0) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return float(self.backoff * 2.0**attempt * random.uniform(0.5, 1.5))  # noqa: S311


def _outcome(call: Call[T], response: httpx2.Response) -> T | FaceVerifyError:
    rid = response.headers.get("x-request-id")
    if response.is_success:
        return call.parse(response.json())
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    return error_from(response.status_code, body, rid)


def _request(call: Call[Any]) -> dict[str, Any]:
    return {
        "params": call.params,
        "data": call.data,
        "files": call.files,
        "json": call.json,
        "headers": call.headers,
    }


def _retry_after(error: FaceVerifyError) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": "faceverify-client"}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


class _Base:
    def __init__(self, retries: int, backoff: float, max_wait: float) -> None:
        self.retry = RetryPolicy(retries, backoff, max_wait)

    def _decide(self, call: Call[Any], attempt: int, waited: float, outcome: Any) -> float | None:
        """How long to wait before sending ``call`` again, or None to stop."""
        if attempt >= self.retry.retries:
            return None
        if isinstance(outcome, httpx2.TransportError):
            if not (call.retry or isinstance(outcome, NOT_SENT)):
                return None
            wait = self.retry.wait(attempt, None)
        elif isinstance(outcome, FaceVerifyError) and outcome.status in RETRY_STATUSES:
            if not call.retry:
                return None
            wait = self.retry.wait(attempt, _retry_after(outcome))
        else:
            return None
        return wait if waited + wait <= self.retry.max_wait else None


def _op(build: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._send(build(*args, **kwargs))

    method.__doc__ = build.__doc__
    method.__name__ = build.__name__
    return method


def _aop(
    build: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._send(build(*args, **kwargs))

    method.__doc__ = build.__doc__
    method.__name__ = build.__name__
    return method


class Client(_Base):
    """A faceverify server: ``Client("http://127.0.0.1:8000", api_key="fv_...")``. Use it as
    a context manager (its connections are reused until it closes)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_wait: float = 30.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff, max_retry_wait)
        self._http = httpx2.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        attempt, waited = 0, 0.0
        while True:
            outcome: Any
            try:
                response = self._http.request(call.method, call.path, **_request(call))
                outcome = _outcome(call, response)
            except httpx2.TransportError as exc:
                outcome = exc
            if not isinstance(outcome, (FaceVerifyError, httpx2.TransportError)):
                return outcome  # type: ignore[no-any-return]
            wait = self._decide(call, attempt, waited, outcome)
            if wait is None:
                if isinstance(outcome, httpx2.TransportError):
                    raise ConnectionFailed(f"{type(outcome).__name__}: {outcome}") from outcome
                raise outcome
            time.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    enroll = _op(_calls.enroll)
    verify = _op(_calls.verify)
    identify = _op(_calls.identify)
    compare = _op(_calls.compare)
    detect = _op(_calls.detect)
    get_subject = _op(_calls.get_subject)
    delete_subject = _op(_calls.delete_subject)
    delete_face = _op(_calls.delete_face)
    export_subject = _op(_calls.export_subject)
    collections = _op(_calls.collections)
    create_collection = _op(_calls.create_collection)
    get_collection = _op(_calls.get_collection)
    update_collection = _op(_calls.update_collection)
    delete_collection = _op(_calls.delete_collection)
    keys = _op(_calls.keys)
    create_key = _op(_calls.create_key)
    revoke_key = _op(_calls.revoke_key)
    info = _op(_calls.info)
    health = _op(_calls.health)
    ready = _op(_calls.ready)
    audit_page = _op(_calls.audit)

    def subjects(
        self, *, collection: str | None = None, prefix: str | None = None, page: int = 500
    ) -> Iterator[m.SubjectOut]:
        """Every subject of the collection, by id, fetched a page at a time."""
        offset = 0
        while True:
            got = self._send(
                _calls.subjects_page(
                    collection=collection, offset=offset, limit=page, prefix=prefix
                )
            )
            yield from got.items
            offset += len(got.items)
            if not got.items or offset >= got.total:
                return


class AsyncClient(_Base):
    """:class:`Client`'s methods, awaitable: ``async with AsyncClient(url, api_key=...)``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_wait: float = 30.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff, max_retry_wait)
        self._http = httpx2.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempt, waited = 0, 0.0
        while True:
            outcome: Any
            try:
                response = await self._http.request(call.method, call.path, **_request(call))
                outcome = _outcome(call, response)
            except httpx2.TransportError as exc:
                outcome = exc
            if not isinstance(outcome, (FaceVerifyError, httpx2.TransportError)):
                return outcome  # type: ignore[no-any-return]
            wait = self._decide(call, attempt, waited, outcome)
            if wait is None:
                if isinstance(outcome, httpx2.TransportError):
                    raise ConnectionFailed(f"{type(outcome).__name__}: {outcome}") from outcome
                raise outcome
            await asyncio.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    enroll = _aop(_calls.enroll)
    verify = _aop(_calls.verify)
    identify = _aop(_calls.identify)
    compare = _aop(_calls.compare)
    detect = _aop(_calls.detect)
    get_subject = _aop(_calls.get_subject)
    delete_subject = _aop(_calls.delete_subject)
    delete_face = _aop(_calls.delete_face)
    export_subject = _aop(_calls.export_subject)
    collections = _aop(_calls.collections)
    create_collection = _aop(_calls.create_collection)
    get_collection = _aop(_calls.get_collection)
    update_collection = _aop(_calls.update_collection)
    delete_collection = _aop(_calls.delete_collection)
    keys = _aop(_calls.keys)
    create_key = _aop(_calls.create_key)
    revoke_key = _aop(_calls.revoke_key)
    info = _aop(_calls.info)
    health = _aop(_calls.health)
    ready = _aop(_calls.ready)
    audit_page = _aop(_calls.audit)

    async def subjects(
        self, *, collection: str | None = None, prefix: str | None = None, page: int = 500
    ) -> AsyncIterator[m.SubjectOut]:
        """Every subject of the collection, by id, fetched a page at a time."""
        offset = 0
        while True:
            got = await self._send(
                _calls.subjects_page(
                    collection=collection, offset=offset, limit=page, prefix=prefix
                )
            )
            for item in got.items:
                yield item
            offset += len(got.items)
            if not got.items or offset >= got.total:
                return
