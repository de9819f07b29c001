"""Detection recall and cost for candidate defaults. Prints tables; asserts nothing.

    python benchmarks/detection_sweep.py [--lfw DIR] [--photos DIR] [--limit N]

LFW (250x250, one labelled person centred): a face counts as found if any box covers
the image centre. Photos (larger, known faces): each photo's expected face count.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from app.face.detect import HogFaceDetector
from app.face.image import decode_image
from app.face.weights import installed_weights_dir

# Faces a person sees in each shared photo (frontal ones HOG can be expected to find).
PHOTOS = {
    "obama.jpg": 1,
    "obama2.jpg": 1,
    "obama3.jpg": 1,
    "obama-240p.jpg": 1,
    "obama-480p.jpg": 1,
    "obama-720p.jpg": 1,
    "obama-1080p.jpg": 1,
    "obama_small.jpg": 1,
    "biden.jpg": 1,
    "two_people.jpg": 2,
    "obama_and_biden.jpg": 2,
    "astronaut.png": 1,
    "curie_upright.jpg": 1,
    "hopper.jpg": 1,
    "32bit.png": 1,
    "coffee.png": 0,
    "chelsea.png": 0,
    "rocket.jpg": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw-devtrain/images"))
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/faces"))
    parser.add_argument("--limit", type=int, default=0, help="LFW images to use (0 = all)")
    args = parser.parse_args()
    sp = installed_weights_dir() / "shape_predictor_5_face_landmarks.dat"  # type: ignore[operator]

    files = sorted(args.lfw.glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    if args.limit:
        files = files[: args.limit]
    lfw = [decode_image(f.read_bytes(), max_pixels=10**8) for f in files]
    print(f"LFW devtrain: {len(lfw)} images (250x250)")
    print(f"{'upsample':>8} {'retry_max_side':>14} {'missed':>8} {'miss %':>7} {'ms/img':>7}")
    for upsample, retry in [(0, 0), (0, 1024), (1, 0), (1, 1024)]:
        det = HogFaceDetector(sp, upsample=upsample, retry_max_side=retry)
        start, missed = time.perf_counter(), 0
        for img in lfw:
            faces = det.detect(img)
            if not any(
                f.box.left < 125 < f.box.right and f.box.top < 125 < f.box.bottom for f in faces
            ):
                missed += 1
        ms = (time.perf_counter() - start) / len(lfw) * 1000
        print(f"{upsample:>8} {retry:>14} {missed:>8} {100 * missed / len(lfw):>7.2f} {ms:>7.1f}")

    photos = {n: decode_image((args.photos / n).read_bytes(), max_pixels=10**8) for n in PHOTOS}
    print(f"\nShared photos ({len(photos)}, 128 px to 2000x1428): expected face counts")
    print(f"{'max_side':>8} {'upsample':>8} {'right count':>11} {'ms/photo':>9}  wrong")
    for max_side in (512, 640, 800, 1024, 1280):
        for upsample in (0, 1):
            det = HogFaceDetector(sp, max_side=max_side, upsample=upsample, retry_max_side=1024)
            start, wrong = time.perf_counter(), []
            for name, img in photos.items():
                n = len(det.detect(img))
                if n != PHOTOS[name]:
                    wrong.append(f"{name}:{n}")
            ms = (time.perf_counter() - start) / len(photos) * 1000
            right = len(photos) - len(wrong)
            counts = f"{right:>5}/{len(photos):<5}"
            print(f"{max_side:>8} {upsample:>8} {counts} {ms:>9.1f}  {' '.join(wrong)}")


if __name__ == "__main__":
    main()
