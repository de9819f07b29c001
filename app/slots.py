"""Inference slots shared fairly between tenants (issue 25).

A process has a few inference slots (usable CPUs + 1). Granted first come, first served,
one API key flooding the service held every slot and every queue place: 4 clients of one
key sending photos without a face moved another collection's /verify from p50 37 ms to
2.7 s, and 48 clients got it 429 on 37 of 41 requests. Here a freed slot goes to the
waiting request whose collection, then key, holds the fewest slots (the oldest first
among equals), so a tenant that floods waits behind its own requests, not others'. And
a request whose tenant holds no slot at all may take one of ``reserve`` slots beyond the
limit, so a lone request of a quiet tenant never waits for a flood to drain.

The tenant of a request is set by the HTTP layer (:data:`current_tenant`); work outside
a request (the CLI, tests) is one anonymous tenant.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from app.errors import ServiceBusy
from app.face.cores import lending_slot, no_helpers, spare_cores


@dataclass(frozen=True)
class Tenant:
    """Who a request works for: its collection and its API key's id."""

    collection: str = ""
    key: str = ""


ANONYMOUS = Tenant()
# How long a tenant's lone request keeps other tenants' bulk requests capped: a quiet
# tenant's next request (sequential clients send it at once) finds cores free.
SHARED_SECONDS = 1.0

# The current request's tenant, set by the HTTP layer before the route runs.
current_tenant: ContextVar[Tenant] = ContextVar("faceverify_tenant", default=ANONYMOUS)

Lane = Literal["normal", "bulk"]
# The current request's lane, set by the HTTP layer: "bulk" for a key's further requests
# while it has one in flight, run on low-priority threads (app/api/lanes.py). A bulk
# request neither counts as using a core nor splits its work onto helper threads (which
# run at the normal priority): the cores it would use are the other tenants' to take.
current_lane: ContextVar[Lane] = ContextVar("faceverify_lane", default="normal")


@dataclass(eq=False)
class _Waiter:
    tenant: Tenant
    order: int
    bulk: bool
    granted: threading.Event = field(default_factory=threading.Event)


