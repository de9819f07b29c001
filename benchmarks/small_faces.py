"""Faces a few metres from a camera: lfw-devtrain photos scaled into 640x480 frames.

    python benchmarks/small_faces.py [--fallback yunet|cnn] [--photos 200] [--sizes 95,60,40,33,24]

Each photo (LFW, 250x250, its face ~105 px wide as HOG boxes it) is shrunk so the face is
about the given width and pasted at a random place in a grey 640x480 frame, saved as a
JPEG; the served pipeline looks for it as it does for a probe (quick path first). Prints,
per width, how many photos had a face found and the median time per photo.

The photos are drawn (seed 2) from lfw-devtrain without the 400 (seed 1) that fitted the
YuNet-to-HOG box constants in app/face/detect.py, so the rate is on photos held out of
that fit. Needs ../shared/data/lfw-devtrain (or --root).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from pathlib import Path

from PIL import Image

from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.settings import Settings

# The width of an LFW photo's face as HOG boxes it (deep-funneled 250x250 images).
LFW_FACE_PX = 105
FIT_SEED, FIT_PHOTOS = 1, 400


def framed(path: Path, face_px: int, rng: random.Random) -> bytes:
    image = Image.open(path).convert("RGB")
    factor = LFW_FACE_PX / face_px
    size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    small = image.resize(size, Image.Resampling.LANCZOS)
    frame = Image.new("RGB", (640, 480), (120, 120, 120))
    frame.paste(small, (rng.randint(0, 640 - small.width), rng.randint(0, 480 - small.height)))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=90)
    return out.getvalue()


def held_out(root: Path, count: int) -> list[Path]:
    files = sorted(str(p) for p in root.glob("images/**/*.jpg"))
    fitted = set(random.Random(FIT_SEED).sample(files, FIT_PHOTOS))
    pool = [f for f in files if f not in fitted]
    return [Path(f) for f in random.Random(2).sample(pool, count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fallback", choices=("yunet", "cnn"), default="yunet")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--sizes", default="95,60,40,33,24")
    parser.add_argument("--root", type=Path, default=Path("../shared/data/lfw-devtrain"))
    args = parser.parse_args()
    sample = held_out(args.root, args.photos)
    pipeline = build_pipeline(Settings(detect_fallback=args.fallback))
    for px in (int(s) for s in args.sizes.split(",")):
        rng, found, times = random.Random(px), 0, []
        for path in sample:
            data = framed(path, px, rng)
            start = time.perf_counter()
            faces = pipeline.find_faces(data, Timings(), quick=True)
            times.append(time.perf_counter() - start)
            found += bool(faces)
        print(
            f"{args.fallback} face ~{px} px: found {found}/{len(sample)}  "
            f"median {statistics.median(times) * 1000:.0f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
