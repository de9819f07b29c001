"""What face quality costs (issue 15): /detect against detection alone, and the quality
measures a probe adds to /verify, on a 640x480 photo, in this process.

    python benchmarks/quality_cost.py [--repeats 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from app.bench import make_photos
from app.face import quality
from app.face.detect import main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.settings import Settings

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "obama.jpg"


def median_ms(fn: object, repeats: int) -> float:
    for _ in range(3):
        fn()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    photo = make_photos(PHOTO.parent)["640x480"]  # the one `faceverify bench` times
    pipeline = build_pipeline(Settings())

    def detection() -> list:
        return pipeline.find_faces(photo, Timings())

    def detect_endpoint() -> list:
        return [quality.assess(quality.measure(f)) for f in pipeline.find_faces(photo, Timings())]

    face = main_face(pipeline.find_faces(photo, Timings(), quick=True))
    # Interleaved, so both see the same machine (its speed drifts by ~30% over minutes).
    pairs = [
        (median_ms(detection, 5), median_ms(detect_endpoint, 5)) for _ in range(args.repeats // 5)
    ]
    alone = statistics.median(p[0] for p in pairs)
    with_quality = statistics.median(p[1] for p in pairs)
    measures = median_ms(lambda: quality.assess(quality.measure(face)), args.repeats * 3)
    print(f"decode + detection + landmarks + chip (full search): {alone:.2f} ms")
    print(
        f"the same + every face's quality (/detect):             {with_quality:.2f} ms "
        f"({with_quality / alone:.2f}x)"
    )
    print(f"quality of a probe's face (added to /verify):          {measures:.2f} ms")


if __name__ == "__main__":
    main()
