"""Per-stage wall times of one request (reported in answers, metrics and the bench)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Timings:
    """Milliseconds spent per stage, summed over a request."""

    decode_ms: float = 0.0  # bytes -> RGB array (at reduced scale for large JPEGs)
    detect_ms: float = 0.0  # the face detector (HOG, CNN fallback)
    align_ms: float = 0.0  # five landmarks and the encoder's aligned chip
    encode_ms: float = 0.0  # the encoder network
    search_ms: float = 0.0  # reading the subject or searching the gallery
    quality_ms: float = 0.0  # the face quality measures (app/face/quality.py)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Add the block's wall time, in ms, to ``stage`` (e.g. ``"detect_ms"``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - start) * 1000.0
            setattr(self, stage, getattr(self, stage) + elapsed)

    def as_dict(self) -> dict[str, float]:
        return {
            "decode_ms": round(self.decode_ms, 2),
            "detect_ms": round(self.detect_ms, 2),
            "align_ms": round(self.align_ms, 2),
            "encode_ms": round(self.encode_ms, 2),
            "search_ms": round(self.search_ms, 2),
            "quality_ms": round(self.quality_ms, 2),
        }
