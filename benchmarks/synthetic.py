"""Synthetic galleries shaped like real face embeddings (issue 12's benchmarks).

Random unit vectors make approximate search unrealistically hard for graph indexes
(HNSW) and easy for cell indexes: every stranger is at the same distance, in all 128
directions. Real dlib embeddings are not like that: identities spread along a few dozen
directions far more than along the rest. So the galleries here are drawn from Gaussians
fitted to real embeddings, one for where identities lie (their centres) and one for how
one person's photos scatter around their centre:

    FACEVERIFY_DATA_DIR=/tmp/lfw faceverify enroll ../shared/data/lfw-devtrain/images
    python benchmarks/synthetic.py fit /tmp/lfw/faceverify.db  # -> data/benchmarks/...

The gallery is made from lfw-devtrain read by path (9,120 faces, 3,923 people); the
fitted file holds only means and covariance factors, and lives under the git-ignored
data/ folder: nothing from LFW is committed. ``generate`` draws N faces of N/k subjects
with k faces each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPE = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "lfw_devtrain_shape.npz"


def fit(db: Path, out: Path = SHAPE) -> None:
    from app.gallery import Gallery

    rows = Gallery.connect(f"sqlite:///{db}").faces.load(dim=128)
    subjects = np.asarray(rows.subject_ids)
    x = rows.matrix.astype(np.float64)
    names, inverse, sizes = np.unique(subjects, return_inverse=True, return_counts=True)
    centres = np.zeros((len(names), x.shape[1]))
    np.add.at(centres, inverse, x)
    centres /= sizes[:, None]
    several = sizes[inverse] >= 2
    # Residuals of people with several photos, scaled by n/(n-1) for the centre's own
    # share of each residual (unbiased within-person covariance).
    residuals = (x - centres[inverse])[several]
    scale = np.sqrt(sizes[inverse][several] / (sizes[inverse][several] - 1))[:, None]
    within = np.cov((residuals * scale).T)
    # Centres of people with one photo carry a whole photo's scatter, those with n
    # photos 1/n of it: take it out of the spread of the centres.
    between = np.cov(centres.T) - within * float(np.mean(1.0 / sizes))
    between = _nearest_psd(between)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        mean=centres.mean(axis=0),
        between=np.linalg.cholesky(between + 1e-9 * np.eye(len(between))),
        within=np.linalg.cholesky(within + 1e-9 * np.eye(len(within))),
        people=len(names),
        faces=len(x),
    )
    print(f"fitted on {len(x)} faces of {len(names)} people -> {out}")


def _nearest_psd(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return (vectors * np.clip(values, 1e-8, None)) @ vectors.T


def generate(
    n: int, *, per_subject: int = 2, seed: int = 0, shape: Path = SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """(subject number per face, float32 embeddings): n faces, per_subject a subject."""
    if not shape.is_file():
        raise SystemExit(f"{shape} is missing: fit it first (see benchmarks/synthetic.py)")
    model = np.load(shape)
    rng = np.random.default_rng(seed)
    dim = len(model["mean"])
    faces = np.empty((n, dim), dtype=np.float32)
    owner = np.arange(n, dtype=np.int64) // per_subject
    step = 1_000_000 - 1_000_000 % per_subject
    for start in range(0, n, step):
        stop = min(start + step, n)
        first, last = start // per_subject, -(-stop // per_subject)
        centres = model["mean"] + rng.standard_normal((last - first, dim)) @ model["between"].T
        chunk = centres[owner[start:stop] - first]
        chunk += rng.standard_normal(chunk.shape) @ model["within"].T
        faces[start:stop] = chunk
    return owner, faces


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit")
    f.add_argument("db", type=Path)
    s = sub.add_parser("stats")
    s.add_argument("--faces", type=int, default=20_000)
    args = parser.parse_args()
    if args.command == "fit":
        fit(args.db)
    else:
        owner, x = generate(args.faces)
        rng = np.random.default_rng(2)
        same = np.linalg.norm(x[0::2] - x[1::2], axis=1)
        a, b = rng.integers(0, len(x), (2, 20_000))
        keep = owner[a] != owner[b]
        other = np.linalg.norm(x[a[keep]] - x[b[keep]], axis=1)
        for name, d in (("same subject", same), ("different", other)):
            q = np.percentile(d, [5, 50, 95])
            print(f"{name:13s} distance p5/p50/p95 {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}")
        print(f"same > 0.6: {np.mean(same > 0.6):.4f}; other <= 0.6: {np.mean(other <= 0.6):.5f}")


if __name__ == "__main__":
    main()
