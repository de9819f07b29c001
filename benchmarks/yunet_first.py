"""HOG first (the default) against YuNet first, for speed and accuracy (issue 39).

    python benchmarks/yunet_first.py [--pairs 1000] [--photos 200] [--root DIR]

"YuNet first" is the other order the detector could run in: YuNet looks at every photo
and its faces are used directly (the box HOG would draw, from YuNet's eyes and mouth,
then dlib's 5-point landmarks), with no HOG pass at all. HOG first is the served one:
HOG, then YuNet where HOG finds nothing (app/face/detect.py).

1. Speed: the probe path (decode, detect, landmarks, chip) on --photos lfw-devtrain
   photos held out of the box fit, at their own size (250x250) and pasted into a
   640x480 frame, each order timed alternately on the same photo; medians.
2. Accuracy: `faceverify evaluate`'s mixed mode (an enrolled template against a fast
   probe, as /verify compares) on --pairs pairs of pairsDevTrain.txt, each order with
   its own pipeline; 10-fold accuracy, and FNMR and FMR at the served threshold.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from small_faces import held_out  # noqa: E402

from app.evaluation import run_evaluate  # noqa: E402
from app.face import detect  # noqa: E402
from app.face.registry import build_pipeline  # noqa: E402
from app.face.timing import Timings  # noqa: E402
from app.scoring.pairs import read_lfw_pairs  # noqa: E402
from app.settings import Settings  # noqa: E402

HOG_FIRST = detect.HogFaceDetector._search


def yunet_first(self: detect.HogFaceDetector, models: Any, rgb: Any, quick: bool) -> Any:
    """YuNet's faces, used directly (no HOG pass)."""
    assert self.yunet is not None
    seen = self.yunet.detect(rgb)
    rects = [self._dlib.rectangle(*detect.hog_like_box(f)) for f in seen]
    return detect._Found(rects, [f.score for f in seen], 1.0, 0, "yunet")


def use(order: str) -> None:
    detect.HogFaceDetector._search = HOG_FIRST if order == "hog" else yunet_first  # type: ignore[method-assign]


def framed(path: Path) -> bytes:
    frame = Image.new("RGB", (640, 480), (120, 120, 120))
    frame.paste(Image.open(path).convert("RGB"), (195, 115))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=90)
    return out.getvalue()


def speed(photos: list[Path]) -> None:
    pipeline = build_pipeline(Settings())
    pipeline.warm()
    for label, load in (("250x250", lambda p: p.read_bytes()), ("640x480 frame", framed)):
        times: dict[str, list[float]] = {"hog": [], "yunet": []}
        found = {"hog": 0, "yunet": 0}
        for number, path in enumerate(photos):
            data = load(path)
            orders = ("hog", "yunet") if number % 2 == 0 else ("yunet", "hog")
            for order in orders:
                use(order)
                start = time.perf_counter()
                faces = pipeline.find_faces(data, Timings(), quick=True)
                times[order].append((time.perf_counter() - start) * 1000)
                found[order] += bool(faces)
        hog, yunet = (statistics.median(times[o]) for o in ("hog", "yunet"))
        print(
            f"{label}: HOG first {hog:.1f} ms ({found['hog']}/{len(photos)} found), "
            f"YuNet first {yunet:.1f} ms ({found['yunet']}/{len(photos)}); "
            f"YuNet first / HOG first {yunet / hog:.2f}",
            flush=True,
        )
    use("hog")


def accuracy(root: Path, count: int) -> None:
    pairs = read_lfw_pairs(root / "pairsDevTrain.txt", root / "images")
    pairs = random.Random(0).sample(pairs, min(count, len(pairs)))
    for order in ("hog", "yunet"):
        use(order)
        with tempfile.TemporaryDirectory() as out:
            rep = run_evaluate(
                settings=Settings(),
                pairs=pairs,
                root=root / "images",
                out=Path(out),
                modes=("mixed",),
                progress=False,
            )["mixed"]
        print(
            f"{order} first, mixed, {rep['pairs']['total']} pairs: 10-fold accuracy "
            f"{100 * rep['ten_fold']['accuracy_mean']:.2f}% "
            f"(+-{100 * rep['ten_fold']['accuracy_std']:.2f}); at {rep['threshold']:g}: "
            f"{100 * rep['accuracy_at_threshold']:.2f}%; EER {100 * rep['eer']['rate']:.2f}%; "
            f"no face in {rep['failure_to_acquire']['images_without_face']} images",
            flush=True,
        )
    use("hog")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/lfw-devtrain"))
    args = parser.parse_args()
    speed(held_out(args.root, args.photos))
    accuracy(args.root, args.pairs)


if __name__ == "__main__":
    main()
