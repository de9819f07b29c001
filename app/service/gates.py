"""Request gates: what decides whether a request's work may start or may still write.

- :class:`CommitGate` settles, once, the race between a request's writes and its
  timeout answer.
- :func:`inference_slots` builds the fair inference slots (app/slots.py) from settings.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

from app.cpus import usable_cpus
from app.errors import RequestCancelled
from app.settings import Settings
from app.slots import FairSlots


class CommitGate:
    """Settles, once, the race between a request's writes and its timeout answer.

    The timeout (in the HTTP layer) calls :meth:`expire`; the work calls
    :meth:`begin_commit` just before it writes. Whichever comes first wins: an expired
    request stores nothing (so a 503 request_timeout never hides a stored enrollment,
    issue 9), and a request already committing is waited for and answered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "open"

    def begin_commit(self) -> bool:
        with self._lock:
            if self._state == "open":
                self._state = "committing"
            return self._state == "committing"

    def expire(self) -> bool:
        """True if the request may be answered as timed out (nothing will be stored)."""
        with self._lock:
            if self._state == "open":
                self._state = "expired"
            return self._state == "expired"

    @property
    def expired(self) -> bool:
        return self._state == "expired"


# The current request's gate, set by the HTTP layer; None outside a request (CLI, tests).
commit_gate: ContextVar[CommitGate | None] = ContextVar("commit_gate", default=None)


def stop_if_expired(*, committing: bool = False) -> None:
    """Raise RequestCancelled if the request's timeout answer was sent; with
    ``committing``, also claim the gate, so the timeout can no longer win."""
    gate = commit_gate.get()
    if gate is None:
        return
    stopped = (not gate.begin_commit()) if committing else gate.expired
    if stopped:
        raise RequestCancelled("The request timed out; nothing was stored.")


def inference_slots(settings: Settings) -> FairSlots:
    """The inference slots every request that runs the models holds (app/slots.py)."""
    return FairSlots(
        settings.max_concurrent_inference,
        settings.inference_wait_seconds,
        reserve=settings.tenant_reserve_slots,
        bulk_limit=settings.bulk_slots or max(1, usable_cpus() - 1),
    )
