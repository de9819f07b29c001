"""A fake face pipeline for unit tests: the "image" bytes describe their faces.

``fake_image(faces=[face(seed=1)])`` makes bytes the FakePipeline decodes into one face
whose embedding is a fixed unit vector drawn from ``seed``; ``noise`` moves it a little.
Two different seeds are ~1.4 apart (no match); the same seed is 0 apart (match).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from app.errors import UnsupportedMediaType
from app.face.detect import Box, DetectedFace
from app.face.pipeline import Timings

PREFIX = b"FAKE"


def face(
    seed: int,
    *,
    box: tuple[int, int, int, int] = (10, 10, 110, 110),
    noise: float = 0.0,
    score: float = 1.0,
) -> dict[str, Any]:
    return {"seed": seed, "box": list(box), "noise": noise, "score": score}


def fake_image(*faces: dict[str, Any]) -> bytes:
    return PREFIX + json.dumps({"faces": list(faces)}).encode()


def unit_vector(seed: int, noise: float = 0.0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    v /= np.linalg.norm(v)
    if noise:
        v = v + np.random.default_rng(seed + 10_000).normal(size=128) * noise / np.sqrt(128)
    return v.astype(np.float32)


class FakePipeline:
    encoder_name = "fake"
    version = "fake-1"

    def __init__(self, delay: float = 0.0) -> None:
        self.embed_calls = 0
        self.delay = delay  # seconds each embed takes, to test timeouts

    def find_faces(self, data: bytes, timings: Timings) -> list[DetectedFace]:
        if not data.startswith(PREFIX):
            raise UnsupportedMediaType("not a fake image")
        spec = json.loads(data[len(PREFIX) :])
        faces = []
        for f in spec["faces"]:
            left, top, right, bottom = f["box"]
            chip = np.zeros((150, 150, 3), dtype=np.uint8)
            chip[0, 0, 0] = f["seed"] % 256  # carried through to embed()
            faces.append(
                DetectedFace(
                    box=Box(left, top, right, bottom),
                    side=max(right - left, bottom - top),
                    score=f["score"],
                    landmarks=((0.0, 0.0),) * 5,
                    chip=_Chip(chip, f["seed"], f["noise"]),
                )
            )
        return faces

    def embed(self, faces: list[DetectedFace], timings: Timings) -> np.ndarray:
        self.embed_calls += 1
        if self.delay:
            import time

            time.sleep(self.delay)
        return (
            np.stack([unit_vector(f.chip.seed, f.chip.noise) for f in faces])
            if faces
            else (np.zeros((0, 128), np.float32))
        )


class _Chip(np.ndarray):
    """A chip array that remembers which fake vector it stands for."""

    seed: int
    noise: float

    def __new__(cls, array: np.ndarray, seed: int, noise: float) -> _Chip:
        obj = np.asarray(array).view(cls)
        obj.seed, obj.noise = seed, noise
        return obj
