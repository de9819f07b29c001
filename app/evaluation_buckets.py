"""``faceverify evaluate --buckets``: detection rate, FNMR and FMR by face width and by
head yaw, with each pair's probe shrunk into a camera frame (issue 39).

For each labelled pair (a, b), photo a is enrolled as the service enrolls (the full
search, the template recipe) and photo b is the probe, sent as /verify sends it (the
quick pass first, the fast recipe with the mirror pass): once at its own size, and once
per width in ``widths``, shrunk so its face is that many pixels wide (the width of the
box the detector draws on the photo at its own size) and pasted at a random place in a
grey 640x480 frame, saved as a JPEG: a person a few metres from a camera.

Each probe falls into a width bucket (by the width it was shrunk to, or its own) and a
yaw bucket (the yaw estimated from its landmarks at its own size, app/face/quality.py).
Per bucket: how many probes, the share whose face was found (detection rate), FNMR at
the served threshold (tighter for a face too small to enroll, and its percent less
sure: app/scoring/calibration.py SmallProbe) over the genuine pairs (a probe whose
face is not found counts as a non-match, as the service answers it with no_face;
``fnmr_found`` counts only those found), FMR over the impostor pairs, and the mean
match percent of each.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.errors import FaceVerifyError
from app.face import quality
from app.face.detect import DetectedFace, main_face
from app.face.recipes import Recipes
from app.face.timing import Timings
from app.scoring.calibration import Calibration
from app.scoring.pairs import Pair

FRAME = (640, 480)
GREY = (120, 120, 120)
# Face-width buckets (px) and yaw buckets (degrees), lower bound included.
WIDTH_BUCKETS = ((100, None), (60, 100), (40, 60), (24, 40), (0, 24))
YAW_BUCKETS = ((0, 15), (15, 45), (45, None))
# One width per bucket by default: its middle (the widest one's and the narrowest's
# inside it).
WIDTHS = (80, 50, 32, 20)


@dataclass(frozen=True)
class Probe:
    """One probe sent: the pair it belongs to, the face width it was shown at, the yaw
    of its face at its own size, and what the service made of it."""

    same: bool
    width: float
    yaw: float
    found: bool
    detector: str
    inter_eye: float
    distance: float
    percent: float
    # The hard limits the face fails as found (size aside: app/face/quality.py checks).
    checks: tuple[str, ...] = ()
    # The probe photo's person (cross-validation by identity).
    person: str = ""
    # The threshold it was decided at: the served one, tighter for a face too small to
    # enroll (app/scoring/calibration.py SmallProbe), as /verify decides.
    threshold: float = 0.0

    @property
    def match(self) -> bool:
        return self.distance <= self.threshold


def bucket_name(low: float, high: float | None, unit: str) -> str:
    return f">= {low:g} {unit}" if high is None else f"{low:g}-{high:g} {unit}"


def _bucket(value: float, buckets: tuple[tuple[int, int | None], ...], unit: str) -> str:
    for low, high in buckets:
        if value >= low and (high is None or value < high):
            return bucket_name(low, high, unit)
    low, high = buckets[-1]
    return bucket_name(low, high, unit)


def framed(data: bytes, factor: float, rng: random.Random) -> bytes:
    """The photo shrunk by ``factor`` (< 1) and pasted at a random place in a grey
    640x480 frame (scaled down to fit when still larger), as a JPEG."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    fit = min(factor, FRAME[0] / image.width, FRAME[1] / image.height)
    size = (max(1, round(image.width * fit)), max(1, round(image.height * fit)))
    small = image.resize(size, Image.Resampling.LANCZOS)
    frame = Image.new("RGB", FRAME, GREY)
    frame.paste(small, (rng.randint(0, FRAME[0] - size[0]), rng.randint(0, FRAME[1] - size[1])))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=90)
    return out.getvalue()


