"""A fake detector and a fake encoder for the fast tests: the real Pipeline runs around
them (Pillow decoding, the reduced decode of big images and the rescaling of boxes,
alignment, flip averaging), only dlib is replaced.

``fake_image(face(seed=1))`` is a real PNG with one filled rectangle per face, its colour
encoding the face: red = seed + 1, green = noise, blue = detector score. FakeDetector
finds each colour's rectangle; FakeEncoder reads the colour from the chip and returns a
fixed unit vector drawn from ``seed`` (moved a little by ``noise``). Two different seeds
are ~1.4 apart (no match); the same seed is 0 apart (match). A chip is one flat colour,
so its mirror image embeds the same, as a real face's nearly does.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from PIL import Image

from app.face.detect import DetectedFace
from app.face.pipeline import Pipeline
from app.face.timing import Timings
from app.geometry import Box

NOISE_STEPS = 200  # green = 1 + noise * NOISE_STEPS
SCORE_STEPS = 50  # blue = 1 + score * SCORE_STEPS


def face(
    seed: int,
    *,
    box: tuple[int, int, int, int] = (10, 10, 110, 110),
    noise: float = 0.0,
    score: float = 1.0,
) -> dict[str, Any]:
    assert 0 <= seed < 255 and 0 <= noise * NOISE_STEPS < 255 and 0 < score * SCORE_STEPS < 255
    return {"seed": seed, "box": box, "noise": noise, "score": score}


def fake_image(*faces: dict[str, Any], size: tuple[int, int] | None = None) -> bytes:
    """A PNG with the faces painted on black, largest first, so a smaller face that
    overlaps a larger one stays visible."""
    width = max([64, *(f["box"][2] + 8 for f in faces)])
    height = max([64, *(f["box"][3] + 8 for f in faces)])
    width, height = size or (width, height)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    for f in sorted(faces, key=lambda f: -Box(*f["box"]).area):
        left, top, right, bottom = f["box"]
        rgb[top:bottom, left:right] = _colour(f)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def _colour(f: dict[str, Any]) -> tuple[int, int, int]:
    return (
        1 + f["seed"],
        1 + round(f["noise"] * NOISE_STEPS),
        1 + round(f["score"] * SCORE_STEPS),
    )


def unit_vector(seed: int, noise: float = 0.0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    v /= np.linalg.norm(v)
    if noise:
        v = v + np.random.default_rng(seed + 10_000).normal(size=128) * noise / np.sqrt(128)
    return v.astype(np.float32)


class FakeDetector:
    """Finds each colour's rectangle. Colours covering under half of their bounding box
    (the blended edges of a reduced image) are not faces."""

    max_side = 800

    def detect(
        self, rgb: np.ndarray, timings: Timings | None = None, *, quick: bool = False
    ) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        wide = rgb.astype(np.int32)
        packed = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
        faces = []
        left = packed[packed != 0]
        while left.size:  # one colour at a time (np.unique sorts: slow on big images)
            key = int(left[0])
            left = left[left != key]
            colour = (key >> 16, (key >> 8) & 255, key & 255)
            ys, xs = np.nonzero(packed == key)
            count = len(xs)
            box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if min(box.width, box.height) < 3 or count < box.area / 2:
                continue
            faces.append(
                DetectedFace(
                    box=box,
                    side=max(box.width, box.height),
                    score=(int(colour[2]) - 1) / SCORE_STEPS,
                    landmarks=_landmarks(box),
                    frame=(width, height),
                )
            )
        return sorted(faces, key=lambda f: -f.score)


def _landmarks(b: Box) -> tuple[tuple[float, float], ...]:
    # dlib's 5-point order: right eye outer, right eye inner, left eye outer and inner, nose
    # (its "right eye" is the one on the image's right).
    x = [0.8, 0.6, 0.2, 0.4, 0.5]
    y = [0.4, 0.4, 0.4, 0.4, 0.65]
    return tuple(
        (b.left + fx * b.width, b.top + fy * b.height) for fx, fy in zip(x, y, strict=True)
    )


class FakeEncoder:
    name = "fake"
    model = "fake"
    compatible = frozenset({"fake"})
    dim = 128
    input_size = 8

    def __init__(self, delay: float = 0.0) -> None:
        self.encode_calls = 0
        self.delay = delay  # seconds each encode takes, to test timeouts

    def align(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray:
        b = face.box
        centre = rgb[(b.top + b.bottom) // 2, (b.left + b.right) // 2]
        return np.broadcast_to(centre, (self.input_size, self.input_size, 3)).copy()

    def align_views(self, rgb: np.ndarray, face: DetectedFace, views: Any) -> np.ndarray:
        # A flat-colour chip looks the same from every view.
        return np.stack([self.align(rgb, face) for _ in views])

    def encode(self, chips: np.ndarray) -> np.ndarray:
        self.encode_calls += 1
        if self.delay:
            time.sleep(self.delay)
        colours = chips[:, self.input_size // 2, self.input_size // 2].astype(int)
        vectors = [unit_vector(r - 1, (g - 1) / NOISE_STEPS) for r, g, _ in colours]
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)


def fake_pipeline(
    *,
    max_pixels: int = 40_000_000,
    delay: float = 0.0,
    flip_average: bool = True,
    also_compatible: frozenset[str] = frozenset(),
    template_views: int = 2,
) -> Pipeline:
    """The real Pipeline around the fake detector and encoder. ``also_compatible``: stored
    encoder names the fake stands in for (e.g. what `gallery import` stores)."""
    encoder = FakeEncoder(delay)
    encoder.compatible = FakeEncoder.compatible | also_compatible
    return Pipeline(
        detector=FakeDetector(),
        encoder=encoder,
        max_pixels=max_pixels,
        version="fake-1",
        flip_average=flip_average,
        template_views=template_views,
    )
