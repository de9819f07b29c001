"""Two lanes for the inference routes' threads (issue 25): a key with one request in
flight runs at the normal CPU priority; the further requests of a key that has several
in flight (a flood, a bulk job) run on threads at nice 10.

Fair slots (app/slots.py) decide who starts; they cannot take a core back from a request
already running, and on 2 cores three running requests of one tenant left another
tenant's lone /verify a third of a core. The kernel can: a nice-10 thread weighs 110
against a normal one's 1,024, so a quiet tenant's request runs at nearly its unloaded
speed while the flood goes on with what is left, and a server with one busy tenant runs
as fast as before (every request of it in the same lane). Raising a thread's nice needs
no privilege; those threads keep it for their life, so the lane is a pool of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.slots import current_lane

log = logging.getLogger("faceverify.api")

T = TypeVar("T")
# CFS weights: nice 0 = 1024, nice 10 = 110 (kernel/sched/core.c sched_prio_to_weight).
BULK_NICE = 10


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)
    except (OSError, AttributeError) as exc:  # pragma: no cover - not Linux: one lane
        log.debug("bulk lane threads keep the normal priority (%s)", exc)


class Lanes:
    """The bulk lane's threads (the normal lane is FastAPI's own thread pool)."""

    def __init__(self, threads: int) -> None:
        self.bulk = ThreadPoolExecutor(
            threads, thread_name_prefix="faceverify-bulk", initializer=_lower_priority
        )

    def close(self) -> None:
        self.bulk.shutdown(wait=False, cancel_futures=True)


def in_lane(fn: Callable[..., T]) -> Callable[..., Any]:
    """A plain ``def`` route run on its request's lane's thread, with the request's
    context (request id, commit gate, tenant)."""
    from starlette.concurrency import run_in_threadpool

    @functools.wraps(fn)
    async def route(*args: Any, **kwargs: Any) -> T:
        # (FastAPI reads the parameters from __signature__ below.)
        if current_lane.get() == "normal":
            return await run_in_threadpool(fn, *args, **kwargs)
        lanes: Lanes = _lanes_of(args, kwargs)
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(lanes.bulk, call)

    # Resolved here, with the route module's names: FastAPI would otherwise evaluate
    # the string annotations (PEP 563) in this module's namespace.
    route.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return route


def _lanes_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Lanes:
    from starlette.requests import Request

    for value in (*args, *kwargs.values()):
        request = value if isinstance(value, Request) else getattr(value, "request", None)
        if isinstance(request, Request):
            lanes: Lanes = request.app.state.lanes
            return lanes
    raise RuntimeError("a lane route needs the Request among its parameters")