class _Prober:
    """Embeds enrollments (cached per photo) and probes as the service does."""

    def __init__(self, recipes: Recipes, calibration: Calibration, threshold: float) -> None:
        self.recipes = recipes
        self.calibration = calibration
        self.threshold = threshold
        self.templates: dict[Path, np.ndarray | None] = {}

    def template(self, path: Path) -> np.ndarray | None:
        if path not in self.templates:
            try:
                faces = self.recipes.find_enrollment(path.read_bytes(), Timings(), main_face)
            except (OSError, FaceVerifyError):
                faces = []
            self.templates[path] = (
                self.recipes.embed_enrollment([main_face(faces)], Timings())[0] if faces else None
            )
        return self.templates[path]

    def face(self, data: bytes) -> DetectedFace | None:
        try:
            faces = self.recipes.find_probe(data, Timings(), thorough=False)
        except FaceVerifyError:
            return None
        return main_face(faces) if faces else None

    def probe(
        self, pair: Pair, template: np.ndarray, data: bytes, width: float, yaw: float
    ) -> Probe:
        face = self.face(data)
        if face is None:
            return Probe(
                pair.same, width, yaw, False, "", 0.0, float("inf"), 0.0, (), pair.identity_b,
                self.threshold,
            )  # fmt: skip
        single = self.recipes.embed_probes([face], Timings(), thorough=False)
        embedding = self.recipes.add_mirror([face], single, Timings())[0]
        distance = float(np.linalg.norm(embedding - template))
        measures = quality.measure(face)
        small = self.calibration.is_small(measures.inter_eye)
        threshold = self.calibration.decision_threshold(self.threshold, small=small)
        return Probe(
            pair.same,
            width,
            yaw,
            True,
            face.detector,
            measures.inter_eye,
            distance,
            self.calibration.percent(distance, small=small),
            quality.checks(measures, 0),
            pair.identity_b,
            threshold,
        )


def probe_pairs(
    recipes: Recipes,
    calibration: Calibration,
    threshold: float,
    pairs: list[Pair],
    widths: tuple[int, ...] = WIDTHS,
    seed: int = 0,
) -> list[Probe]:
    """Every pair's probe at its own size and at each of ``widths`` (see the module)."""
    prober = _Prober(recipes, calibration, threshold)
    rng = random.Random(seed)
    out: list[Probe] = []
    for pair in pairs:
        template = prober.template(pair.a)
        try:
            data = pair.b.read_bytes()
        except OSError:
            continue
        native = prober.face(data)
        if template is None or native is None:
            continue  # failure to acquire at full size: not a question of size or pose
        with_chip = quality.measure(native)
        out.append(prober.probe(pair, template, data, float(native.side), with_chip.yaw))
        for width in widths:
            if width >= native.side:
                continue
            shrunk = framed(data, width / native.side, rng)
            out.append(prober.probe(pair, template, shrunk, float(width), with_chip.yaw))
    return out


