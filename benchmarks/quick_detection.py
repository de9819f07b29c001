"""Does the probes' quick detection pass (FACEVERIFY_DETECT_QUICK_SIDE) cost accuracy?

    python benchmarks/quick_detection.py [--pairs 1100] [--size 640]

lfw-devtrain's photos are 250x250, below the quick side, so on them the quick pass never
runs and `faceverify evaluate` cannot see it. Here each photo of View 1 pairs
(pairsDevTrain.txt; same and different people, balanced) is upscaled to SIZE x SIZE
(the face then spans ~40% of the side, like a selfie or the 640x480 benchmark photo) and
embedded three ways: the full search (as enrollment does), the quick pass (as probes
do), and, for scale, the full search on the same photo shifted by 4 px (how much an
embedding moves for a nuisance nobody would call an error). Prints accuracy at the
threshold for enrolled-full vs probe-quick pairs against full vs full, and how far the
distances move.
"""

from __future__ import annotations

import argparse
import io
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from app.face.detect import main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.settings import Settings

LFW = Path("/work/shared/data/lfw-devtrain")


def pairs(n: int) -> list[tuple[Path, Path, bool]]:
    lines = (LFW / "pairsDevTrain.txt").read_text().splitlines()
    count = int(lines[0])
    same = [line.split("\t") for line in lines[1 : 1 + count]]
    diff = [line.split("\t") for line in lines[1 + count : 1 + 2 * count]]

    def path(name: str, number: str) -> Path:
        return LFW / "images" / name / f"{name}_{int(number):04d}.jpg"

    out = [(path(a, i), path(a, j), True) for a, i, j in same[: n // 2]]
    out += [(path(a, i), path(b, j), False) for a, i, b, j in diff[: n // 2]]
    return out


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1100)
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args()
    settings = Settings()
    pipeline = build_pipeline(settings)
    chosen = pairs(args.pairs)
    photos = sorted({p for a, b, _ in chosen for p in (a, b)})
    emb: dict[str, dict[Path, np.ndarray | None]] = {"full": {}, "quick": {}, "shifted": {}}
    moved_box = 0
    for path in photos:
        with Image.open(path) as img:
            big = img.convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC)
        shifted = big.crop((4, 4, args.size, args.size))
        boxes = {}
        for way, data, quick in (
            ("full", jpeg(big), False),
            ("quick", jpeg(big), True),
            ("shifted", jpeg(shifted), False),
        ):
            timings = Timings()
            faces = pipeline.find_faces(data, timings, quick=quick)
            emb[way][path] = pipeline.embed([main_face(faces)], timings)[0] if faces else None
            boxes[way] = main_face(faces).box if faces else None
        moved_box += boxes["quick"] != boxes["full"]
    threshold = settings.threshold

    def scored(a_way: str, b_way: str) -> tuple[float, list[float | None], int]:
        right, ds, missing = 0, [], 0
        for a, b, same in chosen:
            ea, eb = emb[a_way][a], emb[b_way][b]
            if ea is None or eb is None:
                missing += 1
                right += not same  # no face: no match
                ds.append(None)
                continue
            d = float(np.linalg.norm(ea - eb))
            ds.append(d)
            right += (d <= threshold) == same
        return right / len(chosen), ds, missing

    base_acc, base_d, base_missing = scored("full", "full")
    print(f"{len(chosen)} pairs, {len(photos)} photos at {args.size}x{args.size}")
    print(f"  full  vs full    accuracy {base_acc:.4f}  (no face: {base_missing})")
    for way in ("quick", "shifted"):
        acc, ds, missing = scored("full", way)
        moved = [
            abs(x - y) for x, y in zip(ds, base_d, strict=True) if x is not None and y is not None
        ]
        print(
            f"  full  vs {way:7s} accuracy {acc:.4f}  (no face: {missing}); distance moved "
            f"median {statistics.median(moved):.4f}, p95 {np.percentile(moved, 95):.4f}"
        )
    print(f"  the quick pass's box differs from the full search's on {moved_box} photos")


if __name__ == "__main__":
    main()
