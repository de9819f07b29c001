"""``faceverify evaluate --open-set``: open-set identification measured as the service
answers it (issue 36).

For each gallery size N: N people enrolled with one photo each (as /enroll stores it: a
template when templates are on), searched with every other photo of an enrolled person
(up to ``mated_per_person``: mated searches) and with one photo of each person left out
(non-mated: strangers). Photos are embedded by the served recipes (app/face/recipes.py),
the gallery is searched by the served index (ExactIndex), the mirror pass is added where
the service adds it, and the decision is the service's own (Decisions.open_set). The
report gives FPIR (strangers named) and FNIR (enrolled people not named, or named
wrongly) at each target, with Wilson 95% intervals, the open-set probability's
calibration, and a DET curve (FNIR against FPIR) per size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.evaluation import Embedded, embed_images, served_recipes
from app.face.views import FAST, curve_for
from app.scoring.calibration import Calibration
from app.scoring.openset import NEIGHBOURS
from app.service.decisions import Decisions
from app.settings import Settings
from app.vectors.index import ExactIndex

TARGETS = (0.01, 0.001)


@dataclass
class Outcome:
    """The searches of one gallery size, as the service decided them."""

    size: int
    mated: np.ndarray
    correct: np.ndarray  # the nearest subject is the person searched for
    named: dict[float, np.ndarray]  # per target: best was given
    logit: np.ndarray  # the rule's log-odds (nan without a rule)
    within: np.ndarray  # the nearest passes the 1:1 threshold
    probability: np.ndarray  # open_set.probability (nan without a rule)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count bins."""
    order = np.argsort(p)
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return total / len(p)


def _people(root: Path) -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(
            f for f in folder.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"}
        )
        if photos:
            people[folder.name] = photos
    return people


