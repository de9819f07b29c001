"""Timing helpers of the bench: samples in turns, percentiles, the test photos, RSS."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "n": len(samples_ms),
    }


def timed_runs(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def in_turns(
    named: dict[str, tuple[Callable[[], object], int]], warmup: int = 1
) -> dict[str, list[float]]:
    """ms samples of each function (``name: (function, count)``), taken in turns: each
    round runs every function still short of its count, spread evenly over the rounds.
    A slow minute of this shared machine then falls on ours and the baseline alike (in
    blocks, one run gave 9.8x and the next 15.4x)."""
    for fn, _ in named.values():
        for _ in range(warmup):
            fn()
    rounds = max(count for _, count in named.values())
    out: dict[str, list[float]] = {name: [] for name in named}
    for r in range(rounds):
        for name, (fn, count) in named.items():
            if (r + 1) * count // rounds > r * count // rounds:
                start = time.perf_counter()
                fn()
                out[name].append((time.perf_counter() - start) * 1000)
    return out


def make_photos(photo_dir: Path) -> dict[str, bytes]:
    """A 640x480 one-face JPEG and a 12 MP (4000x3000) one, cut from the test photos."""
    with Image.open(photo_dir / "obama.jpg") as img:
        small = img.convert("RGB").crop((0, 0, 910, 683)).resize((640, 480))
    with Image.open(photo_dir / "obama3.jpg") as img:
        large = img.convert("RGB").crop((0, 0, 1434, 1075)).resize((4000, 3000))
    out = {}
    for name, picture in (("640x480", small), ("12MP", large)):
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
