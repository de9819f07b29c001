"""The models measured in-process: the encoder against dlib's own, the photo-to-embedding
recipes against face_recognition's way, and exact identify by gallery size."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from app.bench.measure import in_turns, rss_mb, timed_runs
from app.errors import ModelFileError
from app.face.baseline import FaceRecognitionBaseline
from app.face.detect import largest, main_face
from app.face.dlib_resnet import DIM, DlibEncoder, OnnxEncoder, prepared_onnx_model
from app.face.recipes import Recipes
from app.face.registry import build_pipeline, load_checked_weights
from app.face.timing import Timings
from app.face.weights import WeightFile
from app.settings import Settings
from app.vectors.index import ExactIndex


def _with_dlib_weights(settings: Settings) -> dict[str, WeightFile]:
    """The weights, the ResNet's .dat included: the baseline runs dlib's own encoder."""
    weights = load_checked_weights(settings)
    if weights["dlib_resnet_v1"].prepared_only:
        raise ModelFileError(
            "faceverify bench compares with dlib's own encoder and needs "
            f"{weights['dlib_resnet_v1'].path}, which this installation leaves out (the "
            "container image ships the ONNX conversion only): run it from a pip install."
        )
    return weights


def bench_encoders(settings: Settings, chips: np.ndarray, repeats: int) -> dict[str, Any]:
    weights = _with_dlib_weights(settings)
    resnet = weights["dlib_resnet_v1"]
    onnx = OnnxEncoder(
        prepared_onnx_model(resnet, settings.resolved_cache_dir()), threads=settings.onnx_threads
    )
    dlib_enc = DlibEncoder(resnet.path)
    result: dict[str, Any] = {}
    for batch in (1, 16):
        batch_chips = np.resize(chips, (batch, *chips.shape[1:]))
        for name, encoder in (("dlib", dlib_enc), ("onnx", onnx)):
            n = max(3, repeats // batch) if name == "dlib" else repeats
            timed = timed_runs(lambda e=encoder, c=batch_chips: e.encode(c), n)  # type: ignore[misc]
            per_face = [ms / batch for ms in timed]
            result[f"{name}_batch{batch}"] = {
                "median_ms_per_face": round(statistics.median(per_face), 2),
                "p95_ms_per_face": round(float(np.percentile(per_face, 95)), 2),
            }
        result[f"speedup_batch{batch}"] = round(
            result[f"dlib_batch{batch}"]["median_ms_per_face"]
            / result[f"onnx_batch{batch}"]["median_ms_per_face"],
            1,
        )
    return result


def bench_pipelines(settings: Settings, photos: dict[str, bytes], repeats: int) -> dict[str, Any]:
    """The service's recipes (app/face/recipes.py: decode, downscaled HOG, 5-point chip,
    ONNX) against face_recognition's way (app/face/baseline.py)."""
    weights = _with_dlib_weights(settings)
    recipes = Recipes(build_pipeline(settings, weights), settings.threshold, settings.mirror_margin)
    reference = FaceRecognitionBaseline(weights, settings.max_image_pixels)

    def probe(data: bytes, thorough: bool) -> None:
        """A probe's way (verify, identify, compare): the quick detection pass, then the
        chip alone (fast: the mirror pass is added only near the threshold) or the
        template's views (mode=thorough)."""
        timings = Timings()
        faces = recipes.find_probe(data, timings, thorough=thorough)
        recipes.embed_probes([main_face(faces)], timings, thorough=thorough)

    def enrollment(data: bytes) -> None:
        """Enrollment's way: the full search and the template (FACEVERIFY_TEMPLATE_VIEWS
        views averaged; 2: the chip and its mirror)."""
        timings = Timings()
        faces = recipes.find_enrollment(data, timings)
        recipes.embed_enrollment([largest(faces)], timings)

    pipeline = recipes.pipeline

    def ours(data: bytes) -> None:
        probe(data, False)

    def thorough(data: bytes) -> None:
        probe(data, True)

    def baseline(data: bytes) -> None:
        reference.embed(data)

    result: dict[str, Any] = {}
    for name, data in photos.items():
        n_base = 3 if name == "12MP" else max(3, repeats // 4)
        samples = in_turns(
            {
                "ours": (lambda d=data: ours(d), repeats),  # type: ignore[misc]
                "enrollment": (lambda d=data: enrollment(d), repeats),  # type: ignore[misc]
                "thorough": (lambda d=data: thorough(d), repeats),  # type: ignore[misc]
                "baseline": (lambda d=data: baseline(d), n_base),  # type: ignore[misc]
            }
        )
        ms = {key: statistics.median(values) for key, values in samples.items()}
        result[name] = {
            "ours_ms": round(ms["ours"], 1),
            "enrollment_ms": round(ms["enrollment"], 1),
            "thorough_probe_ms": round(ms["thorough"], 1),
            "template_views": pipeline.template_views,
            "baseline_ms": round(ms["baseline"], 1),
            "speedup": round(ms["baseline"] / ms["ours"], 1),
        }
    return result


def bench_identify(sizes: list[int], queries: int, dim: int = DIM) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for size in sizes:
        before = rss_mb()
        index = ExactIndex(dim)
        step = 100_000
        for start in range(0, size, step):
            n = min(step, size - start)
            vectors = rng.normal(size=(n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = [f"f{start + i}" for i in range(n)]
            index.add(ids, [f"s{(start + i) // 3}" for i in range(n)], vectors)
        after = rss_mb()
        probes = rng.normal(size=(queries, dim)).astype(np.float32)
        samples = []
        for probe in probes:
            t = time.perf_counter()
            index.search(probe, 5)
            samples.append((time.perf_counter() - t) * 1000)
        result[str(size)] = {
            "identify_ms_p50": round(statistics.median(samples), 2),
            "identify_ms_p95": round(float(np.percentile(samples, 95)), 2),
            "matrix_mb": round(index.nbytes() / 2**20, 1),
            "rss_growth_mb": round(after - before, 1),
        }
        del index
    return result
