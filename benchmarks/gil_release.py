"""Does each dlib stage release the GIL? Prints numbers; asserts nothing.

For each stage: time N calls on one thread, then 2 threads doing N calls each, and a
pure-Python counter thread's progress while the stage runs (a stage that holds the GIL
starves it). Speed-up near 2 on 2 cores = releases the GIL; near 1 = holds it.

    python benchmarks/gil_release.py [photo]
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from app.face.image import decode_image
from app.face.weights import installed_weights_dir


def run(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def spin_share(fn, n: int) -> float:
    """Counter increments/s of a Python thread while fn runs, relative to idle."""
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.3)
    count[0] = 0
    t = time.perf_counter()
    time.sleep(0.5)
    idle = count[0] / (time.perf_counter() - t)
    count[0] = 0
    t = time.perf_counter()
    run(fn, n)
    busy = count[0] / (time.perf_counter() - t)
    stop.set()
    thread.join()
    return busy / idle


def main() -> None:
    import dlib

    photo = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/obama.jpg")
    rgb = decode_image(photo.read_bytes(), max_pixels=40_000_000)
    if max(rgb.shape[:2]) > 1024:
        from PIL import Image

        s = 1024 / max(rgb.shape[:2])
        rgb = np.asarray(
            Image.fromarray(rgb).resize((round(rgb.shape[1] * s), round(rgb.shape[0] * s)))
        )
    weights = installed_weights_dir()
    assert weights is not None
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(weights / "shape_predictor_5_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(
        str(weights / "dlib_face_recognition_resnet_model_v1.dat")
    )
    rect = detector(rgb, 0)[0]
    shape = predictor(rgb, rect)
    chip = dlib.get_face_chip(rgb, shape, 150, 0.25)

    stages = {
        "hog_detect_upsample0": (lambda: detector(rgb, 0), 10),
        "shape_predictor_5": (lambda: predictor(rgb, rect), 300),
        "resnet_encode": (lambda: encoder.compute_face_descriptor(chip), 10),
    }
    print(
        f"photo {photo.name} at {rgb.shape[1]}x{rgb.shape[0]}, "
        f"{os.cpu_count()} cores, dlib {dlib.__version__}"
    )
    print(f"{'stage':24s} {'ms/call':>8s} {'2-thread speed-up':>18s} {'python thread share':>20s}")
    for name, (fn, n) in stages.items():
        fn()
        one = run(fn, n)
        threads = [threading.Thread(target=run, args=(fn, n)) for _ in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = time.perf_counter() - start
        share = spin_share(fn, n)
        print(f"{name:24s} {one / n * 1000:8.1f} {2 * one / two:18.2f} {share:20.2f}")


if __name__ == "__main__":
    main()
