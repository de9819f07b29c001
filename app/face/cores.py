"""Spare cores: a request's single-threaded work split across the cores that would idle.

A probe's stages run one after another, and HOG, the landmarks and the quality score
each use one core. With fewer requests inferring than cores, the other cores idle: a
lone request on 2 cores used one of them for ~60% of its time. :meth:`SpareCores.beside`
runs a side task on a helper thread while the caller runs its own part, but only while
fewer requests are inferring than there are cores (the service's inference slots count
them with :meth:`SpareCores.inferring`). Under load every core already has a request of
its own, and both parts run in the caller's thread: no hand-off, no core oversubscribed,
the same work as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TypeVar

from app.cpus import usable_cpus

S = TypeVar("S")
M = TypeVar("M")


# What the caller's inference slot does while the caller waits on work done elsewhere
# (another process): set by whoever holds the slot (the service's slots), read by the
# face code that waits (app/face/cnn.py). None outside a slot.
_WAITING: ContextVar[Callable[[], AbstractContextManager[None]] | None] = ContextVar(
    "faceverify_waiting_outside", default=None
)


def waiting_outside() -> AbstractContextManager[None]:
    """A block in which the caller waits on another process and uses no core: the
    holder of its inference slot may lend the slot to another request meanwhile."""
    hook = _WAITING.get()
    return hook() if hook is not None else nullcontext()


# False while the caller's work must stay on its own (low-priority) thread.
_HELPERS: ContextVar[bool] = ContextVar("faceverify_helpers", default=True)


@contextmanager
def no_helpers(active: bool = True) -> Iterator[None]:
    """Within the block (if ``active``), :meth:`SpareCores.beside` and the HOG split
    run everything in the caller's thread."""
    token = _HELPERS.set(not active and _HELPERS.get())
    try:
        yield
    finally:
        _HELPERS.reset(token)


# Whom the caller's slot was granted to (a tenant, opaque here): a queue outside the
# slots (the CNN fallback's) shares its places between owners with it.
_OWNER: ContextVar[object] = ContextVar("faceverify_slot_owner", default=None)


def slot_owner() -> object:
    """Whom the current work is done for (None outside a slot)."""
    return _OWNER.get()


@contextmanager
def lending_slot(
    hook: Callable[[], AbstractContextManager[None]], owner: object = None
) -> Iterator[None]:
    """Within the block, :func:`waiting_outside` runs ``hook`` (the slot holder's way to
    give its slot back and take one again) and :func:`slot_owner` is ``owner``."""
    token, owned = _WAITING.set(hook), _OWNER.set(owner)
    try:
        yield
    finally:
        _OWNER.reset(owned)
        _WAITING.reset(token)


class SpareCores:
    """Side tasks on helper threads while fewer than ``cores`` requests are inferring."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._inferring = 0
        self._helping = 0
        self._lock = threading.Lock()
        self._helpers: ThreadPoolExecutor | None = None

    @contextmanager
    def inferring(self, count: int = 1) -> Iterator[None]:
        """Count the caller as a request using a core until the block ends (``count``
        -1: as one that stopped using its core for the block)."""
        with self._lock:
            self._inferring += count
        try:
            yield
        finally:
            with self._lock:
                self._inferring -= count

    def spare(self) -> bool:
        """Whether a core is free for a side task: fewer requests inferring than cores
        (the caller counts when it holds :meth:`inferring`) and a helper idle."""
        return _HELPERS.get() and self._inferring < self.cores and self._helping < self.cores - 1

    def beside(self, side: Callable[[], S], main: Callable[[], M]) -> tuple[S, M]:
        """``(side(), main())``: ``side`` on a helper thread while the caller runs
        ``main`` when a core is spare, else both in the caller's thread. Either's
        exception is raised once both have finished (a side task never outlives the
        call, so what it borrowed is back before the caller moves on)."""
        with self._lock:
            spare = self.spare()
            if spare:
                self._helping += 1
        if not spare:
            return side(), main()
        try:
            future = self._pool().submit(side)
            try:
                result = main()
            except BaseException:
                future.exception()  # wait for it; the caller's error is the one raised
                raise
            return future.result(), result
        finally:
            with self._lock:
                self._helping -= 1

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(
                    max(1, self.cores - 1), thread_name_prefix="faceverify-spare"
                )
            return self._helpers


_CORES: SpareCores | None = None
_CORES_LOCK = threading.Lock()


def spare_cores() -> SpareCores:
    """The process's one :class:`SpareCores` (every request counts against it)."""
    global _CORES
    with _CORES_LOCK:
        if _CORES is None:
            _CORES = SpareCores(usable_cpus())
        return _CORES
