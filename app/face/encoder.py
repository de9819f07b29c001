"""What an encoder model is: aligned chips in, embeddings out.

An encoder owns everything about its input and output: the chip size, how a face is
aligned into it from the detector's landmarks, and the embedding's length. The pipeline
(app/face/pipeline.py) and the gallery only ever see these attributes, so a new model is
one module (like app/face/dlib_resnet.py), one entry in app/face/registry.py and one in
models/manifest.json, and nothing in app/api or app/gallery changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from app.face.detect import DetectedFace
from app.face.views import View

if TYPE_CHECKING:
    from app.face.weights import WeightFile
    from app.settings import Settings


@runtime_checkable
class FaceEncoder(Protocol):
    """One encoder model, in one runtime.

    Attributes:
        name: what stored faces record as their ``encoder`` (model and runtime).
        model: the model's registry name; embeddings of one model are comparable, of two
            models never (the gallery keeps them apart).
        compatible: every stored ``encoder`` name whose embeddings this one may be
            compared with (the same model in another runtime).
        dim: embedding length.
        input_size: the chip's side in pixels.
    """

    name: str
    model: str
    compatible: frozenset[str]
    dim: int
    input_size: int

    def align(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The ``(input_size, input_size, 3)`` uint8 chip of ``face``, cut from ``rgb``
        (the image the face was detected in, in its coordinates)."""
        ...

    def align_views(self, rgb: np.ndarray, face: DetectedFace, views: Sequence[View]) -> np.ndarray:
        """``(len(views), input_size, input_size, 3)`` uint8 chips of ``face``: each view
        (app/face/views.py) relative to ``align``'s alignment, whose chip the standard
        view gives exactly."""
        ...

    def encode(self, chips: np.ndarray) -> np.ndarray:
        """Embed a batch of aligned chips: ``(N, input_size, input_size, 3)`` uint8 in,
        ``(N, dim)`` float32 out; N may be 0."""
        ...


@dataclass(frozen=True)
class EncoderModel:
    """A registry entry (app/face/registry.py): how to build one encoder model.

    Attributes:
        name: the registry name, chosen with ``FACEVERIFY_MODEL``; also what imported
            embeddings are stored as, so its encoders must list it in ``compatible``.
        dim: the embedding's length.
        weights: the models/manifest.json entries it needs.
        fingerprint: what a calibration records about the model (input, alignment,
            network), so a calibration fitted for another model is flagged.
        version_tag: its part of the pipeline version string stored with each face.
        build: makes the encoder from the settings (its runtime) and the checked weights.
        prepare: one-time work before serving (a conversion), run once by ``serve``
            before worker processes start; None when there is none.
        ahead: starts loading the encoder on a thread while ``serve`` imports the rest.
        compatible: its encoders' ``compatible`` (the stored names an index holds).
    """

    name: str
    dim: int
    weights: tuple[str, ...]
    fingerprint: dict[str, str]
    version_tag: str
    build: Callable[[Settings, dict[str, WeightFile]], FaceEncoder]
    prepare: Callable[[Settings, dict[str, WeightFile]], object] | None = None
    # Starts loading the encoder on a thread (app/face/ahead.py), for ``build`` to take:
    # run by ``serve`` (one worker) after ``prepare``. None: ``build`` loads it all.
    ahead: Callable[[Settings, dict[str, WeightFile]], None] | None = None
    # The stored encoder names its encoders accept (FaceEncoder.compatible): what an
    # index of this model holds, known without loading the model.
    compatible: frozenset[str] = frozenset()
