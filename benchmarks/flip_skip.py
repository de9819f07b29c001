"""When can a probe skip the mirror-image encoder pass? (issue 13)

    python benchmarks/flip_skip.py [--margins 0.06,0.09,0.12,0.15]

Every image of lfw-devtrain is embedded both ways: the chip alone, and the mean of the
chip's and its mirror's embeddings (what enrollment stores and what the calibration was
fitted on). For identity-split pairs (app/scoring/pairs.py, as `faceverify calibrate`
draws them) with the first photo as the enrolled face (mirror-averaged) and the second
as the probe, it compares today's answer (probe mirror-averaged) with the skip rule:
use the probe's single-pass distance unless it lies within MARGIN of the threshold, and
only then pay for the mirror pass. Prints decisions changed (must be 0), how far the
match percent moved, and the share of probes that skipped the second pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.face.detect import main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.scoring.calibration import Calibration
from app.scoring.pairs import identity_pairs
from app.settings import Settings

LFW = Path("/work/shared/data/lfw-devtrain/images")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--margins", default="0.06,0.09,0.12,0.15")  # comma-separated
    parser.add_argument("--different", type=int, default=50_000)
    args = parser.parse_args()
    settings = Settings()
    pipeline = build_pipeline(settings.model_copy(update={"flip_average": False}))
    calibration = Calibration.load(settings.resolved_calibration_file())
    threshold = settings.threshold
    pairs = identity_pairs(LFW, different=args.different)
    photos = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    single: dict[Path, np.ndarray] = {}
    mirrored: dict[Path, np.ndarray] = {}
    for path in photos:
        faces = pipeline.find_faces(path.read_bytes(), Timings())
        if not faces:
            continue
        chip = main_face(faces).chip
        assert chip is not None
        both = pipeline.encoder.encode(np.stack([chip, chip[:, ::-1]]))
        single[path] = both[0]
        mirrored[path] = ((both[0] + both[1]) / 2).astype(np.float32)
    usable = [p for p in pairs if p.a in single and p.b in single]
    today = np.array([np.linalg.norm(mirrored[p.a] - mirrored[p.b]) for p in usable])
    quick = np.array([np.linalg.norm(mirrored[p.a] - single[p.b]) for p in usable])
    same = np.array([p.same for p in usable])
    print(f"{len(usable)} pairs ({same.sum()} same), {len(single)} photos with a face")
    gap = np.abs(quick - today)
    print(
        f"single-pass vs mirror-averaged probe distance: |diff| median {np.median(gap):.4f}, "
        f"p99 {np.percentile(gap, 99):.4f}, max {gap.max():.4f}"
    )
    pct_today = np.array([calibration.percent(float(d)) for d in today])
    for margin in (float(m) for m in args.margins.split(",")):
        flip = np.abs(quick - threshold) <= margin
        rule = np.where(flip, today, quick)
        changed = int(((rule <= threshold) != (today <= threshold)).sum())
        pct = np.array([calibration.percent(float(d)) for d in rule])
        moved = np.abs(pct - pct_today)
        acc_today = float(((today <= threshold) == same).mean())
        acc_rule = float(((rule <= threshold) == same).mean())
        print(
            f"margin {margin:.2f}: mirror pass on {flip.mean():.1%} of probes; decisions "
            f"changed {changed}; percent moved p99 {np.percentile(moved, 99):.2f}, max "
            f"{moved.max():.2f} points; accuracy {acc_rule:.4f} (always mirrored {acc_today:.4f})"
        )


if __name__ == "__main__":
    main()
