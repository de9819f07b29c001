"""The models faceverify can run, by name, and the one place that wires a pipeline.

``FACEVERIFY_MODEL`` names the encoder model (an entry of :data:`ENCODER_MODELS`);
``FACEVERIFY_ENCODER`` its runtime where it has several. Adding a model: its own module
(like app/face/dlib_resnet.py, ending in an :class:`EncoderModel`), a line here, and its
weight files in models/manifest.json. Nothing in app/api or app/gallery changes: they see
the pipeline's ``model``, ``dim`` and ``encoder_name`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.face import dlib_resnet, quality
from app.face.detect import HogFaceDetector
from app.face.encoder import EncoderModel
from app.face.hog import prime_frontal
from app.face.pipeline import Pipeline
from app.face.views import FAST
from app.face.weights import WeightFile, load_weights
from app.face.yunet import YunetDetector

if TYPE_CHECKING:
    from app.settings import Settings

ENCODER_MODELS: dict[str, EncoderModel] = {m.name: m for m in (dlib_resnet.SPEC,)}


def encoder_model(settings: Settings) -> EncoderModel:
    return ENCODER_MODELS[settings.model]


def load_checked_weights(settings: Settings) -> dict[str, WeightFile]:
    """Every file of models/manifest.json, found and checked by sha256 (the ResNet's
    .dat may be absent where the ONNX encoder's checked conversion of it is cached)."""

    def prepared(name: str, sha256: str) -> bool:
        return (
            name == dlib_resnet.MODEL
            and settings.encoder == "onnx"
            and dlib_resnet.has_prepared_onnx(sha256, settings.resolved_cache_dir())
        )

    return load_weights(settings.manifest_file(), settings.weights_dir, prepared=prepared)


def build_detector(settings: Settings, weights: dict[str, WeightFile]) -> HogFaceDetector:
    cnn = settings.detect_cnn_max_side if settings.detect_fallback == "cnn" else 0
    yunet = (
        YunetDetector(weights["yunet"].path, max_side=settings.detect_yunet_max_side)
        if settings.detect_fallback == "yunet"
        else None
    )
    return HogFaceDetector(
        weights["shape_predictor_5"].path,
        max_side=settings.detect_max_side,
        upsample=settings.detect_upsample,
        retry_max_side=settings.detect_retry_max_side,
        cnn_path=weights["mmod_cnn_detector"].path if cnn else None,
        cnn_max_side=cnn,
        cnn_workers=settings.detect_cnn_workers,
        cnn_wait_seconds=settings.inference_wait_seconds,
        quick_side=settings.detect_quick_side,
        # One set of dlib objects per inference slot, loaded at start-up.
        instances=settings.max_concurrent_inference,
        yunet=yunet,
    )


def build_pipeline(settings: Settings, weights: dict[str, WeightFile] | None = None) -> Pipeline:
    """The face pipeline the settings describe: detector, encoder model and runtime."""
    weights = weights if weights is not None else load_checked_weights(settings)
    prime_detectors(settings)
    quality.warm(settings.max_concurrent_inference)  # the quality score's own detectors
    return Pipeline(
        detector=build_detector(settings, weights),
        encoder=encoder_model(settings).build(settings, weights),
        max_pixels=settings.max_image_pixels,
        version=pipeline_version(settings),
        flip_average=settings.flip_average,
        template_views=settings.template_views,
    )


def prime_detectors(settings: Settings) -> str:
    """dlib's frontal face detector for this process, from its saved form in the cache
    (written there the first time; app/face/hog.py prime_frontal)."""
    import dlib

    return prime_frontal(dlib, settings.resolved_cache_dir())


def prepare(settings: Settings, weights: dict[str, WeightFile]) -> None:
    """The one-time work before workers start: the encoder's (the ONNX conversion) and
    the frontal detector's saved form in the cache."""
    spec = encoder_model(settings)
    if spec.prepare is not None:
        spec.prepare(settings, weights)
    prime_detectors(settings)


def load_ahead(settings: Settings, weights: dict[str, WeightFile]) -> None:
    """Start loading the ONNX sessions on threads (app/face/ahead.py) while ``serve``
    imports the service; :func:`build_pipeline` takes them (issue 41). After
    :func:`prepare`: the encoder's conversion must exist."""
    spec = encoder_model(settings)
    if spec.ahead is not None:
        spec.ahead(settings, weights)
    if settings.detect_fallback == "yunet":
        YunetDetector.ahead(weights["yunet"].path)


def fallback_name(settings: Settings) -> str:
    """The fallback detector as fingerprints and pipeline versions name it ("" none)."""
    if settings.detect_fallback == "yunet":
        return f"yunet{settings.detect_yunet_max_side}"
    return f"cnn{settings.detect_cnn_max_side}" if settings.detect_cnn_max_side else ""


def detector_fingerprint(settings: Settings) -> dict[str, object]:
    fallback = fallback_name(settings)
    return {
        "detector": "dlib_hog" + (f"+{fallback}" if fallback else ""),
        "detect_upsample": settings.detect_upsample,
        "detect_max_side": settings.detect_max_side,
        "detect_retry_max_side": settings.detect_retry_max_side,
        "detect_quick_side": settings.detect_quick_side,
    }


def calibration_fingerprint(settings: Settings) -> dict[str, object]:
    """The settings a calibration holds for: those that change distances. The runtimes
    of one model compute the same network, so the runtime is not among them."""
    return {
        **detector_fingerprint(settings),
        **encoder_model(settings).fingerprint,
        "num_jitters": settings.num_jitters,
        "flip_average": settings.flip_average,
    }


def curve_fingerprint(settings: Settings, curve: str) -> dict[str, object]:
    """What a calibration curve (app/face/views.py CURVES) was fitted with: the fast
    curve's distances come from fast embeddings alone; the others' also from templates
    of ``template_views`` views."""
    base = calibration_fingerprint(settings)
    return base if curve == FAST else {**base, "template_views": settings.template_views}


def pipeline_version(settings: Settings) -> str:
    """A short string naming everything that changes an embedding (stored per face)."""
    return (
        f"hog-u{settings.detect_upsample}-m{settings.detect_max_side}"
        f"-r{settings.detect_retry_max_side}-{fallback_name(settings) or 'cnn0'}"
        f"/{encoder_model(settings).version_tag}"
        f"/j{settings.num_jitters}{'/flip' if settings.flip_average else ''}"
    )
