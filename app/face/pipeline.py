"""The face pipeline the service uses: decode -> detect -> align -> encode."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import numpy as np
from PIL import Image

from app.face.detect import DetectedFace, FaceDetector
from app.face.encoder import FaceEncoder
from app.face.image import decode_image_scaled
from app.face.timing import Timings
from app.face.views import recipe_name, recipe_views
from app.geometry import Box

# The face's width inside the encoder's chip (dlib's 150 px chip, padding 0.25 each side).
CHIP_FACE_PX = 100

# Picks one of a photo's faces (app.face.detect.main_face or largest), or several
# (:func:`every`: all of them).
Choose = Callable[[list[DetectedFace]], DetectedFace | list[DetectedFace]]


def every(faces: list[DetectedFace]) -> list[DetectedFace]:
    """All of a photo's faces get the template views (an IndexFaces of a group photo)."""
    return faces


class FacePipeline(Protocol):
    """What the service needs from the face side: :class:`Pipeline`, built by
    :func:`app.face.registry.build_pipeline`."""

    encoder_name: str
    flip_average: bool
    # The template recipe (app/face/views.py): how many views, and its recorded name.
    template_views: int
    template: str
    model: str
    compatible: frozenset[str]
    dim: int
    version: str

    def find_faces(
        self, data: bytes, timings: Timings, *, quick: bool = False, views: Choose | None = None
    ) -> list[DetectedFace]:
        """Decode ``data`` and return every face found in it, each with its chip
        (``quick``: a probe's, see FaceDetector.detect; ``views``: picks the face that
        also gets the template recipe's chips, for ``embed(..., thorough=True)``)."""
        ...

    def embed(
        self,
        faces: list[DetectedFace],
        timings: Timings,
        *,
        mirror: bool | None = None,
        thorough: bool = False,
    ) -> np.ndarray:
        """``(len(faces), dim)`` float32 embeddings of the given faces, in one batch
        (``mirror=False``: the chip's alone, even where the pipeline mirror-averages;
        ``thorough``: the mean over the template recipe's views, which ``find_faces``
        must have cut)."""
        ...

    def add_mirror(
        self, faces: list[DetectedFace], single: np.ndarray, timings: Timings
    ) -> np.ndarray:
        """The embeddings ``embed`` gives, from the single-pass ones ``embed(...,
        mirror=False)`` gave: one more pass, over the mirror images only."""
        ...


