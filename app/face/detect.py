"""Face detection: boxes, scores and five landmarks (dlib HOG; a CNN or YuNet fallback).

A detector finds faces and their landmarks and nothing more: cutting the aligned chip is
the encoder model's job (it owns its input size and alignment, app/face/encoder.py), so
a new encoder never touches this file, and a new detector never touches an encoder.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from app.face.cnn import CnnProcess
from app.face.cores import SpareCores, spare_cores
from app.face.hog import SplitHog, frontal_layout
from app.face.pool import InstancePool
from app.face.timing import Timings
from app.face.yunet import YunetDetector, YunetFace
from app.geometry import Box

# dlib's CNN detector fails (its filters do not fit) on images a few pixels across;
# below this side there is no face to look for anyway (found by schemathesis).
CNN_MIN_SIDE = 40


@dataclass(frozen=True)
class DetectedFace:
    """One face as found in a photo, ready to encode.

    Attributes:
        box: the detector's box mapped to full resolution and clipped to the image.
        side: the detector box's side at full resolution before clipping (HOG boxes are
            square); what the minimum-face-size rule looks at.
        score: HOG detector confidence (SVM margin; > 0 is a detection, higher is surer).
        landmarks: five (x, y) points at full resolution: eye corners and nose base
            (dlib's 5-point order: right eye outer, right eye inner, left eye outer, left
            eye inner, nose base).
        upsample: how many upsampling steps the detector needed to find it.
        chip: the encoder's aligned input, cut by the pipeline from the image the face was
            found in (None until then).
        views: the template recipe's chips (app/face/views.py), when the pipeline was
            asked for them.
    """

    box: Box
    side: int
    score: float
    landmarks: tuple[tuple[float, float], ...]
    upsample: int = 0
    detector: str = "hog"
    # (width, height) of the image the face was found in; (0, 0) when unknown.
    frame: tuple[int, int] = (0, 0)
    chip: np.ndarray | None = field(default=None, repr=False, compare=False)
    views: np.ndarray | None = field(default=None, repr=False, compare=False)

    def rescaled(self, factor: float) -> DetectedFace:
        """The same face in coordinates ``factor`` times larger (the chip is unchanged)."""
        return replace(
            self,
            box=self.box.scaled(factor),
            side=int(round(self.side * factor)),
            landmarks=tuple((x * factor, y * factor) for x, y in self.landmarks),
            frame=(int(round(self.frame[0] * factor)), int(round(self.frame[1] * factor))),
        )


class FaceDetector(Protocol):
    """Anything that finds faces in an RGB image. ``max_side`` is the longest side it
    looks at (the decoder need not decode more than ~1.25x that)."""

    max_side: int

    def detect(
        self, rgb: np.ndarray, timings: Timings | None = None, *, quick: bool = False
    ) -> list[DetectedFace]:
        """Every face in an ``(H, W, 3)`` uint8 RGB image, most confident first, in the
        image's own coordinates; time spent added to ``timings`` (``detect_ms`` for
        finding, ``align_ms`` for landmarks). ``quick``: the photo is a probe, whose
        main face is all that is used; a detector may then skip looking for small
        faces when it has found a large one."""
        ...


@dataclass
class _DlibModels:
    """One thread's set of dlib objects (none of them may be shared between threads)."""

    hog: SplitHog
    predictor: Any


@dataclass
class _Found:
    """What a detector pass found, before landmarks: dlib rectangles at the scale of
    the image it ran on (``scale`` times the photo's)."""

    rects: Any
    scores: Any
    scale: float
    upsample: int
    detector: str


