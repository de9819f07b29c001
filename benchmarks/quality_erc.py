"""Does the quality score predict recognition errors? (issue 15)

    python benchmarks/quality_erc.py [--fit] [--lfw DIR]

Every lfw-devtrain image is run through the service's pipeline once (both cores; cached
in data/benchmarks/lfw_quality.npz, git-ignored): its main face's measures
(app/face/quality.py) and its enrollment embedding. Pairs are drawn by identity as
`faceverify calibrate` draws them (app/scoring/pairs.py: 10 folds by a hash of the
person's name, so no one is in two folds).

``--fit`` fits the penalty weights by cross-validation: for each fold, least squares with
non-negative weights of each photo's mean distance to the other photos of its person
on the other nine folds' people (the priors, quality.PRIORS, held as shipped); the
held-out fold's people are scored with it. It prints each fold's weights and the
weights fitted on all folds (what app/face/quality.py ships). Without ``--fit`` the
shipped weights score every pair.

Then the error-versus-reject characteristic (NIST's ERC): FNMR at the threshold as the
lowest-quality x% of genuine comparisons (by the lower quality of the two photos) are
discarded, against discarding at random (the mean of 200 random draws).
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from app.face import quality
from app.face.detect import main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.scoring.pairs import FOLDS, identity_fold, identity_pairs
from app.settings import Settings

LFW = Path("/work/shared/data/lfw-devtrain/images")
CACHE = Path("data/benchmarks/lfw_quality.npz")
REJECT = (0.01, 0.02, 0.05, 0.10, 0.20)

_pipeline = None


def _embed(paths: list[str]) -> list[tuple[str, list[float] | None, list[float] | None]]:
    global _pipeline
    if _pipeline is None:
        _pipeline = build_pipeline(Settings())
    out = []
    for path in paths:
        faces = _pipeline.find_faces(Path(path).read_bytes(), Timings())
        if not faces:
            out.append((path, None, None))
            continue
        face = main_face(faces)
        m = quality.measure(face)
        row = m.row()
        embedding = _pipeline.embed([face], Timings())[0]
        out.append((path, row, embedding.tolist()))
    return out


def load(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    if CACHE.exists():
        data = np.load(CACHE)
        if list(data["measures_names"]) == list(quality.MEASURES):
            return list(data["paths"]), data["measures"], data["embeddings"]
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    chunks = [paths[i : i + 200] for i in range(0, len(paths), 200)]
    rows: list[tuple[str, list[float] | None, list[float] | None]] = []
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done in pool.map(_embed, chunks):
            rows += done
            print(f"\r{len(rows)}/{len(paths)} images", end="", flush=True)
    print()
    found = [r for r in rows if r[1] is not None]
    print(f"{len(rows) - len(found)} images without a face")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        CACHE,
        paths=np.array([r[0] for r in found]),
        measures=np.array([r[1] for r in found], dtype=np.float64),
        embeddings=np.array([r[2] for r in found], dtype=np.float32),
        measures_names=np.array(quality.MEASURES),
    )
    return (
        [r[0] for r in found],
        np.array([r[1] for r in found], dtype=np.float64),
        np.array([r[2] for r in found], dtype=np.float32),
    )


def genuine_distance(paths: list[str], embeddings: np.ndarray) -> np.ndarray:
    """Each photo's mean distance to the other photos of its person (NaN for people
    with one photo): what a quality score should predict."""
    people: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        people.setdefault(Path(path).parent.name, []).append(i)
    target = np.full(len(paths), np.nan)
    for rows in people.values():
        if len(rows) > 1:
            e = embeddings[rows]
            d = np.linalg.norm(e[:, None] - e[None], axis=2)
            target[rows] = d.sum(axis=1) / (len(rows) - 1)
    return target


def fit_nonnegative(x: np.ndarray, y: np.ndarray, iters: int = 5000) -> np.ndarray:
    """Least squares ``y ~ b + x @ w`` with ``w >= 0`` (each penalty may only lower the
    quality), by projected gradient descent; returns ``w``."""
    scale = x.std(axis=0) + 1e-9
    xs = x / scale
    w = np.zeros(x.shape[1])
    b = float(y.mean())
    step = 1 / np.linalg.eigvalsh(xs.T @ xs / len(y)).max()
    for _ in range(iters):
        r = xs @ w + b - y
        w = np.maximum(0.0, w - step * (xs.T @ r) / len(y))
        b -= float(r.mean())
    return w / scale


def erc(same_quality: np.ndarray, fails: np.ndarray) -> list[tuple[float, float, float]]:
    """(reject share, FNMR after discarding the lowest-quality share, after random)."""
    order = np.argsort(same_quality, kind="stable")
    rng = np.random.default_rng(0)
    out = []
    for share in REJECT:
        keep = order[int(round(share * len(order))) :]
        randoms = [fails[rng.permutation(len(fails))[: len(keep)]].mean() for _ in range(200)]
        out.append((share, float(fails[keep].mean()), float(np.mean(randoms))))
    return out


def _named(weights: np.ndarray) -> str:
    return json.dumps(dict(zip(quality.PENALTIES, np.round(weights, 4).tolist(), strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--fit", action="store_true")
    args = parser.parse_args()
    threshold = Settings().threshold
    paths, measures, embeddings = load(args.lfw)
    index = {p: i for i, p in enumerate(paths)}
    pairs = [
        p for p in identity_pairs(args.lfw) if p.same and str(p.a) in index and str(p.b) in index
    ]
    a = np.array([index[str(p.a)] for p in pairs])
    b = np.array([index[str(p.b)] for p in pairs])
    distance = np.linalg.norm(embeddings[a] - embeddings[b], axis=1)
    fails = (distance > threshold).astype(np.float64)
    penalties = np.array([quality.penalties_of(row) for row in measures])
    print(f"{len(paths)} photos with a face, {len(pairs)} genuine pairs, FNMR {fails.mean():.4f}")
    if args.fit:
        # Fitted on photos, scored on pairs; each fold's people are scored by weights
        # fitted on the other nine folds' people only.
        target = genuine_distance(paths, embeddings)
        fold_of = np.array([identity_fold(Path(p).parent.name, FOLDS) for p in paths])
        held_out = np.zeros(len(paths))
        # The priors (quality.PRIORS: what lfw-devtrain cannot show) stay as shipped;
        # the other weights are fitted to what the priors leave unexplained.
        prior = np.array([name in quality.PRIORS for name in quality.PENALTIES])
        fixed = penalties[:, prior] @ quality.WEIGHTS[prior]

        def fitted(rows: np.ndarray) -> np.ndarray:
            w = quality.WEIGHTS.copy()
            w[~prior] = fit_nonnegative(penalties[rows][:, ~prior], target[rows] - fixed[rows])
            return w

        for fold in range(FOLDS):
            w = fitted((fold_of != fold) & np.isfinite(target))
            held_out[fold_of == fold] = penalties[fold_of == fold] @ w
            print(
                f"fold {fold}: "
                + json.dumps(dict(zip(quality.PENALTIES, np.round(w, 4), strict=True)))
            )
        w = fitted(np.isfinite(target))
        print("all folds: " + _named(w))
        pair_quality = -np.maximum(held_out[a], held_out[b])
        print("ERC with each fold scored by weights fitted on the other nine:")
    else:
        scores = np.array([quality.assess_penalties(p).quality for p in penalties])
        pair_quality = np.minimum(scores[a], scores[b])
        pcts = np.percentile(scores, [1, 5, 10, 25, 50, 75])
        print("quality percentiles 1/5/10/25/50/75: " + " ".join(f"{q:.1f}" for q in pcts))
        print("ERC with the shipped weights:")
    base = fails.mean()
    for share, fnmr, rand in erc(pair_quality, fails):
        print(
            f"  discard {share:4.0%}: FNMR {fnmr:.4f} ({(fnmr - base) / base:+.1%}), "
            f"random {rand:.4f} ({(rand - base) / base:+.1%})"
        )


if __name__ == "__main__":
    main()
