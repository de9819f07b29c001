"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, cast

from fastapi import Depends, Query, Request

from app.api.audit import arm
from app.api.inputs import RequestBody, read_body
from app.api.observability import Metrics
from app.api.ratelimit import RateLimiter
from app.errors import Forbidden, InvalidRequest, RateLimited, TooManyRequests
from app.gallery.models import COLLECTION_ID_PATTERN, DEFAULT_COLLECTION
from app.keys import KeyStore, Principal
from app.privacy.events import current_audit, note
from app.service import FaceService
from app.settings import Settings
from app.slots import Tenant, current_lane, current_tenant


# The accessors are `async def` though they do not wait: FastAPI runs a plain `def`
# dependency in the thread pool, one thread hop per dependency per request (~0.2-0.5 ms
# each on a busy 2-core machine); these only read app state.
async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_service(request: Request) -> FaceService:
    return cast(FaceService, request.app.state.service)


async def get_metrics(request: Request) -> Metrics:
    return cast(Metrics, request.app.state.metrics)


async def get_keys(request: Request) -> KeyStore:
    return cast(KeyStore, request.app.state.keys)


async def get_body(request: Request) -> RequestBody:
    # Async, so the body is read on the event loop; the routes themselves are plain
    # `def` and run in the thread pool, where dlib may block.
    return await read_body(request)


BodyDep = Annotated[RequestBody, Depends(get_body)]


def api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require(scope: str | None, *, unbound: bool = False) -> Any:
    """A route dependency: the request must carry a key with ``scope`` (None: any valid
    key; ``unbound``: an admin key not bound to a collection). Listed first in the
    route's ``dependencies`` so it runs before the body is read; routes read bodies only
    through ``BodyDep`` (a body parameter would make FastAPI read and parse the body
    before any dependency runs)."""

    def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        principal = keys.authorize(api_key(request), scope, unbound=unbound)
        request.state.principal = principal
        draft = current_audit.get()
        if draft is not None:
            arm(request.scope, draft, principal)
        take_rate(request, principal)

    return Depends(check)


def take_rate(request: Request, principal: Principal) -> None:
    """One of the key's requests a second (RateLimited when they are used up)."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        allowance = limiter.take(principal.key_id)
        request.state.rate_limit = allowance.headers(limiter.burst, limiter.rate)
        if not allowance.allowed:
            raise RateLimited(
                f"This API key may send {limiter.rate:g} requests a second "
                f"(bursts of {limiter.burst}); retry in {allowance.retry_after:.1f} s.",
                retry_after=max(1, math.ceil(allowance.retry_after)),
            )


async def get_principal(request: Request) -> Principal:
    return cast(Principal, request.state.principal)


def target_collection(request: Request, *requested: str | None) -> str:
    """The collection a request acts on. A bound key acts on its own collection and
    may not name another; an admin key for every collection names one (``collection``
    as a query parameter or a body field; both must agree) or gets the default one,
    which must exist."""
    named = {r for r in requested if r is not None}
    if len(named) > 1:
        raise InvalidRequest(
            "The query parameter and the body name different collections: "
            + ", ".join(sorted(named))
        )
    wanted = next(iter(named), None)
    who: Principal = request.state.principal
    if who.collection is not None:
        if wanted is not None and wanted != who.collection:
            raise Forbidden(
                f"This API key is bound to collection {who.collection!r}; it cannot "
                "address another collection."
            )
        return who.collection
    name = wanted or DEFAULT_COLLECTION
    note(collection=name)
    service: FaceService = request.app.state.service
    service.require_collection(name)
    return name


CollectionQuery = Annotated[
    str | None,
    Query(
        pattern=COLLECTION_ID_PATTERN,
        description="The collection to act on: for admin keys not bound to a collection "
        f"(default {DEFAULT_COLLECTION!r}). A bound key acts on its own collection.",
    ),
]


def collection_from_query(request: Request, collection: CollectionQuery = None) -> str:
    return target_collection(request, collection)


class Admission:
    """Counts the requests that run or wait for inference in this process, in all and
    by API key. Past ``limit`` in all, or ``per_key`` of one key, a request is refused
    at once (429), before it takes a thread, so one key flooding fills its own share of
    the queue, not everyone's (issue 25: 48 clients of one key got another collection's
    /verify 429 on 37 of 41 requests). A request is admitted only once its whole body
    has arrived, so a slow upload holds no place (issue 9)."""

    def __init__(self, limit: int, per_key: int | None = None) -> None:
        self.limit = limit
        self.per_key = per_key if per_key is not None else limit
        self.active = 0
        self.by_key: Counter[str] = Counter()


def _refuse_if_full(admission: Admission, who: Principal) -> None:
    if admission.by_key[who.key_id] >= admission.per_key:
        raise TooManyRequests(
            f"This API key has {admission.by_key[who.key_id]} requests running or waiting, "
            "its share of the queue; retry shortly.",
            retry_after=1,
        )
    if admission.active >= admission.limit:
        raise TooManyRequests(
            f"{admission.active} requests are already running or waiting; retry shortly.",
            retry_after=1,
        )


def refuse_if_full(request: Request, who: Principal) -> None:
    """The queue check alone (TooManyRequests), before a body is read."""
    _refuse_if_full(request.app.state.admission, who)


async def refuse_before_body(request: Request) -> None:
    """The queue check once before the body is read as well: a key past its share is
    refused without its upload being read and parsed (the server discards the rest
    unparsed). 48 clients of one key retrying 1080p photos every 50 ms kept the event
    loop busy reading bodies only to refuse them."""
    _refuse_if_full(request.app.state.admission, request.state.principal)


async def admit(request: Request, _body: BodyDep) -> AsyncIterator[None]:
    with admitted(request):
        yield


@contextmanager
def admitted(request: Request) -> Iterator[None]:
    """The request holds its place in the queue (refused when full: TooManyRequests)
    while it runs; on the event loop, so no lock is needed."""
    admission: Admission = request.app.state.admission
    who: Principal = request.state.principal
    _refuse_if_full(admission, who)
    admission.active += 1  # one event loop: no lock needed
    admission.by_key[who.key_id] += 1
    # Seen by the route's thread (the context is copied): the inference slots are shared
    # fairly between tenants (app/slots.py), and a key's further requests in flight run
    # at a lower CPU priority than a lone one (app/api/lanes.py).
    token = current_tenant.set(Tenant(who.collection or "", who.key_id))
    lane = current_lane.set("bulk" if admission.by_key[who.key_id] > 1 else "normal")
    try:
        yield
    finally:
        current_lane.reset(lane)
        current_tenant.reset(token)
        admission.active -= 1
        admission.by_key[who.key_id] -= 1
        if not admission.by_key[who.key_id]:
            del admission.by_key[who.key_id]


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[FaceService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
# The collection a request without a body acts on (see target_collection).
CollectionDep = Annotated[str, Depends(collection_from_query)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
