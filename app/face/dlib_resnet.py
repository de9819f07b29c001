"""dlib's ResNet face encoder (``dlib_face_recognition_resnet_model_v1``): 150 px chips
aligned on five landmarks, 128-d embeddings, in two runtimes of the same network.

    onnx  the network converted to ONNX (app/face/onnx_convert.py), run by ONNX Runtime
    dlib  dlib's own implementation (the reference)

Both give the same embeddings within 1e-4 (tests/face/test_onnx.py), so faces stored by
either are compared with each other; they record their runtime in ``encoder``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.cpus import usable_cpus
from app.errors import ModelFileError
from app.face.ahead import ahead, made
from app.face.detect import DetectedFace
from app.face.encoder import EncoderModel, FaceEncoder
from app.face.pool import InstancePool
from app.face.views import View
from app.face.weights import WeightFile, sha256_file

if TYPE_CHECKING:
    from app.settings import Settings

MODEL = "dlib_resnet_v1"
# dlib's ResNet takes 150x150 chips (input_rgb_image_sized<150>) and outputs 128 floats.
CHIP_SIZE = 150
DIM = 128
# dlib python_examples/face_recognition.py and dlib's dnn_face_recognition_ex.cpp align
# with get_face_chip(img, shape, 150, 0.25): 150 px, 25% padding around the landmarks.
CHIP_PADDING = 0.25
# What each runtime stores as a face's ``encoder`` (unchanged since the first release).
RUNTIME_NAMES = {"dlib": "dlib_resnet_v1", "onnx": "dlib_resnet_v1_onnx"}


class _DlibResnet:
    """The model's input side, shared by both runtimes: 5-point alignment to the chip."""

    model = MODEL
    compatible = frozenset(RUNTIME_NAMES.values())
    dim = DIM
    input_size = CHIP_SIZE

    def align(self, rgb: np.ndarray, face: DetectedFace) -> np.ndarray:
        import dlib

        return np.asarray(dlib.get_face_chip(rgb, _shape(face), CHIP_SIZE, CHIP_PADDING))

    def align_views(self, rgb: np.ndarray, face: DetectedFace, views: Sequence[View]) -> np.ndarray:
        """``(len(views), 150, 150, 3)`` chips: each view's crop of the photo around the
        standard alignment (:mod:`app.face.views`); the standard view is ``align``'s chip
        exactly."""
        import dlib

        standard = dlib.get_face_chip_details(_shape(face), CHIP_SIZE, CHIP_PADDING)
        r = standard.rect
        cx, cy, side = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2, r.width()
        cos, sin = math.cos(standard.angle), math.sin(standard.angle)
        dims = dlib.chip_dims(CHIP_SIZE, CHIP_SIZE)
        crops: dict[tuple[float, float, float, float], np.ndarray] = {}
        out = np.empty((len(views), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        for i, view in enumerate(views):
            chip = crops.get(view.crop)
            if chip is None:
                # The shift is along the chip's axes, turned into the photo's.
                x = cx + (view.dx * cos - view.dy * sin) * side
                y = cy + (view.dx * sin + view.dy * cos) * side
                half = (side * view.scale - 1) / 2
                details = dlib.chip_details(
                    dlib.drectangle(x - half, y - half, x + half, y + half),
                    dims,
                    standard.angle + math.radians(view.angle),
                )
                chip = crops[view.crop] = np.asarray(dlib.extract_image_chip(rgb, details))
            out[i] = chip[:, ::-1] if view.mirror else chip
        return out


def _shape(face: DetectedFace) -> Any:
    """The face as dlib's 5-point shape. get_face_chip aligns on the parts alone (the
    rectangle is only carried along), so rebuilding it from the detector's landmarks
    (dlib's integer points) gives the same chip as the predictor's own object."""
    import dlib

    b = face.box
    return dlib.full_object_detection(
        dlib.rectangle(b.left, b.top, b.right - 1, b.bottom - 1),
        [dlib.point(int(x), int(y)) for x, y in face.landmarks],
    )


class DlibEncoder(_DlibResnet):
    """dlib's ``face_recognition_model_v1`` (the reference implementation).

    Measured here: 73-77 ms per face on one core, and it holds the GIL while it runs,
    so threads do not run two encodings at once (docs/CONCURRENCY.md). The network keeps
    each layer's output inside the object, so each call borrows its own instance from a
    pool rather than relying on the GIL (:mod:`app.face.pool`).
    """

    name = RUNTIME_NAMES["dlib"]

    def __init__(self, model_path: Path, *, num_jitters: int = 0) -> None:
        import dlib

        self.models = InstancePool(lambda: dlib.face_recognition_model_v1(str(model_path)))
        self.models.warm()
        self._num_jitters = num_jitters

    def encode(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        batch = [np.ascontiguousarray(chip) for chip in chips]
        with self.models.borrow() as model:
            vectors = model.compute_face_descriptor(batch, self._num_jitters)
        return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


class OnnxEncoder(_DlibResnet):
    """dlib's ResNet converted to ONNX (app/face/onnx_convert.py), run by ONNX Runtime.

    Same embeddings as :class:`DlibEncoder` within 1e-4 (tests/face/test_onnx.py),
    ~13-25x faster here, and ONNX Runtime releases the GIL while it runs, so threads
    overlap. A batch of chips is one run. One session serves every thread: ONNX Runtime
    documents ``Run`` as safe to call concurrently (it keeps no per-run state in the
    session), and tests/face/test_concurrency.py checks every answer under threads.
    """

    name = RUNTIME_NAMES["onnx"]

    def __init__(self, model_path: Path, *, threads: int = 0) -> None:
        self._session = made(
            ("onnx-encoder", str(model_path), threads), lambda: _session(model_path, threads)
        )

    @staticmethod
    def ahead(model_path: Path, *, threads: int = 0) -> None:
        """Start making the session on a thread (app/face/ahead.py)."""
        ahead(("onnx-encoder", str(model_path), threads), lambda: _session(model_path, threads))

    def encode(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        batch = np.ascontiguousarray(chips, dtype=np.uint8)
        (embeddings,) = self._session.run(["embeddings"], {"chips": batch})
        return np.asarray(embeddings, dtype=np.float32)


def _session(model_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # 0: one thread per usable CPU (in a container: its quota, not the host's cores);
    # ONNX Runtime's own default counts physical cores, one on this 2-vCPU machine:
    # 6.4 ms a face against 4.3.
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    # Idle pool threads spin-wait by default, holding a core for a while after each run:
    # the HOG pass and landmarks that follow ran 1.5x slower, and concurrent requests
    # lost the core to spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _cached_onnx(sha256: str, cache_dir: Path) -> tuple[Path, Path, bool]:
    """The conversion's file and record for weights of this sha256, and whether the file
    is there with the hash its record gives."""
    from app.face.onnx_convert import CONVERTER_VERSION

    stem = f"dlib_resnet_v1-{sha256[:16]}-c{CONVERTER_VERSION}"
    model, record = cache_dir / f"{stem}.onnx", cache_dir / f"{stem}.json"
    if not (model.is_file() and record.is_file()):
        return model, record, False
    try:
        meta = json.loads(record.read_text())
        expected, source = meta["onnx_sha256"], meta["source_sha256"]
    except (OSError, ValueError, KeyError):
        return model, record, False
    return model, record, source == sha256 and sha256_file(model) == expected


def prepared_onnx_file(sha256: str, cache_dir: Path) -> tuple[Path, str] | None:
    """The checked conversion of the weights with this sha256 and its own sha256, if the
    cache holds one (the image's SBOM lists it)."""
    model, record, ok = _cached_onnx(sha256, cache_dir)
    return (model, str(json.loads(record.read_text())["onnx_sha256"])) if ok else None


def has_prepared_onnx(sha256: str, cache_dir: Path) -> bool:
    """Whether the cache holds a checked conversion of the weights with this sha256 (it
    then stands in for the .dat, which the container image leaves out)."""
    return _cached_onnx(sha256, cache_dir)[2]


def prepared_onnx_model(resnet: WeightFile, cache_dir: Path) -> Path:
    """The ONNX conversion of the ResNet weights, made once into ``cache_dir``.

    The file name carries the .dat's sha256 and the converter version, so a different
    model or converter gets a new file. A sidecar JSON records the ONNX file's sha256;
    a cached file whose hash differs (corrupt, truncated, edited) is converted again.
    Nothing is downloaded: the conversion reads the installed .dat.
    """
    from app.face.onnx_convert import CONVERTER_VERSION, convert

    model, record, ok = _cached_onnx(resnet.sha256, cache_dir)
    if ok:
        return model
    if resnet.prepared_only or not resnet.path.is_file():
        raise ModelFileError(
            f"The ONNX conversion in {cache_dir} is missing or damaged and its source "
            f"{resnet.path} is not installed: reinstall face_recognition_models, or rebuild "
            "the image (its build stage makes the conversion)."
        )
    digest = convert(resnet.path, model)
    record.write_text(
        json.dumps(
            {
                "source": resnet.path.name,
                "source_sha256": resnet.sha256,
                "converter_version": CONVERTER_VERSION,
                "onnx_sha256": digest,
            },
            indent=2,
        )
    )
    return model


def _prepare(settings: Settings, weights: dict[str, WeightFile]) -> Path | None:
    if settings.encoder != "onnx":
        return None
    return prepared_onnx_model(weights[MODEL], settings.resolved_cache_dir())


def _ahead(settings: Settings, weights: dict[str, WeightFile]) -> None:
    if settings.encoder == "onnx":
        model = prepared_onnx_model(weights[MODEL], settings.resolved_cache_dir())
        OnnxEncoder.ahead(model, threads=settings.onnx_threads)


def _build(settings: Settings, weights: dict[str, WeightFile]) -> FaceEncoder:
    resnet = weights[MODEL]
    if settings.encoder == "dlib":
        if resnet.prepared_only:
            raise ModelFileError(
                f"FACEVERIFY_ENCODER=dlib needs {resnet.path}, which this installation "
                "leaves out (it ships the ONNX conversion only): use the default onnx encoder."
            )
        return DlibEncoder(resnet.path, num_jitters=settings.num_jitters)
    model = prepared_onnx_model(resnet, settings.resolved_cache_dir())
    return OnnxEncoder(model, threads=settings.onnx_threads)


SPEC = EncoderModel(
    name=MODEL,
    dim=DIM,
    weights=(MODEL,),
    fingerprint={
        "landmarks": "shape_predictor_5",
        "chip": f"{CHIP_SIZE}px_padding{CHIP_PADDING}",
        "network": "dlib_face_recognition_resnet_model_v1",
    },
    version_tag=f"sp5/chip{CHIP_SIZE}p{CHIP_PADDING}",
    build=_build,
    prepare=_prepare,
    ahead=_ahead,
    compatible=_DlibResnet.compatible,
)
