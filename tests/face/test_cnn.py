"""dlib's CNN fallback in a child process (app/face/cnn.py, issue 25)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from app.errors import ServiceBusy
from app.face.cnn import CnnProcess
from app.face.weights import load_weights
from app.settings import Settings
from tests.helpers import data

pytestmark = pytest.mark.model


def _model_path():  # type: ignore[no-untyped-def]
    settings = Settings()
    return load_weights(settings.manifest_file(), settings.weights_dir)["mmod_cnn_detector"].path


def _rotated_obama(side: int = 400) -> np.ndarray:
    image = Image.open(io.BytesIO(data("obama.jpg"))).convert("RGB")
    image = image.rotate(60, expand=True, fillcolor=(128, 128, 128))
    image.thumbnail((side, side))
    return np.asarray(image)


def test_the_child_finds_what_dlib_finds_in_process() -> None:
    import dlib

    path = _model_path()
    rgb = _rotated_obama()
    here = dlib.cnn_face_detection_model_v1(str(path))(rgb, 0)
    want = [
        (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence) for d in here
    ]
    cnn = CnnProcess(path)
    try:
        got = cnn.detect(rgb)
    finally:
        cnn.close()
    assert len(want) == 1
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert got[0][4] == pytest.approx(want[0][4], abs=1e-5)


@pytest.mark.slow
def test_the_child_holds_no_gil_of_the_servers() -> None:
    """In process, a counting thread got ~1% of its rate during a CNN call; now the
    caller only waits on a pipe."""
    cnn = CnnProcess(_model_path())
    try:
        cnn.warm()
        rgb = np.full((400, 400, 3), 128, dtype=np.uint8)  # no face: the slowest case
        stop, counted = threading.Event(), []

        def count() -> None:
            n = 0
            while not stop.is_set():
                n += 1
            counted.append(n)

        counter = threading.Thread(target=count)
        started = time.perf_counter()
        counter.start()
        time.sleep(0.2)
        stop.set()
        counter.join()
        baseline_rate = counted[0] / (time.perf_counter() - started)
        stop.clear()
        counter = threading.Thread(target=count)
        started = time.perf_counter()
        counter.start()
        assert cnn.detect(rgb) == []
        stop.set()
        counter.join()
        rate = counted[1] / (time.perf_counter() - started)
        assert rate > 0.3 * baseline_rate, (rate, baseline_rate)
    finally:
        cnn.close()


def test_a_full_fallback_refuses_with_service_busy_and_recovers() -> None:
    cnn = CnnProcess(_model_path(), workers=1, queued=0, wait_seconds=0.05)
    try:
        cnn.warm()
        rgb = np.full((400, 400, 3), 128, dtype=np.uint8)
        busy = threading.Thread(target=cnn.detect, args=(rgb,))
        busy.start()
        time.sleep(0.1)
        with pytest.raises(ServiceBusy):
            cnn.detect(rgb)
        busy.join()
        assert cnn.detect(rgb) == []
    finally:
        cnn.close()


def test_a_killed_child_is_replaced() -> None:
    cnn = CnnProcess(_model_path())
    try:
        cnn.warm()
        pool = cnn._executor()
        for process in list(pool._processes.values()):  # type: ignore[union-attr]
            process.kill()
            process.join()
        assert cnn.detect(_rotated_obama())[0][4] > 0
    finally:
        cnn.close()


def test_one_tenant_holds_one_place_so_another_waits_for_one_call_at_most() -> None:
    """A flood of photos without a face from one key held every place of the CNN's
    queue, so another key's photo that needed the CNN waited, then got 503."""
    from contextlib import nullcontext

    from app.face.cores import lending_slot

    cnn = CnnProcess(_model_path(), workers=1, queued=1, wait_seconds=0.3)
    try:
        cnn.warm()
        grey = np.full((400, 400, 3), 128, dtype=np.uint8)  # ~0.7 s a call

        def as_owner(owner: str) -> list:
            with lending_slot(nullcontext, owner=owner):
                return cnn.detect(grey)

        flood = threading.Thread(target=as_owner, args=("noisy",))
        flood.start()
        time.sleep(0.1)
        with pytest.raises(ServiceBusy):
            as_owner("noisy")  # its one place is taken: refused after the wait
        quiet: list = []
        other = threading.Thread(target=lambda: quiet.append(as_owner("quiet")))
        other.start()
        other.join(10)
        flood.join(10)
        assert quiet == [[]]  # admitted to the other place, answered after one call
    finally:
        cnn.close()
