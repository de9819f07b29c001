"""dlib's CNN face detector in a child process at the lowest CPU priority (issue 25).

The CNN detector is the fallback when HOG finds nothing: ~0.3 s for a face HOG missed,
~0.7-0.9 s for a photo with no face at all. dlib's Python binding holds the GIL for the
whole call (measured: a counting thread got 1.2% of its usual rate while it ran), so in
the serving process one such call stalls every other request, the event loop included:
four clients sending grey photos moved another collection's /verify from p50 37 ms to
2.7 s. Here it runs in its own process at nice 19, so it takes the CPU only when the
requests do not want it, holds no GIL of the server's, and at most ``workers`` run at
once; the request waiting for it gives its inference slot back meanwhile
(:func:`app.face.cores.waiting_outside`).

Same boxes and scores as the in-process detector (the same model on the same pixels;
tests/face/test_cnn.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ServiceBusy
from app.face.cores import slot_owner, waiting_outside

log = logging.getLogger("faceverify.face")

# The child's nice value: the lowest priority, so any request of the server's runs first.
NICE = 19
# One (left, top, right, bottom, confidence) per detection, dlib's inclusive corners.
Detection = tuple[int, int, int, int, float]

_MODEL: Any = None  # the child's detector


def _start(path: str, nice: int, parent: int) -> None:
    global _MODEL
    try:
        os.nice(nice)
    except OSError:  # pragma: no cover - a platform without nice: run as is
        pass
    # A server killed with SIGKILL cannot stop its children; each watches its parent and
    # exits when it is gone (seen before: children outliving their server).
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    import dlib

    _MODEL = dlib.cnn_face_detection_model_v1(path)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _detect(rgb: np.ndarray) -> list[Detection]:
    found = _MODEL(rgb, 0)
    return [
        (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), float(d.confidence))
        for d in found
    ]


class CnnProcess:
    """dlib's CNN detector in ``workers`` child processes, started on first use.

    At most ``workers + queued`` calls are inside at once, and at most one of each slot
    owner (tenant, :func:`app.face.cores.slot_owner`); a call waits up to
    ``wait_seconds`` for a place, then gets ServiceBusy (503). So a flood of photos
    without a face queues here, outside the inference slots, is refused here, and holds
    one place: another tenant's photo that needs the CNN waits for one call at most.

    Args:
        path: the model file (mmod_human_face_detector.dat).
        workers: child processes (each ~60 MB; one uses at most one core).
        queued: calls that may wait for a child beyond those running.
        wait_seconds: how long a call waits for a place before ServiceBusy.
    """

    def __init__(
        self,
        path: Path,
        *,
        workers: int = 1,
        queued: int = 1,
        wait_seconds: float = 10.0,
        nice: int = NICE,
    ) -> None:
        self.path = path
        self.workers = workers
        self.wait_seconds = wait_seconds
        self.nice = nice
        self.places = workers + queued
        self._inside: Counter[object] = Counter()  # owner -> calls holding a place
        self._turn = threading.Condition()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """The detections in an ``(H, W, 3)`` uint8 RGB image (upsample 0)."""
        owner = slot_owner()
        with waiting_outside():
            with self._turn:
                if not self._turn.wait_for(
                    lambda: self._inside[owner] == 0 and sum(self._inside.values()) < self.places,
                    timeout=self.wait_seconds,
                ):
                    raise ServiceBusy(
                        "The fallback face detector is busy with other photos in which no "
                        "face was found quickly; retry shortly.",
                        retry_after=max(1, round(self.wait_seconds)),
                    )
                self._inside[owner] += 1
            try:
                return self._run(np.ascontiguousarray(rgb))
            finally:
                with self._turn:
                    self._inside[owner] -= 1
                    if not self._inside[owner]:
                        del self._inside[owner]
                    self._turn.notify_all()

    def _run(self, rgb: np.ndarray) -> list[Detection]:
        for attempt in (1, 2):
            try:
                future: Future[list[Detection]] = self._executor().submit(_detect, rgb)
                return future.result()
            except BrokenProcessPool:  # the child died (killed, out of memory): once more
                log.warning("the CNN detector's process died; starting another")
                self._reset()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def warm(self) -> None:
        """Start the child processes and load the model (~1 s), off the request path."""
        try:
            self.detect(np.zeros((64, 64, 3), dtype=np.uint8))
        except Exception as exc:  # it starts again on first use; say why it did not now
            log.warning("the CNN detector's process did not start (%s)", exc)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the server's threads (and their locks) are not copied.
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(str(self.path), self.nice, os.getpid()),
                )
            return self._pool

    def _reset(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._reset()
