"""Which augmented views a thorough embedding should average (app/face/views.py), measured
on lfw-devtrain with identity-split folds. Prints a table for docs/ACCURACY.md; asserts
nothing.

    PYTHONPATH=. python benchmarks/augment_views.py [--lfw ../shared/data/lfw-devtrain]

Every image's main face (the enrollment search) is cut in every candidate crop and its
mirror and each chip embedded once; the embeddings are cached in the git-ignored
data/benchmarks/lfw_views.npz (they are LFW-derived: never commit them). Then each
candidate set of views is scored by averaging its chips' embeddings:

- left: both photos of a pair embedded with the set (thorough against thorough);
- right: the first photo with the set, the second with the chip and its mirror (an
  enrolled template against a fast probe).

Pairs are every same-person pair of the people with several photos (up to 30 each) and
as many different-person pairs drawn from app.scoring.pairs.identity_pairs' 100,000 (seed
0), in 10 folds that split people. EER and FNMR3 (false non-matches at a false match
rate of 1e-3) are on all 100,000 different-person pairs; 10-fold and the accuracies on the
balanced pairs. ``t`` is the distance with the false match rate 0.6 has on fast
embeddings, the service's threshold for such a curve.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from app.face.views import View

CACHE = Path("data/benchmarks/lfw_views.npz")
# Candidate crops; each is embedded with its mirror as well.
CROPS = (
    View(),
    View(scale=0.94),
    View(scale=1.06),
    View(scale=0.88),
    View(scale=1.12),
    View(angle=-3),
    View(angle=3),
    View(angle=-6),
    View(angle=6),
    View(dx=-0.025),
    View(dx=0.025),
    View(dy=-0.025),
    View(dy=0.025),
)
CANDIDATES = tuple(v for crop in CROPS for v in (crop, View(*crop.crop, mirror=True)))

_STATE: dict[str, object] = {}


def _init() -> None:
    from app.face.registry import build_pipeline
    from app.settings import Settings

    _STATE["pipeline"] = build_pipeline(Settings(onnx_threads=1))


def _embed(path: str) -> np.ndarray | None:
    from app.face.detect import main_face
    from app.face.image import decode_image
    from app.face.timing import Timings

    pipeline = _STATE["pipeline"]
    rgb = decode_image(Path(path).read_bytes(), max_pixels=pipeline.max_pixels)  # type: ignore[attr-defined]
    faces = pipeline.detector.detect(rgb, Timings())  # type: ignore[attr-defined]
    if not faces:
        return None
    chips = pipeline.encoder.align_views(rgb, main_face(faces), CANDIDATES)  # type: ignore[attr-defined]
    return pipeline.encoder.encode(chips).astype(np.float16)  # type: ignore[attr-defined]


def load(root: Path) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in (root / "images").glob("*/*.jpg"))
    if CACHE.exists():
        cached = np.load(CACHE)
        if list(cached["paths"]) == paths and str(cached["candidates"]) == repr(CANDIDATES):
            return paths, cached["views"]
    start = time.perf_counter()
    out = np.full((len(paths), len(CANDIDATES), 128), np.nan, dtype=np.float16)
    with ProcessPoolExecutor(max_workers=os.cpu_count(), initializer=_init) as pool:
        for i, vectors in enumerate(pool.map(_embed, paths, chunksize=16)):
            if vectors is not None:
                out[i] = vectors
            if i % 500 == 0:
                print(f"  {i}/{len(paths)} {time.perf_counter() - start:.0f} s", flush=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, paths=np.array(paths), views=out, candidates=np.array(repr(CANDIDATES)))
    return paths, out


def average(views: np.ndarray, chosen: list[int]) -> np.ndarray:
    return views[:, chosen, :].astype(np.float32).mean(axis=1)


def main() -> None:
    from app.scoring import metrics
    from app.scoring.pairs import identity_pairs

    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-devtrain"))
    args = parser.parse_args()
    paths, views = load(args.lfw)
    index = {p: i for i, p in enumerate(paths)}
    pairs = identity_pairs(args.lfw / "images", different=100_000, seed=0)
    a = np.array([index[str(p.a)] for p in pairs])
    b = np.array([index[str(p.b)] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    # Accuracies on as many different-person pairs as same-person ones (balanced).
    rng = np.random.default_rng(0)
    bal = same.copy()
    bal[rng.choice(np.flatnonzero(~same), size=int(same.sum()), replace=False)] = True
    missing = np.isnan(views[:, 0, 0]).sum()
    print(f"{len(paths)} images ({missing} without a face), {len(pairs)} pairs, {same.sum()} same")

    fast = average(views, [0, 1])
    d_fast = np.linalg.norm(fast[a] - fast[b], axis=1)
    # The service decides on a template's curve at the distance with the false match
    # rate 0.6 has on the fast one (app/scoring/calibration.py matched_threshold).
    rate = float((d_fast[~same] <= 0.6).mean())
    shifts = [18, 19, 20, 21, 22, 23, 24, 25]
    named = {
        "chip + mirror (fast)": [0, 1],
        "3 scales 0.94/1/1.06 + mirrors": [0, 1, 2, 3, 4, 5],
        "5 scales 0.88-1.12 + mirrors": list(range(10)),
        "rotations +-3 + mirrors": [0, 1, 10, 11, 12, 13],
        "rotations +-3, +-6 + mirrors": [0, 1, *range(10, 18)],
        "shifts +-0.025 + mirrors": [0, 1, *shifts],
        "5 scales, rotations +-3 + mirrors": [*range(10), 10, 11, 12, 13],
        "5 scales, shifts + mirrors (the recipe)": [*range(10), *shifts],
        "all 13 crops + mirrors": list(range(26)),
        "all 13 crops, no mirrors": list(range(0, 26, 2)),
    }
    print(f"impostor pairs at or below 0.6 on the fast embeddings: {100 * rate:.3f}%")
    print(
        f"{'views':42s} {'n':>3s} | {'EER':>5s} {'FNMR3':>6s} {'10-fold':>7s} {'@0.6':>6s}"
        f" {'t':>6s} {'@t':>6s} | {'EER':>5s} {'FNMR3':>6s} {'@t':>6s}"
    )
    for name, chosen in named.items():
        emb = average(views, chosen)
        cells = []
        for other in (emb, fast):  # both photos, or the first as a template only
            d = np.linalg.norm(emb[a] - other[b], axis=1).astype(np.float64)
            t = float(np.quantile(d[~same], rate))
            fnmr3 = float((d[same] > np.quantile(d[~same], 1e-3)).mean())
            ten, _, _, _ = metrics.kfold_accuracy(same[bal], d[bal], folds[bal])
            at = (metrics.accuracy(same[bal], d[bal], x) for x in (0.6, t))
            cells.append((metrics.eer(same, d)[0], fnmr3, ten, next(at), t, next(at)))
        (be, bf, bk, b6, bt, ba), (oe, of, _, _, ot, oa) = cells
        print(
            f"{name:42s} {len(chosen):3d} | {100 * be:5.2f} {100 * bf:6.2f} {100 * bk:7.2f}"
            f" {100 * b6:6.2f} {bt:6.3f} {100 * ba:6.2f} | {100 * oe:5.2f} {100 * of:6.2f}"
            f" {100 * oa:6.2f}"
        )


if __name__ == "__main__":
    main()
