"""Face encoders: aligned 150x150 RGB chips in, 128-d embeddings out.

Anything with ``name`` and ``encode`` is a :class:`FaceEncoder`; the service never
knows which one it holds, so a faster encoder (ONNX) or a test fake slots in unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from app.face.pool import InstancePool

# dlib's ResNet takes 150x150 chips (input_rgb_image_sized<150>) and outputs 128 floats.
CHIP_SIZE = 150
EMBEDDING_DIM = 128


@runtime_checkable
class FaceEncoder(Protocol):
    name: str

    def encode(self, chips: np.ndarray) -> np.ndarray:
        """Embed a batch of aligned chips.

        Args:
            chips: ``(N, 150, 150, 3)`` uint8 RGB, each made by
                :func:`app.face.detect.face_chip`.

        Returns:
            ``(N, 128)`` float32 embeddings; N may be 0.
        """
        ...


class DlibEncoder:
    """dlib's ``face_recognition_model_v1`` (the reference implementation).

    Measured here: 73-77 ms per face on one core, and it holds the GIL while it runs,
    so threads do not run two encodings at once (docs/CONCURRENCY.md). The network keeps
    each layer's output inside the object, so each call borrows its own instance from a
    pool rather than relying on the GIL (:mod:`app.face.pool`).
    """

    name = "dlib_resnet_v1"

    def __init__(self, model_path: Path, *, num_jitters: int = 0) -> None:
        import dlib

        self.models = InstancePool(lambda: dlib.face_recognition_model_v1(str(model_path)))
        self.models.warm()
        self._num_jitters = num_jitters

    def encode(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        batch = [np.ascontiguousarray(chip) for chip in chips]
        with self.models.borrow() as model:
            vectors = model.compute_face_descriptor(batch, self._num_jitters)
        return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


class OnnxEncoder:
    """dlib's ResNet converted to ONNX (app/face/onnx_convert.py), run by ONNX Runtime.

    Same embeddings as :class:`DlibEncoder` within 1e-4 (tests/test_onnx.py), ~13-25x
    faster here, and ONNX Runtime releases the GIL while it runs, so threads overlap.
    A batch of chips is one run. One session serves every thread: ONNX Runtime documents
    ``Run`` as safe to call concurrently (it keeps no per-run state in the session), and
    tests/test_concurrency.py checks every answer under threads against the one alone.
    """

    name = "dlib_resnet_v1_onnx"

    def __init__(self, model_path: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 0 lets ONNX Runtime use one thread per core.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        batch = np.ascontiguousarray(chips, dtype=np.uint8)
        (embeddings,) = self._session.run(["embeddings"], {"chips": batch})
        return np.asarray(embeddings, dtype=np.float32)