def summarise(probes: list[Probe], threshold: float) -> dict[str, Any]:
    """The report: per width bucket and per yaw bucket (see the module)."""

    def stats(group: list[Probe]) -> dict[str, Any]:
        genuine = [p for p in group if p.same]
        impostor = [p for p in group if not p.same]
        found_genuine = [p for p in genuine if p.found]
        found_impostor = [p for p in impostor if p.found]

        def share(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {
            "probes": len(group),
            "detection_rate": share(sum(p.found for p in group), len(group)),
            "genuine": len(genuine),
            "impostor": len(impostor),
            "fnmr": share(sum(not p.match for p in genuine), len(genuine)),
            "fnmr_found": share(sum(not p.match for p in found_genuine), len(found_genuine)),
            "fmr": share(sum(p.match for p in found_impostor), len(impostor)),
            "mean_percent_genuine": _mean([p.percent for p in found_genuine]),
            "mean_percent_impostor": _mean([p.percent for p in found_impostor]),
            "found_by_fallback": sum(p.found and p.detector != "hog" for p in group),
            "median_inter_eye_px": _median([p.inter_eye for p in group if p.found]),
        }

    by_width: dict[str, list[Probe]] = {bucket_name(lo, hi, "px"): [] for lo, hi in WIDTH_BUCKETS}
    by_yaw: dict[str, list[Probe]] = {bucket_name(lo, hi, "deg"): [] for lo, hi in YAW_BUCKETS}
    for probe in probes:
        by_width[_bucket(probe.width, WIDTH_BUCKETS, "px")].append(probe)
    for probe in probes:
        if probe.width >= 60:  # pose alone: faces large enough that size does not count
            by_yaw[_bucket(abs(probe.yaw), YAW_BUCKETS, "deg")].append(probe)
    return {
        "threshold": threshold,
        "probes": len(probes),
        "face_width": {name: stats(group) for name, group in by_width.items()},
        "yaw_at_least_60px": {name: stats(group) for name, group in by_yaw.items()},
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


def write(out: Path, probes: list[Probe], report: dict[str, Any]) -> list[Path]:
    """report.json, probes.tsv and (with matplotlib) buckets.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "same\twidth_px\tyaw\tfound\tdetector\tinter_eye_px\tdistance\tpercent\tchecks\tperson"
        "\tthreshold"
    ]
    lines += [
        f"{int(p.same)}\t{p.width:g}\t{p.yaw:g}\t{int(p.found)}\t{p.detector}\t"
        f"{p.inter_eye:g}\t{p.distance:.4f}\t{p.percent:g}\t{','.join(p.checks)}\t{p.person}"
        f"\t{p.threshold:g}"
        for p in probes
    ]
    (out / "probes.tsv").write_text("\n".join(lines) + "\n")
    written = [out / "report.json", out / "probes.tsv"]
    try:
        written.append(plot(report, out / "buckets.png"))
    except ModuleNotFoundError:
        pass
    return written


def plot(report: dict[str, Any], path: Path) -> Path:
    """Detection rate and FNMR per width bucket and per yaw bucket, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, title in (
        (axes[0], "face_width", "by face width in a 640x480 frame"),
        (axes[1], "yaw_at_least_60px", "by estimated yaw (faces >= 60 px)"),
    ):
        names = list(report[key])
        rows = [report[key][n] for n in names]
        x = np.arange(len(names))
        for offset, field, label in (
            (-0.2, "detection_rate", "face found"),
            (0.2, "fnmr", "FNMR at the served threshold"),
        ):
            values = [100 * (r[field] or 0) for r in rows]
            bars = ax.bar(x + offset, values, 0.4, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(x, [f"{n}\n(n={r['probes']})" for n, r in zip(names, rows, strict=True)])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 110)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_buckets(
    *, settings: Any, pairs: list[Pair], out: Path, widths: tuple[int, ...] = WIDTHS, seed: int = 0
) -> dict[str, Any]:
    """Probe every pair (:func:`probe_pairs`) with the served recipes, scored on the
    mixed curve at its threshold (an enrolled template against a fast probe, as
    /verify compares), and write the report to ``out``."""
    from app.evaluation import mode_curve, served_recipes
    from app.scoring.calibration import matched_threshold

    recipes = served_recipes(settings)
    loaded = Calibration.load(settings.resolved_calibration_file())
    curve = loaded.curve(mode_curve("mixed", recipes.pipeline.template)) or loaded
    threshold = matched_threshold(loaded, curve, settings.threshold)
    probes = probe_pairs(recipes, curve, threshold, pairs, widths, seed)
    report = summarise(probes, threshold)
    report["curve"] = curve.name
    small = curve.small_probe
    report["small_probe"] = None if small is None else asdict(small)
    report["pairs"] = len(pairs)
    report["widths"] = list(widths)
    report["files"] = [p.name for p in write(out, probes, report)]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
