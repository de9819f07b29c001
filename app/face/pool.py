"""A pool of native model objects, each used by one thread at a time.

dlib's HOG and CNN detectors keep scratch buffers inside the object, and its DNN-based
models (the ResNet encoder, the CNN detector) keep each layer's output in the network
object: two threads in one object at once get wrong answers and then corrupt the heap
(issue 9: ``malloc(): mismatching next->prev_size``, segfaults in _dlib_pybind11). So a
thread borrows an instance for the length of one call and gives it back.

A pool rather than one instance per thread: the server's thread pool has 40 threads but
only ``max_concurrent_inference`` of them run inference at once, so the pool grows to
that many instances (the peak concurrency), not to 40. Borrowing costs ~1 us
(benchmarks/pool_overhead.py); creating an instance (a model load) happens only when all
are busy.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class InstancePool(Generic[T]):
    """Instances made by ``factory`` on demand, lent to one thread at a time."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        # LIFO: the most recently used instance (warm caches) is lent first.
        self._idle: queue.LifoQueue[T] = queue.LifoQueue()
        self._lock = threading.Lock()
        self.created = 0

    @contextmanager
    def borrow(self) -> Iterator[T]:
        """An instance no other thread holds until the block ends."""
        try:
            instance = self._idle.get_nowait()
        except queue.Empty:
            instance = self._factory()
            with self._lock:
                self.created += 1
        try:
            yield instance
        finally:
            self._idle.put(instance)

    def warm(self, count: int = 1, *, later: bool = False) -> None:
        """Make ``count`` instances now (at start-up), so a bad model file fails there
        and the first concurrent requests do not each wait for a model load. ``later``:
        one now (the model file is checked, and a lone request waits for nothing); the
        rest are made when concurrent requests first need them, as when all are busy.
        Start-up does not wait for each (a set of dlib's objects took ~0.3 s: issue
        41), and no background thread loads them meanwhile: dlib holds the GIL for a
        load, which would stall the server's event loop in its first seconds instead."""
        self._make(1 if later else count)

    def _make(self, count: int) -> None:
        while True:
            with self._lock:
                if self.created >= count:
                    return
                self.created += 1
            self._idle.put(self._factory())