class Pipeline:
    """Decode (Pillow) -> detect (any FaceDetector) -> align and encode (any FaceEncoder).

    The detector gives boxes and landmarks; the encoder cuts its own chip from them in
    the decoded image and embeds it. With ``flip_average`` each face is embedded as the
    mean of its chip's and its mirror image's embeddings (one batch).
    """

    def __init__(
        self,
        *,
        detector: FaceDetector,
        encoder: FaceEncoder,
        max_pixels: int,
        version: str,
        flip_average: bool = False,
        template_views: int = 2,
    ) -> None:
        self.detector = detector
        self.encoder = encoder
        self.flip_average = flip_average
        self.template_views = template_views
        self.template = recipe_name(template_views)
        self._views = recipe_views(template_views)
        self.encoder_name = encoder.name
        self.model = encoder.model
        self.compatible = encoder.compatible
        self.dim = encoder.dim
        self.max_pixels = max_pixels
        self.version = version

    def find_faces(
        self, data: bytes, timings: Timings, *, quick: bool = False, views: Choose | None = None
    ) -> list[DetectedFace]:
        with timings.measure("decode_ms"):
            # Large JPEGs are decoded at reduced scale, down to 1.25x the detection size:
            # a face HOG can find (>= 80 px at detection size) is then still >= 100 px,
            # the face's width inside dlib's 150 px chip (25% padding each side).
            rgb, scale = decode_image_scaled(
                data, max_pixels=self.max_pixels, min_side=self.detector.max_side * 5 // 4
            )
        found = self.detector.detect(rgb, timings, quick=quick)
        if scale != 1.0 and found and max(f.side for f in found) < CHIP_FACE_PX and _jpeg(data):
            # Only faces smaller than the chip's in a JPEG decoded at reduced scale (its
            # DCT scaling: other formats were decoded in full already, then reduced): the
            # chips are cut from the photo's own pixels, not upsampled from the copy.
            with timings.measure("decode_ms"):
                rgb, _ = decode_image_scaled(data, max_pixels=self.max_pixels)
            found = [f.rescaled(1.0 / scale) for f in found]
            scale = 1.0
        with timings.measure("align_ms"):
            faces = [replace(f, chip=self.encoder.align(rgb, f)) for f in found]
            if views is not None and faces:
                # Only the face the caller will use: its crops cost ~0.3 ms each.
                chosen = views(faces)
                picked = chosen if isinstance(chosen, list) else [chosen]
                faces = [
                    replace(f, views=self.encoder.align_views(rgb, f, self._views))
                    if any(f is c for c in picked)
                    else f
                    for f in faces
                ]
        return faces if scale == 1.0 else [f.rescaled(1.0 / scale) for f in faces]

    def embed(
        self,
        faces: list[DetectedFace],
        timings: Timings,
        *,
        mirror: bool | None = None,
        thorough: bool = False,
    ) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        if thorough:
            return self._embed_views(faces, timings)
        chips = np.stack([_chip(f) for f in faces])
        with timings.measure("encode_ms"):
            if not (self.flip_average if mirror is None else mirror):
                return self.encoder.encode(chips)
            # One batch: the chips and their mirror images, averaged pairwise.
            both = self.encoder.encode(np.concatenate([chips, chips[:, :, ::-1]]))
            averaged: np.ndarray = ((both[: len(chips)] + both[len(chips) :]) / 2).astype(
                np.float32
            )
            return averaged

    def add_mirror(
        self, faces: list[DetectedFace], single: np.ndarray, timings: Timings
    ) -> np.ndarray:
        if not self.flip_average or not faces:
            return single
        mirrors = np.stack([_chip(f)[:, ::-1] for f in faces])
        with timings.measure("encode_ms"):
            mirrored: np.ndarray = ((single + self.encoder.encode(mirrors)) / 2).astype(np.float32)
            return mirrored

    def warm(self) -> DetectedFace:
        """Run each stage once on a made-up photo (a grey ramp, no face in it), so the
        first request after start-up does not pay for first use: Pillow's JPEG decoder,
        HOG and its spare-core helper, the landmarks, the chip, ONNX Runtime's memory
        and threads. Returns a made-up face with its chip (for the quality score's own
        warm-up)."""
        width, height = 640, 480
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        rgb = np.repeat(np.tile(ramp, (height, 1))[..., None], 3, axis=2).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
        decoded, _ = decode_image_scaled(buffer.getvalue(), max_pixels=self.max_pixels)
        warm_detector = getattr(self.detector, "warm", None)
        if warm_detector is not None:
            warm_detector(decoded)
        cx, cy = width // 2, height // 2
        face = DetectedFace(
            box=Box(cx - 100, cy - 100, cx + 100, cy + 100),
            side=200,
            score=1.0,
            landmarks=(
                (cx + 60, cy - 20),
                (cx + 20, cy - 20),
                (cx - 60, cy - 20),
                (cx - 20, cy - 20),
                (cx, cy + 40),
            ),
            frame=(width, height),
        )
        face = replace(face, chip=self.encoder.align(decoded, face))
        # Batches as a verify (1-2 chips) and a compare (2-4) make them.
        for count in (1, 2):
            self.embed([face] * count, Timings())
        return face

    def _embed_views(self, faces: list[DetectedFace], timings: Timings) -> np.ndarray:
        """Each face's mean embedding over its views, all faces' views in one batch."""
        if any(f.views is None for f in faces):
            raise ValueError("a thorough embedding needs the face's views (find_faces views=)")
        n = self.template_views
        with timings.measure("encode_ms"):
            every = self.encoder.encode(np.concatenate([f.views for f in faces]))
        mean: np.ndarray = every.reshape(len(faces), n, -1).mean(axis=1, dtype=np.float64)
        return mean.astype(np.float32)


def _jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _chip(face: DetectedFace) -> np.ndarray:
    if face.chip is None:
        raise ValueError("a face must come from Pipeline.find_faces (it has no chip)")
    return face.chip
