"""The face pipeline the service uses: decode -> detect -> align -> encode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.face.detect import DetectedFace, HogFaceDetector
from app.face.encoder import EMBEDDING_DIM, FaceEncoder
from app.face.image import decode_image_scaled
from app.face.weights import WeightFile


@dataclass
class Timings:
    """Milliseconds spent per stage, summed over a request."""

    decode_ms: float = 0.0
    detect_ms: float = 0.0
    encode_ms: float = 0.0
    search_ms: float = 0.0

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
            "encode_ms": round(self.encode_ms, 2),
            "search_ms": round(self.search_ms, 2),
        }


class FacePipeline(Protocol):
    """What the service needs from the face side. The real one is :class:`DlibPipeline`;
    unit tests pass a fake."""

    encoder_name: str
    version: str

    def find_faces(self, data: bytes, timings: Timings) -> list[DetectedFace]:
        """Decode ``data`` and return every face found in it."""
        ...

    def embed(self, faces: list[DetectedFace], timings: Timings) -> np.ndarray:
        """``(len(faces), 128)`` float32 embeddings of the given faces, in one batch."""
        ...


class DlibPipeline:
    """Pillow decoding, dlib HOG detection and 5-point alignment, and any FaceEncoder.

    ``weights`` must hold ``shape_predictor_5`` (models/manifest.json)."""

    def __init__(
        self,
        *,
        weights: dict[str, WeightFile],
        encoder: FaceEncoder,
        max_pixels: int,
        detect_max_side: int,
        detect_upsample: int,
        detect_retry_max_side: int,
        version: str,
        flip_average: bool = False,
        detect_cnn_max_side: int = 0,
    ) -> None:
        self.detector = HogFaceDetector(
            weights["shape_predictor_5"].path,
            max_side=detect_max_side,
            upsample=detect_upsample,
            retry_max_side=detect_retry_max_side,
            cnn_path=weights["mmod_cnn_detector"].path if detect_cnn_max_side else None,
            cnn_max_side=detect_cnn_max_side,
        )
        self.encoder = encoder
        self.flip_average = flip_average
        self.encoder_name = self.encoder.name
        self.max_pixels = max_pixels
        self.version = version

    def find_faces(self, data: bytes, timings: Timings) -> list[DetectedFace]:
        with timings.measure("decode_ms"):
            # Large JPEGs are decoded at reduced scale, down to 1.25x the detection size:
            # a face HOG can find (>= 80 px at detection size) is then still >= 100 px,
            # the face's width inside dlib's 150 px chip (25% padding each side).
            rgb, scale = decode_image_scaled(
                data, max_pixels=self.max_pixels, min_side=self.detector.max_side * 5 // 4
            )
        with timings.measure("detect_ms"):
            faces = self.detector.detect(rgb)
        return faces if scale == 1.0 else [f.rescaled(1.0 / scale) for f in faces]

    def embed(self, faces: list[DetectedFace], timings: Timings) -> np.ndarray:
        if not faces:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        chips = np.stack([f.chip for f in faces])
        with timings.measure("encode_ms"):
            if not self.flip_average:
                return self.encoder.encode(chips)
            # One batch: the chips and their mirror images, averaged pairwise.
            both = self.encoder.encode(np.concatenate([chips, chips[:, :, ::-1]]))
            return ((both[: len(chips)] + both[len(chips) :]) / 2).astype(np.float32)
