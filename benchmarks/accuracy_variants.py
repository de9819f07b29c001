"""Accuracy and cost of pipeline variants on LFW View 1 pairs (lfw-devtrain).
Prints a table for docs/ACCURACY.md; asserts nothing.

    python benchmarks/accuracy_variants.py [--lfw ../shared/data/lfw-devtrain] [--jitter-pairs 300]

Variants: which face when several are found (largest / nearest the centre), flip
averaging, what to do when HOG finds nothing (more upsampling; dlib's CNN detector),
and dlib's jitter (on a subset: it costs num_jitters encoder runs per face).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.face.detect import DetectedFace, HogFaceDetector
from app.face.dlib_resnet import DlibEncoder, OnnxEncoder, prepared_onnx_model
from app.face.image import decode_image
from app.face.registry import load_checked_weights
from app.face.weights import installed_weights_dir
from app.geometry import Box
from app.scoring import metrics
from app.scoring.pairs import read_lfw_pairs
from app.settings import Settings


def central(faces: list[DetectedFace], size: int = 250) -> DetectedFace:
    c = size / 2
    return min(
        faces,
        key=lambda f: (
            ((f.box.left + f.box.right) / 2 - c) ** 2 + ((f.box.top + f.box.bottom) / 2 - c) ** 2
        ),
    )


def largest(faces: list[DetectedFace]) -> DetectedFace:
    return max(faces, key=lambda f: f.box.area)


def summarize(name: str, pairs, emb: dict, cost_ms: float) -> None:
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    d = np.array(
        [
            np.linalg.norm(emb[p.a] - emb[p.b])
            if emb.get(p.a) is not None and emb.get(p.b) is not None
            else np.inf
            for p in pairs
        ]
    )
    mean, std, _, _ = metrics.kfold_accuracy(same, d, folds)
    rate, _ = metrics.eer(same, d)
    missing = sum(1 for v in emb.values() if v is None)
    print(
        f"{name:44s} {100 * metrics.accuracy(same, d, 0.6):7.2f} {100 * mean:7.2f} "
        f"{100 * std:5.2f} {100 * rate:6.2f} {missing:5d} {cost_ms:8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-devtrain"))
    parser.add_argument("--jitter-pairs", type=int, default=300)
    args = parser.parse_args()
    import dlib

    settings = Settings()
    weights = load_checked_weights(settings)
    sp_path = weights["shape_predictor_5"].path
    onnx = OnnxEncoder(
        prepared_onnx_model(weights["dlib_resnet_v1"], settings.resolved_cache_dir())
    )
    pairs = read_lfw_pairs(args.lfw / "pairsDevTrain.txt", args.lfw / "images")
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    images = {p: decode_image(p.read_bytes(), max_pixels=10**8) for p in paths}

    def aligned(img: np.ndarray, faces: list[DetectedFace]) -> list[DetectedFace]:
        return [replace(f, chip=onnx.align(img, f)) for f in faces]

    hog = HogFaceDetector(sp_path)
    t = time.perf_counter()
    found = {p: aligned(img, hog.detect(img)) for p, img in images.items()}
    detect_ms = (time.perf_counter() - t) / len(paths) * 1000
    missing = [p for p, f in found.items() if not f]

    def embed(choice, flip: bool = False, faces=found) -> tuple[dict, float]:
        chosen = {p: choice(f) for p, f in faces.items() if f}
        keys = list(chosen)
        chips = np.stack([chosen[k].chip for k in keys])
        t = time.perf_counter()
        e = onnx.encode(chips)
        if flip:
            e = (e + onnx.encode(chips[:, :, ::-1])) / 2
        ms = (time.perf_counter() - t) / len(keys) * 1000
        out = dict.fromkeys(faces)
        out.update(zip(keys, e, strict=True))
        return out, ms

    print(
        f"{len(pairs)} pairs, {len(paths)} images; HOG (upsample 0, retry <= 1024 px): "
        f"{detect_ms:.1f} ms/image, {len(missing)} without a face"
    )
    print(
        f"{'variant':44s} {'acc@0.6':>7s} {'10-fold':>7s} {'+-':>5s} {'EER':>6s} "
        f"{'noface':>5s} {'ms/img':>8s}"
    )
    base, enc_ms = embed(largest)
    summarize("baseline: largest face", pairs, base, detect_ms + enc_ms)
    emb, enc_ms = embed(central)
    summarize("face nearest the centre", pairs, emb, detect_ms + enc_ms)
    emb, enc_ms2 = embed(largest, flip=True)
    summarize("largest + flip average", pairs, emb, detect_ms + enc_ms2)
    emb_cf, _ = embed(central, flip=True)
    summarize("centre + flip average", pairs, emb_cf, detect_ms + enc_ms2)

    # Fallbacks for the images HOG missed.
    more = HogFaceDetector(sp_path, retry_max_side=4096)
    t = time.perf_counter()
    extra = {p: aligned(images[p], more.detect(images[p])) for p in missing}
    more_ms = (time.perf_counter() - t) / max(len(missing), 1) * 1000
    faces_more = {**found, **extra}
    emb, _ = embed(largest, faces=faces_more)
    summarize(
        f"+ upsample up to 4096 px when none ({more_ms:.0f} ms each)",
        pairs,
        emb,
        detect_ms + enc_ms,
    )

    cnn = dlib.cnn_face_detection_model_v1(
        str(installed_weights_dir() / "mmod_human_face_detector.dat")
    )
    predictor = dlib.shape_predictor(str(sp_path))
    t = time.perf_counter()
    cnn_faces = {}
    for p in missing:
        dets = cnn(images[p], 1)
        faces = []
        for det in dets:
            r = det.rect
            shape = predictor(images[p], r)
            face = DetectedFace(
                box=Box(r.left(), r.top(), r.right(), r.bottom()),
                side=r.width(),
                score=det.confidence,
                landmarks=tuple((float(q.x), float(q.y)) for q in shape.parts()),
            )
            faces.append(replace(face, chip=onnx.align(images[p], face)))
        cnn_faces[p] = faces
    cnn_ms = (time.perf_counter() - t) / max(len(missing), 1) * 1000
    still = sum(1 for f in cnn_faces.values() if not f)
    emb, _ = embed(largest, faces={**found, **cnn_faces})
    summarize(f"+ CNN detector when none ({cnn_ms:.0f} ms each)", pairs, emb, detect_ms + enc_ms)
    emb, _ = embed(central, flip=True, faces={**found, **cnn_faces})
    summarize("centre + flip + CNN when none", pairs, emb, detect_ms + enc_ms2)
    print(f"  (CNN found faces in {len(missing) - still} of the {len(missing)} images HOG missed)")

    # Jitter: dlib's own, on a subset of pairs.
    sub = (
        pairs[: args.jitter_pairs // 2]
        + pairs[len(pairs) // 2 : len(pairs) // 2 + args.jitter_pairs // 2]
    )
    sub_paths = sorted({p.a for p in sub} | {p.b for p in sub})
    sub_faces = {p: found[p] for p in sub_paths}
    base_sub, _ = embed(largest, faces=sub_faces)
    summarize(f"subset of {len(sub)} pairs: baseline", sub, base_sub, detect_ms + enc_ms)
    for jitters in (10,):
        enc = DlibEncoder(weights["dlib_resnet_v1"].path, num_jitters=jitters)
        t = time.perf_counter()
        emb = dict.fromkeys(sub_paths)
        for p in sub_paths:
            if sub_faces[p]:
                emb[p] = enc.encode(largest(sub_faces[p]).chip[None])[0]
        ms = (time.perf_counter() - t) / len(sub_paths) * 1000
        summarize(f"subset: dlib jitter {jitters}", sub, emb, detect_ms + ms)


if __name__ == "__main__":
    main()
