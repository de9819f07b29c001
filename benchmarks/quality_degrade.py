"""Does the quality score fall as a photo is degraded? (issue 15)

    python benchmarks/quality_degrade.py [--faces DIR]

Each one-face photo of the shared test set is degraded step by step (Gaussian blur,
darkening, downscaling, in-plane rotation); every step's main face is scored and
compared with the step before. Prints, per degradation, the share of steps whose score
is lower than the step before (the target: >= 95% over all) and each photo's scores.
A step whose face is no longer found ends that photo's series (nothing to score).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

from app.face import quality
from app.face.detect import main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.settings import Settings

FACES = Path("/work/shared/data/faces")
PHOTOS = (
    "obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "obama-480p.jpg",
    "obama-720p.jpg", "astronaut.png", "hopper.png", "obama_small.jpg",
)  # fmt: skip

Step = Callable[[Image.Image, int], Image.Image]
DEGRADATIONS: dict[str, tuple[Step, int]] = {
    # Each: the image at step k (0 = the original), and the number of steps.
    "blur": (lambda im, k: im.filter(ImageFilter.GaussianBlur(0.8 * k)) if k else im, 6),
    "darken": (lambda im, k: ImageEnhance.Brightness(im).enhance(0.8**k), 6),
    "downscale": (
        lambda im, k: im.resize((max(1, int(im.width * 0.8**k)), max(1, int(im.height * 0.8**k)))),
        6,
    ),
    # Away from upright: in the direction the head already leans (rotating a tilted
    # head back to upright is an improvement, not a degradation).
    "rotate": (
        lambda im, k: im.rotate(6 * k, resample=Image.Resampling.BICUBIC, fillcolor="grey"),
        6,
    ),
    "rotate_other_way": (
        lambda im, k: im.rotate(-6 * k, resample=Image.Resampling.BICUBIC, fillcolor="grey"),
        6,
    ),
}


def scores(pipeline: object, image: Image.Image, step: Step, steps: int) -> list[float]:
    out = []
    for k in range(steps + 1):
        buffer = io.BytesIO()
        step(image, k).save(buffer, format="PNG")
        faces = pipeline.find_faces(buffer.getvalue(), Timings())  # type: ignore[attr-defined]
        if not faces:
            break
        out.append(quality.assess(quality.measure(main_face(faces))).quality)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=Path, default=FACES)
    args = parser.parse_args()
    pipeline = build_pipeline(Settings())
    total = lower = 0
    for name, (step, steps) in DEGRADATIONS.items():
        n = down = 0
        for photo in PHOTOS:
            image = Image.open(args.faces / photo).convert("RGB")
            if name.startswith("rotate"):
                # PIL rotates counter-clockwise: that raises roll (image y points down).
                faces = pipeline.find_faces((args.faces / photo).read_bytes(), Timings())
                leans = quality.measure(main_face(faces)).roll < 0
                if leans != (name == "rotate"):
                    continue
            series = scores(pipeline, image, step, steps)
            n += len(series) - 1
            down += sum(b < a for a, b in zip(series, series[1:], strict=False))
            print(f"  {name:9s} {photo:16s} " + " ".join(f"{q:5.1f}" for q in series))
        print(f"{name}: {down}/{n} steps lower")
        total, lower = total + n, lower + down
    print(f"all: {lower}/{total} steps lower ({lower / max(total, 1):.1%})")


if __name__ == "__main__":
    main()