def run_open_set(
    *,
    settings: Settings,
    root: Path,
    sizes: list[int],
    out: Path,
    targets: tuple[float, ...] = TARGETS,
    mated_per_person: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Open-set searches of ``root`` (one folder per person) at each gallery size."""
    people = _people(root)
    recipes = served_recipes(settings)
    embedded = embed_images(
        recipes,
        [p for photos in people.values() for p in photos],
        templates=True,
        progress=progress,
    )
    calibration = Calibration.load(settings.resolved_calibration_file())
    decisions = Decisions(settings, calibration, recipes.templates)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "data": str(root),
        "people": len(people),
        "photos": sum(len(p) for p in people.values()),
        "photos_without_face": sum(v is None for v in embedded.values()),
        "targets": list(targets),
        "sizes": {},
    }
    outcomes = []
    for size in sizes:
        outcome = _searches(
            people, embedded, size, decisions, recipes, targets, mated_per_person, rng
        )
        outcomes.append(outcome)
        report["sizes"][str(size)] = _summary(outcome, targets)
    out.mkdir(parents=True, exist_ok=True)
    try:
        report["plot"] = _det_plot(outcomes, out).name
    except ModuleNotFoundError:
        report["plot_note"] = "matplotlib is not installed: pip install 'faceverify[eval]'"
    (out / "open_set.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _searches(
    people: dict[str, list[Path]],
    embedded: dict[Path, Embedded | None],
    size: int,
    decisions: Decisions,
    recipes: Any,
    targets: tuple[float, ...],
    mated_per_person: int,
    rng: np.random.Generator,
) -> Outcome:
    usable = {
        name: [p for p in photos if embedded.get(p) is not None] for name, photos in people.items()
    }
    names = [n for n in sorted(usable) if usable[n]]
    rng.shuffle(names)
    multi = [n for n in names if len(usable[n]) > 1]
    single = [n for n in names if len(usable[n]) == 1]
    if size >= len(names):
        raise ValueError(f"gallery size {size}: only {len(names)} people have a usable photo")
    # Half the gallery (at most) from people with several photos, as in the fit.
    take_multi = min(len(multi), max(size // 2, size - len(single) // 2))
    enrolled = multi[:take_multi] + single[: size - take_multi]
    strangers = multi[take_multi:] + single[size - take_multi :]
    template = recipes.pipeline.template if recipes.templates else FAST
    index = ExactIndex(next(iter(e for e in embedded.values() if e is not None)).fast.shape[0])
    probes: list[tuple[str, Embedded]] = []
    for name in enrolled:
        photos = list(usable[name])
        rng.shuffle(photos)
        first = embedded[photos[0]]
        assert first is not None
        vector = first.template if first.template is not None else first.fast
        index.add([f"f-{name}"], [name], vector[None])
        for photo in photos[1 : 1 + mated_per_person]:
            e = embedded[photo]
            assert e is not None
            probes.append((name, e))
    mated_count = len(probes)
    for name in strangers:
        photo = usable[name][rng.integers(len(usable[name]))]
        e = embedded[photo]
        assert e is not None
        probes.append((name, e))
    curve = curve_for(template, FAST)
    threshold = decisions.threshold(decisions.curve(curve).name)
    rule = decisions.curve(curve).open_set
    k = max(NEIGHBOURS, 5)
    correct, within, logit, probability = [], [], [], []
    named: dict[float, list[bool]] = {t: [] for t in targets}
    for name, e in probes:
        hits = index.search(e.fast, k)
        # The service's mirror rule: the mirror pass where a distance is near the threshold.
        if recipes.undecided(np.array([h.distance for h in hits]), thorough=False):
            hits = index.search(e.with_mirror, k)
        distances = [h.distance for h in hits]
        correct.append(bool(hits) and hits[0].subject_id == name)
        within.append(bool(hits) and hits[0].distance <= threshold)
        for t in targets:
            decision = decisions.open_set(distances, size, t, None, curve, within[-1])
            named[t].append(decision.named)
        if rule is not None:
            logit.append(float(rule.logit(np.asarray(distances), size)[0]))
            # The probability as the answer gives it (capped and clipped by the service).
            probability.append(math.nan if decision.probability is None else decision.probability)
        else:
            logit.append(math.nan)
            probability.append(math.nan)
    mated = np.arange(len(probes)) < mated_count
    return Outcome(
        size=size,
        mated=mated,
        correct=np.asarray(correct) & mated,
        named={t: np.asarray(v) for t, v in named.items()},
        logit=np.asarray(logit),
        within=np.asarray(within),
        probability=np.asarray(probability),
    )


def _summary(o: Outcome, targets: tuple[float, ...]) -> dict[str, Any]:
    strangers = int((~o.mated).sum())
    enrolled = int(o.mated.sum())
    at: dict[str, Any] = {}
    for t in targets:
        false_positive = int((o.named[t] & ~o.mated).sum())
        found = int((o.named[t] & o.correct).sum())
        at[str(t)] = {
            "fpir": false_positive / strangers,
            "fpir_ci95": wilson(false_positive, strangers),
            "fnir": 1 - found / enrolled,
            "fnir_ci95": wilson(enrolled - found, enrolled),
        }
    out: dict[str, Any] = {
        "mated_searches": enrolled,
        "non_mated_searches": strangers,
        "rank1_of_mated": float(o.correct[o.mated].mean()),
        "at_target": at,
        # The 1:1 threshold alone (what /identify named before issue 36).
        "one_to_one_threshold": {
            "fpir": float((o.within & ~o.mated).mean() * len(o.mated) / strangers),
            "fnir": 1 - float((o.within & o.correct).sum()) / enrolled,
        },
    }
    if not np.isnan(o.probability).all():
        # Balanced: mated and non-mated searches weighted equally (the rule's prior 0.5).
        weights = np.where(o.mated, 0.5 / enrolled, 0.5 / strangers)
        picks = np.random.default_rng(0).choice(
            len(o.mated), size=20_000, p=weights / weights.sum()
        )
        out["probability_ece_balanced"] = ece(o.probability[picks], o.correct[picks].astype(float))
        out["probability_ece_as_searched"] = ece(o.probability, o.correct.astype(float))
    return out


def det_points(o: Outcome) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) of the rule's score swept over every threshold (the 1:1 threshold
    kept, as the service keeps it)."""
    score = np.where(o.within, o.logit, -np.inf)
    order = np.argsort(-score)
    s_mated = o.mated[order]
    s_good = o.correct[order]
    fp = np.cumsum(~s_mated) / max(int((~o.mated).sum()), 1)
    tp = np.cumsum(s_good) / max(int(o.mated.sum()), 1)
    return fp, 1 - tp


def _det_plot(outcomes: list[Outcome], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for o in outcomes:
        if np.isnan(o.logit).all():
            continue
        fpir, fnir = det_points(o)
        keep = fpir > 0
        ax.plot(fpir[keep], fnir[keep], label=f"N = {o.size:,}")
    ax.set_xscale("log")
    ax.set_xlabel("FPIR (strangers named)")
    ax.set_ylabel("FNIR (enrolled people not named, or named wrongly)")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Open-set identification (DET)")
    path = out / "open_set_det.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
