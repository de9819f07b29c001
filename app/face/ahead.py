"""Model sessions made ahead, on threads of their own, while `faceverify serve` still
imports its modules (issue 41).

Making an ONNX Runtime session (0.1-0.2 s for the ResNet at a start, ~0.05 s for
YuNet) mostly runs outside the GIL, while the imports that come before the models hold
it on one core. ``serve`` (one worker) starts them with :func:`ahead`; the pipeline's
constructors take them with :func:`made`, or make their own as before when none was
started. A session that failed ahead raises the same error where it is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

_AHEAD: dict[Hashable, Future[Any]] = {}
_LOCK = threading.Lock()


def ahead(key: Hashable, make: Callable[[], Any]) -> None:
    """Start ``make()`` on a thread, for the first :func:`made` of ``key``."""
    future: Future[Any] = Future()
    with _LOCK:
        if key in _AHEAD:
            return
        _AHEAD[key] = future

    def run() -> None:
        try:
            future.set_result(make())
        except BaseException as exc:  # handed to whoever takes it
            future.set_exception(exc)

    threading.Thread(target=run, name="model-ahead", daemon=True).start()


def made(key: Hashable, make: Callable[[], Any]) -> Any:
    """What :func:`ahead` made for ``key`` (waiting for it), once; else ``make()``."""
    with _LOCK:
        future = _AHEAD.pop(key, None)
    return future.result() if future is not None else make()