class FairSlots:
    """At most ``limit`` inferences at once (plus ``reserve`` for tenants holding none),
    handed out fairly between tenants (fewest held by the collection, then by the key,
    then the tenant served longest ago); a caller waits up to ``wait_seconds`` for a slot,
    then gets ServiceBusy (503 + Retry-After) rather than joining an endless queue."""

    def __init__(
        self, limit: int, wait_seconds: float, *, reserve: int = 1, bulk_limit: int | None = None
    ) -> None:
        self.limit = limit
        self.reserve = reserve
        # Slots that bulk-lane requests (a key's further requests in flight) may hold in
        # all while another tenant has been served in the last SHARED_SECONDS.
        self.bulk_limit = limit if bulk_limit is None else bulk_limit
        self._bulk = 0
        self._lone_seen: dict[Tenant, float] = {}  # tenant -> last normal-lane request
        self.clock = time.monotonic
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._running = 0
        self._by_collection: Counter[str] = Counter()
        self._by_key: Counter[Tenant] = Counter()
        self._waiting: list[_Waiter] = []
        self._order = itertools.count()
        # When each tenant with slots or waiters was last granted one: among tenants
        # holding as many, the one served longest ago goes first (round robin).
        self._served: dict[Tenant, int] = {}

    # ---- what tests and metrics read ---------------------------------------------------
    @property
    def running(self) -> int:
        return self._running

    # ---- taking and giving back ---------------------------------------------------------
    def _shared(self, tenant: Tenant) -> bool:
        """Whether another tenant sent a request of the normal lane (one alone in flight)
        in the last SHARED_SECONDS: then ``tenant``'s bulk requests are capped."""
        now = self.clock()
        for other, seen in list(self._lone_seen.items()):
            if now - seen > SHARED_SECONDS:
                del self._lone_seen[other]
        return any(other != tenant for other in self._lone_seen)

    def _bulk_full(self, tenant: Tenant) -> bool:
        return self._bulk >= self.bulk_limit and self._shared(tenant)

    def _may_take(self, tenant: Tenant, bulk: bool) -> bool:
        if not bulk:
            self._lone_seen[tenant] = self.clock()
        elif self._bulk_full(tenant):
            return False
        # With waiters, a slot goes through the fair grant in release(); a tenant holding
        # nothing may still use the reserve: it is the one that grant would pick next.
        return self._room_for(tenant) if not self._waiting else self._in_reserve(tenant)

    def _in_reserve(self, tenant: Tenant) -> bool:
        return not self._by_key[tenant] and self._running < self.limit + self.reserve

    def _room_for(self, tenant: Tenant) -> bool:
        return self._running < self.limit or self._in_reserve(tenant)

    def _forget_if_idle(self, tenant: Tenant) -> None:
        """Drop a tenant's turn order once it holds and waits for nothing."""
        if not self._by_key[tenant] and not any(w.tenant == tenant for w in self._waiting):
            self._served.pop(tenant, None)

    def _take(self, tenant: Tenant, bulk: bool) -> None:
        self._bulk += bulk
        self._running += 1
        self._by_collection[tenant.collection] += 1
        self._by_key[tenant] += 1
        self._served[tenant] = next(self._order)

    def acquire(self, tenant: Tenant, bulk: bool = False) -> None:
        with self._lock:
            if self._may_take(tenant, bulk):
                self._take(tenant, bulk)
                return
            waiter = _Waiter(tenant, next(self._order), bulk)
            self._waiting.append(waiter)
        if waiter.granted.wait(self.wait_seconds):
            return
        with self._lock:
            if waiter.granted.is_set():  # granted between the timeout and the lock
                return
            self._waiting.remove(waiter)
            self._forget_if_idle(waiter.tenant)
        raise ServiceBusy(
            f"All {self.limit} inference slots stayed busy for {self.wait_seconds:g} s; "
            "retry shortly.",
            retry_after=max(1, round(self.wait_seconds)),
        )

    def release(self, tenant: Tenant, bulk: bool = False) -> None:
        with self._lock:
            self._bulk -= bulk
            self._running -= 1
            self._by_collection[tenant.collection] -= 1
            self._by_key[tenant] -= 1
            if not self._by_key[tenant]:
                del self._by_key[tenant]
                self._forget_if_idle(tenant)
            if not self._by_collection[tenant.collection]:
                del self._by_collection[tenant.collection]
            while self._waiting:
                eligible = [w for w in self._waiting if not w.bulk or not self._bulk_full(w.tenant)]
                if not eligible:
                    break
                nearest = min(
                    eligible,
                    key=lambda w: (
                        self._by_collection[w.tenant.collection],
                        self._by_key[w.tenant],
                        self._served.get(w.tenant, -1),
                        w.order,
                    ),
                )
                if not self._room_for(nearest.tenant):
                    break
                self._waiting.remove(nearest)
                self._take(nearest.tenant, nearest.bulk)
                nearest.granted.set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the current request's tenant until the block ends. Inside, work
        that waits on another process (app/face/cnn.py) lends the slot back."""
        tenant = current_tenant.get()
        bulk = current_lane.get() == "bulk"
        self.acquire(tenant, bulk)
        try:
            with (
                spare_cores().inferring(0 if bulk else 1),
                no_helpers(bulk),
                lending_slot(lambda: self._lent(tenant, bulk), owner=tenant),
            ):
                yield
        finally:
            self.release(tenant, bulk)

    @contextmanager
    def _lent(self, tenant: Tenant, bulk: bool) -> Iterator[None]:
        """Give the slot back for the block, then wait for one again (fairly: others may
        go first)."""
        self.release(tenant, bulk)
        acquired = False
        try:
            with spare_cores().inferring(0 if bulk else -1):
                yield
            self.acquire(tenant, bulk)
            acquired = True
        finally:
            if not acquired:  # the block failed, or no slot came back: hold() releases
                with self._lock:
                    self._take(tenant, bulk)