class HogFaceDetector:
    """dlib's HOG frontal-face detector plus the 5-point shape predictor.

    Thread-safe: each call borrows its own set of dlib objects from a pool
    (:mod:`app.face.pool`), since dlib's detectors are not safe to share.

    Detection runs on a copy scaled down so its longest side is at most ``max_side``;
    landmarks (and so the chip) come from the full-resolution image, so downscaling costs
    no alignment precision. When nothing is found, detection is retried with one more
    upsampling step at a time while the upsampled longest side stays within
    ``retry_max_side``: small photos (a 128 px portrait) still work, and a large photo
    with no face is not searched at a cost of seconds.
    """

    def __init__(
        self,
        shape_predictor_path: Path,
        *,
        max_side: int = 800,
        upsample: int = 0,
        retry_max_side: int = 1024,
        cnn_path: Path | None = None,
        cnn_max_side: int = 400,
        cnn_workers: int = 1,
        cnn_wait_seconds: float = 10.0,
        quick_side: int = 0,
        instances: int = 1,
        cores: SpareCores | None = None,
        yunet: YunetDetector | None = None,
    ) -> None:
        import dlib

        self._dlib = dlib
        layout = frontal_layout(dlib)
        spare = cores or spare_cores()

        def load() -> _DlibModels:
            return _DlibModels(
                hog=SplitHog(dlib, layout, spare),
                predictor=dlib.shape_predictor(str(shape_predictor_path)),
            )

        # The CNN fallback runs in a child process of its own (app/face/cnn.py): dlib's
        # binding holds the GIL for its whole call.
        self.cnn = (
            CnnProcess(cnn_path, workers=cnn_workers, wait_seconds=cnn_wait_seconds)
            if cnn_path
            else None
        )

        # The fast fallback (app/face/yunet.py), used instead of the CNN when given.
        self.yunet = yunet
        self.models = InstancePool(load)
        self.models.warm(instances, later=True)
        self.max_side = max_side
        self.upsample = upsample
        self.retry_max_side = retry_max_side
        self.cnn_max_side = cnn_max_side
        self.quick_side = quick_side

    def detect(
        self, rgb: np.ndarray, timings: Timings | None = None, *, quick: bool = False
    ) -> list[DetectedFace]:
        """Find every frontal face in an ``(H, W, 3)`` uint8 RGB image.

        With ``quick`` (probes: only their main face matters), HOG first looks at a copy
        of at most ``quick_side`` px, where it takes a quarter of the time or less and
        finds faces of at least ~80/quick_side of the photo's longest side (selfies, ID
        photos, webcam frames); only when that finds nothing does the full search run.
        Faces too small for the quick pass are then not reported beside a large one.

        Returns:
            The faces, in the detector's order (most confident first).
        """
        with self.models.borrow() as models:
            return self._detect(models, rgb, timings or Timings(), quick)

    def warm(self, rgb: np.ndarray) -> None:
        """First use of the HOG passes (the quick ones, split on a spare core) and the
        landmarks, on any photo, at start-up; the CNN fallback's child process starts
        on a thread meanwhile (~1 s, so the first photo HOG misses does not wait for
        it)."""
        if self.cnn is not None:
            threading.Thread(target=self.cnn.warm, name="cnn-warm", daemon=True).start()
        with self.models.borrow() as models:
            self._quick(models, rgb)
            height, width = rgb.shape[:2]
            models.predictor(rgb, self._dlib.rectangle(0, 0, width // 2, height // 2))

    def _detect(
        self, models: _DlibModels, rgb: np.ndarray, timings: Timings, quick: bool
    ) -> list[DetectedFace]:
        with timings.measure("detect_ms"):
            found = self._search(models, rgb, quick)
        with timings.measure("align_ms"):
            return self._landmarks(models, rgb, found)

    def _search(self, models: _DlibModels, rgb: np.ndarray, quick: bool) -> _Found:
        """The quick passes (probes), then the full search. With YuNet, it looks once
        before the full search (after the quick passes, which find most probes' faces
        at a few ms): where it sees no face at all (not even at YUNET_GATE) the photo
        has none, and the costlier passes are skipped (a face-less probe costs the quick
        passes and one YuNet pass, ~20-25 ms here, where it cost ~0.9 s with the CNN)."""
        sides = self._quick_sides(rgb) if quick else []
        for side in sides:
            found = self._hog_at(models, rgb, side)
            if found is not None:
                return found
        return self._find(models, rgb, look_first=bool(sides))

    def _quick_sides(self, rgb: np.ndarray) -> list[int]:
        """The sides of the quick passes: quick_side, then 1.5x it, each only while
        smaller than the full search's copy (faces of ~17-25% of the longest side)."""
        limit = min(max(rgb.shape[:2]), self.max_side)
        if not self.quick_side:
            return []
        return [s for s in (self.quick_side, self.quick_side * 3 // 2) if s < limit]

    def _quick(self, models: _DlibModels, rgb: np.ndarray) -> _Found | None:
        """The quick passes alone (warm-up); None if none finds a face."""
        for side in self._quick_sides(rgb):
            found = self._hog_at(models, rgb, side)
            if found is not None:
                return found
        return None

    def _hog_at(self, models: _DlibModels, rgb: np.ndarray, side: int) -> _Found | None:
        """HOG without upsampling on a copy whose longest side is ``side``."""
        longest = max(rgb.shape[:2])
        # Grey: HOG's gradients over one channel instead of the strongest of three,
        # 4.6 ms against 6.0 at 320x240 (the boxes only seed the landmarks, which
        # are found on the full colour photo).
        grey = _shrink(rgb, longest / side, mode="L")
        rects, scores = models.hog.run(grey)
        return _Found(rects, scores, side / longest, 0, "hog") if len(rects) else None

    def _find(self, models: _DlibModels, rgb: np.ndarray, *, look_first: bool = False) -> _Found:
        """The full search: HOG on a copy of at most max_side; (with YuNet) YuNet's look,
        where a photo it sees no face in stops; HOG with upsampling while the copy stays
        within retry_max_side; the fallback's own faces. ``look_first``: YuNet looks
        before HOG's pass (a probe the quick passes missed: no face is then likelier
        than one HOG's full pass finds, and the look costs half that pass)."""
        height, width = rgb.shape[:2]
        seen: list[YunetFace] | None = None
        if look_first and self.yunet is not None:
            seen = self.yunet.detect(rgb, YUNET_GATE)
            if not seen:
                return _nothing()
        scale = min(1.0, self.max_side / max(height, width))
        small = rgb if scale == 1.0 else _resize(rgb, scale)
        found = self._hog_upsampled(models, small, scale, self.upsample)
        if found is not None:
            return found
        if self.yunet is not None:
            seen = self.yunet.detect(rgb, YUNET_GATE) if seen is None else seen
            if not seen:
                return _nothing()
        found = self._upsampled(models, small, scale)
        if found is not None:
            return found
        if self.yunet is not None:
            # HOG's boxes are preferred where it finds the face (dlib's predictor is
            # fitted to them); YuNet's faces otherwise, above its own threshold.
            faces = [f for f in seen or () if f.score >= self.yunet.score_threshold]
            rects = [self._dlib.rectangle(*hog_like_box(f)) for f in faces]
            return _Found(rects, [f.score for f in faces], 1.0, 0, "yunet")
        if self.cnn is not None and min(height, width) >= CNN_MIN_SIDE:
            # HOG found nothing: dlib's CNN detector on a copy of at most cnn_max_side
            # (its cost grows with the pixels: ~330 ms at 250x250 here).
            scale = min(1.0, self.cnn_max_side / max(height, width))
            small = rgb if scale == 1.0 else _resize(rgb, scale)
            detections = self.cnn.detect(small)
            rects = [self._dlib.rectangle(*d[:4]) for d in detections]
            return _Found(rects, [d[4] for d in detections], scale, 0, "cnn")
        return _nothing()

    def _upsampled(self, models: _DlibModels, small: np.ndarray, scale: float) -> _Found | None:
        """HOG with one more upsampling step at a time, while the upsampled copy stays
        within retry_max_side (small photos: a 128 px portrait); None if it finds
        nothing."""
        longest = max(small.shape[:2])
        upsample = self.upsample + 1
        while longest * 2**upsample <= self.retry_max_side:
            found = self._hog_upsampled(models, small, scale, upsample)
            if found is not None:
                return found
            upsample += 1
        return None

    def _hog_upsampled(
        self, models: _DlibModels, small: np.ndarray, scale: float, upsample: int
    ) -> _Found | None:
        if upsample:
            rects, scores, _ = models.hog.whole.run(small, upsample, 0.0)
        else:
            rects, scores = models.hog.run(small)
        return _Found(rects, scores, scale, upsample, "hog") if len(rects) else None

    def _landmarks(self, models: _DlibModels, rgb: np.ndarray, found: _Found) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        scale, faces = found.scale, []
        for rect, score in zip(found.rects, found.scores, strict=True):
            left, top = rect.left() / scale, rect.top() / scale
            right, bottom = (rect.right() + 1) / scale, (rect.bottom() + 1) / scale
            full = self._dlib.rectangle(
                int(round(left)), int(round(top)), int(round(right)) - 1, int(round(bottom)) - 1
            )
            shape = models.predictor(rgb, full)
            box = Box(
                left=max(0, int(round(left))),
                top=max(0, int(round(top))),
                right=min(width, int(round(right))),
                bottom=min(height, int(round(bottom))),
            )
            faces.append(
                DetectedFace(
                    box=box,
                    side=int(round(max(right - left, bottom - top))),
                    score=float(score),
                    landmarks=tuple((float(p.x), float(p.y)) for p in shape.parts()),
                    upsample=found.upsample,
                    detector=found.detector,
                    frame=(width, height),
                )
            )
        return faces


# The square box HOG would draw around a face, from YuNet's eyes and mouth: its side is
# HOG_SIDE times the distance from the eyes' midpoint to the mouth's, its centre HOG_CENTRE
# of the way from the eyes to the mouth (medians over 391 lfw-devtrain photos where both
# detectors found the face: 2.34 and 0.52). dlib's 5-point predictor is fitted to HOG's
# boxes, so it finds the landmarks best in one like them.
HOG_SIDE = 2.34
HOG_CENTRE = 0.52
# The score from which YuNet's look counts as "a face may be here" (its own faces are
# used from its SCORE_THRESHOLD, 0.6; below that only HOG's upsampled passes can still
# find one). On the 9,525 lfw-devtrain photos its best score was 0.876 at the lowest, so
# no face HOG finds is lost to the gate; a cat's face (chelsea.png) scores 0.39.
YUNET_GATE = 0.5


def _nothing() -> _Found:
    return _Found([], [], 1.0, 0, "hog")


def hog_like_box(face: YunetFace) -> tuple[int, int, int, int]:
    """dlib rectangle corners (left, top, right, bottom, inclusive) for ``face``."""
    marks = np.asarray(face.landmarks, dtype=np.float64)
    eyes, mouth = (marks[0] + marks[1]) / 2, (marks[3] + marks[4]) / 2
    span = float(np.linalg.norm(mouth - eyes))
    if span < 1.0:  # landmarks on one point: the box YuNet drew, made square
        side = max(face.right - face.left, face.bottom - face.top)
        cx, cy = (face.left + face.right) / 2, (face.top + face.bottom) / 2
    else:
        side = HOG_SIDE * span
        cx, cy = eyes + HOG_CENTRE * (mouth - eyes)
    half = side / 2
    left, top = int(round(cx - half)), int(round(cy - half))
    return left, top, left + int(round(side)) - 1, top + int(round(side)) - 1


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box pre-shrink, then a proper filter; quality is ample for HOG.
    small = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small)


def _shrink(rgb: np.ndarray, factor: float, mode: str = "RGB") -> np.ndarray:
    """``rgb`` made ``factor`` times smaller with a box filter (by a whole factor with
    Image.reduce: 0.3 ms at 640x480, where a bilinear resize takes 5), in ``mode``."""
    image = Image.fromarray(rgb)
    if factor == int(factor):
        small = image.reduce(int(factor))
    else:
        height, width = rgb.shape[:2]
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        small = image.resize(size, Image.Resampling.BOX)
    return np.asarray(small if mode == small.mode else small.convert(mode))


def largest(faces: list[DetectedFace]) -> DetectedFace:
    """The face with the largest box (ties: the more confident, i.e. earlier, one)."""
    return max(faces, key=lambda f: f.box.area)


def main_face(faces: list[DetectedFace]) -> DetectedFace:
    """The face a photo is most likely "of": the largest, discounted by its distance from
    the centre, side x (1 - d) with d = 0 at the centre and 1 in a corner.

    On lfw-devtrain (135 of 3,443 View 1 images have several faces) this beats "the
    largest": 10-fold accuracy 98.68% against 98.50% (docs/ACCURACY.md). Without a known
    frame it is the largest face.
    """

    def prominence(face: DetectedFace) -> float:
        width, height = face.frame
        if not width or not height:
            return float(face.box.area)
        cx = (face.box.left + face.box.right) / 2 / width - 0.5
        cy = (face.box.top + face.box.bottom) / 2 / height - 0.5
        d = math.hypot(cx, cy) / math.hypot(0.5, 0.5)
        return face.side * (1.0 - min(d, 1.0))

    return max(faces, key=prominence)
