"""``faceverify evaluate`` and ``faceverify calibrate``: the service's own pipeline run
over labelled pairs, the accuracy report, and the distance -> probability fit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import FaceVerifyError
from app.face.detect import DetectedFace, main_face
from app.face.recipes import Recipes
from app.face.registry import curve_fingerprint
from app.face.timing import Timings
from app.face.views import FAST, curve_for
from app.scoring import metrics
from app.scoring.calibration import Calibration, matched_threshold
from app.scoring.fit import fit_isotonic, fit_logistic
from app.scoring.pairs import Pair, pair_list_hash
from app.settings import Settings

FMR_LEVELS = (1e-2, 1e-3)
# The FMR table in calibration.json: cumulative impostor counts on this distance grid.
FMR_GRID_STEP = 0.002
FMR_GRID_MAX = 2.0


Mode = Literal["fast", "thorough", "mixed"]
MODES: tuple[Mode, ...] = ("fast", "thorough", "mixed")


@dataclass(frozen=True)
class Embedded:
    """One image embedded every way the service embeds a photo (app/face/recipes.py):
    as a fast probe from its chip alone (``fast``) and with the mirror pass
    (``mirrored``; None: the same as ``fast``), as a thorough probe (``probe_template``)
    and as an enrolled template (``template``); the last two None when templates are off
    or were not asked for (``probe_template`` None: the same as ``template``)."""

    fast: np.ndarray
    template: np.ndarray | None = None
    mirrored: np.ndarray | None = None
    probe_template: np.ndarray | None = None

    @property
    def with_mirror(self) -> np.ndarray:
        return self.fast if self.mirrored is None else self.mirrored

    @property
    def thorough_probe(self) -> np.ndarray | None:
        return self.template if self.probe_template is None else self.probe_template


def embed_images(
    recipes: Recipes,
    paths: Iterable[Path],
    *,
    templates: bool = False,
    progress: bool = True,
    batch: int = 32,
) -> dict[Path, Embedded | None]:
    """Each image embedded by the service's own recipes: as a probe (its main face, the
    quick detection pass, as /verify, /identify and /compare embed it) and with
    ``templates`` also as an enrollment (the full search, the template recipe, the
    photo's main face: see :func:`_faces`); None when a probe finds no face or the file
    is unreadable (failure to acquire)."""
    templates = templates and recipes.templates
    unique = sorted(set(paths))
    out: dict[Path, Embedded | None] = {}
    pending: list[tuple[Path, DetectedFace, DetectedFace | None]] = []
    bar = _progress(len(unique), "embedding", progress)

    def flush() -> None:
        if pending:
            for path, embedded in zip(
                [p for p, _, _ in pending], _embed_batch(recipes, pending, templates), strict=True
            ):
                out[path] = embedded
            pending.clear()

    for path in unique:
        probe, enrolled = _faces(recipes, path, templates)
        if probe is None:
            out[path] = None
        else:
            pending.append((path, probe, enrolled))
        if len(pending) >= batch:
            flush()
        bar.update(1)
    flush()
    bar.close()
    return out


def _faces(
    recipes: Recipes, path: Path, templates: bool
) -> tuple[DetectedFace | None, DetectedFace | None]:
    """The face a probe of ``path`` is compared by and (``templates``) the face an
    enrollment of it stores; None where none was found."""
    try:
        data = path.read_bytes()
        probes = recipes.find_probe(data, Timings(), thorough=templates)
        enrolled = recipes.find_enrollment(data, Timings(), main_face) if templates else []
    except (OSError, FaceVerifyError):
        return None, None
    # The enrollment's face is the photo's main face: /enroll's default (face=single)
    # refuses a photo with several faces, and with face=largest LFW's largest face is
    # sometimes a bystander's, which would fit the curve to mislabelled pairs. On a
    # one-face photo (what the service enrolls by default) the two are the same face.
    return (
        main_face(probes) if probes else None,
        main_face(enrolled) if enrolled else None,
    )


def _embed_batch(
    recipes: Recipes,
    pending: list[tuple[Path, DetectedFace, DetectedFace | None]],
    templates: bool,
) -> list[Embedded]:
    probes = [probe for _, probe, _ in pending]
    fast = recipes.embed_probes(probes, Timings(), thorough=False)
    mirrored = recipes.add_mirror(probes, fast, Timings()) if recipes.skips_mirror else fast
    if not templates:
        return [Embedded(f, None, m) for f, m in zip(fast, mirrored, strict=True)]
    thorough = recipes.embed_probes(probes, Timings(), thorough=True)
    # An enrollment's full search finds a face wherever the quick pass did but for rare
    # photos; such an image is enrolled as its probe face would be.
    enrolled = [e if e is not None else p for _, p, e in pending]
    stored = recipes.embed_enrollment(enrolled, Timings())
    return [
        Embedded(f, s, m, t) for f, m, t, s in zip(fast, mirrored, thorough, stored, strict=True)
    ]


def _progress(total: int, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", disable=not enabled, mininterval=1.0)


@dataclass
class Scored:
    pairs: list[Pair]
    same: np.ndarray
    distance: np.ndarray  # inf where a face was missing
    folds: np.ndarray
    missing_images: list[Path]


def score_pairs(
    pairs: list[Pair],
    embeddings: dict[Path, Embedded | None],
    mode: Mode = "fast",
    undecided: Callable[[float], bool] | None = None,
) -> Scored:
    """Each pair's distance as the service measures it, both photos embedded as ``mode``
    says: fast (both as fast probes, as /compare), mixed (the first as an enrolled
    template, the second as a fast probe, as /verify) or thorough (the first enrolled,
    the second a thorough probe). ``undecided`` is the service's mirror rule
    (:meth:`Recipes.undecided`): where it holds for a fast probe's single-pass distance,
    the probe's mirrored embedding is used, as the service does. Without templates every
    mode is fast."""
    distance = np.full(len(pairs), np.inf)
    for i, p in enumerate(pairs):
        a, b = embeddings.get(p.a), embeddings.get(p.b)
        if a is not None and b is not None:
            distance[i] = _pair_distance(a, b, mode, undecided or (lambda _: False))
    missing = sorted(path for path, v in embeddings.items() if v is None)
    return Scored(
        pairs=pairs,
        same=np.array([p.same for p in pairs]),
        distance=distance,
        folds=np.array([p.fold for p in pairs]),
        missing_images=missing,
    )


def _pair_distance(
    a: Embedded, b: Embedded, mode: Mode, undecided: Callable[[float], bool]
) -> float:
    def norm(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.linalg.norm(x.astype(np.float64) - y))

    if mode == "thorough" and a.template is not None and b.thorough_probe is not None:
        return norm(a.template, b.thorough_probe)
    enrolled = a.template if mode != "fast" and a.template is not None else None
    x = a.fast if enrolled is None else enrolled
    d = norm(x, b.fast)
    if undecided(d):
        # compare mirrors both probes; verify has one probe, against the enrolled face
        d = norm(a.with_mirror if enrolled is None else enrolled, b.with_mirror)
    return d


def report(scored: Scored, calibration: Calibration, threshold: float) -> dict[str, Any]:
    same, d = scored.same, scored.distance
    identities = {p.identity_a for p in scored.pairs} | {p.identity_b for p in scored.pairs}
    mean, std, per_fold, thresholds = metrics.kfold_accuracy(same, d, scored.folds)
    rate, eer_threshold = metrics.eer(same, d)
    p = np.array([calibration.percent(x) / 100 if np.isfinite(x) else 0.001 for x in d])
    w = metrics.balanced_weights(same)
    failed_pairs = int((~np.isfinite(d)).sum())
    return {
        "pairs": {"total": len(d), "same": int(same.sum()), "different": int((~same).sum())},
        "identities": len(identities),
        "failure_to_acquire": {
            "images_without_face": len(scored.missing_images),
            "pairs_affected": failed_pairs,
            "scored_as": "non-match: distance +inf, score 0.1%, counted in every rate",
        },
        "threshold": threshold,
        "accuracy_at_threshold": metrics.accuracy(same, d, threshold),
        "ten_fold": {
            "accuracy_mean": mean,
            "accuracy_std": std,
            "per_fold": per_fold,
            "thresholds": thresholds,
            "how": "each fold's threshold maximises accuracy on the other nine folds",
        },
        "eer": {"rate": rate, "threshold": eer_threshold},
        "fnmr_at_fmr": [metrics.fnmr_at_fmr(same, d, level) for level in FMR_LEVELS],
        "calibration": {
            "version": calibration.version,
            "provisional": calibration.provisional,
            "weighting": "class-balanced: the percent is stated at a prior of 0.5",
            "brier": metrics.brier(same, p, w),
            "log_loss": metrics.log_loss(same, p, w),
            "ece_10_equal_count_bins": metrics.ece(same, p, 10, w),
            "reliability": metrics.reliability(same, p, 10, w),
        },
    }


def write_pairs_tsv(path: Path, scored: Scored, calibration: Calibration, root: Path) -> None:
    with path.open("w") as fh:
        for pair, dist in zip(scored.pairs, scored.distance, strict=True):
            score = calibration.percent(dist) if np.isfinite(dist) else calibration.clip_low
            fh.write(
                f"{int(pair.same)}\t{dist:.6f}\t{pair.fold}\t{score:.2f}\t"
                f"{_rel(pair.a, root)}\t{_rel(pair.b, root)}\n"
            )


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def plot(scored: Scored, rep: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    r = metrics.roc(scored.same, scored.distance)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    keep = (r.fmr > 0) & (r.fnmr > 0)
    ax.loglog(r.fmr[keep], r.fnmr[keep], lw=1.5)
    ax.set_xlabel("false match rate (impostor pairs accepted)")
    ax.set_ylabel("false non-match rate (genuine pairs rejected)")
    ax.set_title(f"DET: EER {100 * rep['eer']['rate']:.2f}%, {rep['pairs']['total']:,} pairs")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    written.append(out / "det.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    rows = rep["calibration"]["reliability"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(
        [x["mean_predicted"] for x in rows], [x["observed"] for x in rows], "o-", label="faceverify"
    )
    ax.set_xlabel("predicted P(same person) (10 equal-count bins)")
    ax.set_ylabel("observed share of same-person pairs")
    ece = rep["calibration"]["ece_10_equal_count_bins"]
    ax.set_title(f"Reliability: ECE {ece:.3f}")
    ax.legend(loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(out / "reliability.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# ---- calibration ---------------------------------------------------------------------
def _held_out(distance: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """Identity-split cross-validation of both fits: folds hold disjoint identities."""
    results: dict[str, list[float]] = {k: [] for k in ("lr_ll", "lr_ece", "iso_ll", "iso_ece")}
    skipped = 0
    for fold in np.unique(folds):
        test = folds == fold
        if same[test].all() or not same[test].any():
            skipped += 1  # a held-out fold needs both classes to be scored
            continue
        try:
            w, b = fit_logistic(distance[~test], same[~test])
        except ValueError:
            skipped += 1  # the other folds alone cannot fix a curve
            continue
        iso = fit_isotonic(distance[~test], same[~test])
        weights = metrics.balanced_weights(same[test])
        p_lr = 1 / (1 + np.exp(-(w * distance[test] + b)))
        p_iso = np.clip(iso(distance[test]), 0.001, 0.999)
        results["lr_ll"].append(metrics.log_loss(same[test], p_lr, weights))
        results["lr_ece"].append(metrics.ece(same[test], p_lr, 10, weights))
        results["iso_ll"].append(metrics.log_loss(same[test], p_iso, weights))
        results["iso_ece"].append(metrics.ece(same[test], p_iso, 10, weights))
    if not results["lr_ll"]:
        return {"folds": 0, "note": "too few pairs per fold to check on held-out identities"}
    return {
        "folds": len(results["lr_ll"]),
        "folds_skipped": skipped,
        "split": "by identity: no person is in both the fitting and the held-out pairs",
        "logistic": {
            "log_loss": float(np.mean(results["lr_ll"])),
            "ece": float(np.mean(results["lr_ece"])),
        },
        "isotonic": {
            "log_loss": float(np.mean(results["iso_ll"])),
            "ece": float(np.mean(results["iso_ece"])),
        },
    }


def fit_calibration(
    scored: Scored, settings: Settings, *, data_name: str, root: Path, curve: str = FAST
) -> dict[str, Any]:
    """One curve of the calibration file: logistic fit on every comparable pair, checked
    against isotonic regression on held-out identities, with an FMR table."""
    ok = np.isfinite(scored.distance)
    d, same, folds = scored.distance[ok], scored.same[ok], scored.folds[ok]
    w, b = fit_logistic(d, same)
    impostor = np.sort(d[~same])
    grid = np.arange(0.0, FMR_GRID_MAX + FMR_GRID_STEP / 2, FMR_GRID_STEP)
    cumulative = np.searchsorted(impostor, grid, side="right")
    identities = {p.identity_a for p in scored.pairs} | {p.identity_b for p in scored.pairs}
    version = f"lr-{datetime.now(UTC):%Y%m%d}-{pair_list_hash(scored.pairs, root)[:8]}"
    return {
        "version": version if curve == FAST else f"{version}-{curve}",
        "provisional": False,
        "method": "logistic",
        "description": (
            "P(same | d) = 1 / (1 + exp(-(w*d + b))): class-balanced logistic regression of "
            "same-person labels on embedding distance, so the percent is stated at a prior "
            "of 0.5. 'fmr' gives the share of impostor pairs in the data at or below a "
            "distance."
        ),
        "params": {"w": w, "b": b},
        "threshold": settings.threshold,
        "prior": 0.5,
        "clip_percent": [0.1, 99.9],
        "pipeline": curve_fingerprint(settings, curve),
        "data": {
            "name": data_name,
            "identities": len(identities),
            "pairs": int(len(scored.pairs)),
            "same_pairs": int(scored.same.sum()),
            "different_pairs": int((~scored.same).sum()),
            "pairs_without_face": int((~ok).sum()),
            "pair_list_sha256": pair_list_hash(scored.pairs, root),
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "fit": {
            "held_out": _held_out(d, same, folds),
            "isotonic_note": "isotonic regression is fitted only as a check of the "
            "logistic curve's shape; the service uses the logistic curve",
        },
        "fmr_table": {
            "impostor_pairs": int(len(impostor)),
            "grid_step": FMR_GRID_STEP,
            "cumulative_impostors": cumulative.tolist(),
        },
    }


def served_recipes(settings: Settings) -> Recipes:
    """The recipes the server would embed with from ``settings`` (no gallery, no
    database)."""
    from app.face.registry import build_pipeline

    return Recipes(build_pipeline(settings), settings.threshold, settings.mirror_margin)


def _embed_with_service_pipeline(
    settings: Settings, pairs: list[Pair], templates: bool, progress: bool
) -> tuple[dict[Path, Embedded | None], Recipes]:
    """Embed every image of ``pairs`` with the recipes the server would use."""
    recipes = served_recipes(settings)
    embeddings = embed_images(
        recipes,
        [p.a for p in pairs] + [p.b for p in pairs],
        templates=templates,
        progress=progress,
    )
    return embeddings, recipes


def mirror_rule(recipes: Recipes) -> Callable[[float], bool]:
    """The service's mirror rule for a fast probe's single-pass distance."""
    return lambda d: recipes.undecided(np.array([d]), thorough=False)


def mode_curve(mode: Mode, template: str) -> str:
    """The calibration curve that scores pairs embedded as ``mode`` says."""
    a = FAST if mode == "fast" else template
    return curve_for(a, template if mode == "thorough" else FAST)


def run_evaluate(
    *,
    settings: Settings,
    pairs: list[Pair],
    root: Path,
    out: Path,
    modes: tuple[Mode, ...] = ("fast",),
    progress: bool = True,
) -> dict[Mode, dict[str, Any]]:
    """Accuracy and calibration of each mode (see :func:`score_pairs`) from one pass of
    embedding, each scored on the curve and at the threshold the service uses for it.
    One mode writes to ``out``; several to ``out/<mode>``."""
    templates = any(mode != "fast" for mode in modes)
    embeddings, recipes = _embed_with_service_pipeline(settings, pairs, templates, progress)
    template = recipes.pipeline.template
    loaded = Calibration.load(settings.resolved_calibration_file())
    reports: dict[Mode, dict[str, Any]] = {}
    for mode in modes:
        folder = out if len(modes) == 1 else out / mode
        scored = score_pairs(pairs, embeddings, mode, mirror_rule(recipes))
        curve = mode_curve(mode, template)
        calibration = loaded.curve(curve) or loaded
        folder.mkdir(parents=True, exist_ok=True)
        threshold = matched_threshold(loaded, calibration, settings.threshold)
        rep = report(scored, calibration, threshold)
        rep["mode"] = mode
        rep["curve"] = {"name": curve, "present": calibration.name == curve}
        rep["pipeline"] = curve_fingerprint(settings, curve)
        write_pairs_tsv(folder / "pairs.tsv", scored, calibration, root)
        try:
            rep["plots"] = [p.name for p in plot(scored, rep, folder)]
        except ModuleNotFoundError:
            rep["plots"] = []
            rep["plots_note"] = "matplotlib is not installed: pip install 'faceverify[eval]'"
        (folder / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
        reports[mode] = rep
    return reports


def run_calibrate(
    *,
    settings: Settings,
    pairs: list[Pair],
    root: Path,
    out: Path,
    data_name: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit every curve in use from one embedding pass: the fast curve on fast pairs
    (the file's top level) and, when templates are on, mixed and thorough under
    ``curves``."""
    embeddings, recipes = _embed_with_service_pipeline(settings, pairs, True, progress)
    template = recipes.pipeline.template

    def fitted(mode: Mode) -> dict[str, Any]:
        scored = score_pairs(pairs, embeddings, mode, mirror_rule(recipes))
        curve = mode_curve(mode, template)
        return fit_calibration(scored, settings, data_name=data_name, root=root, curve=curve)

    content = fitted("fast")
    if template != FAST:
        content["curves"] = {"mixed": fitted("mixed"), "thorough": fitted("thorough")}
    _keep_open_set(content, settings.resolved_calibration_file())
    out.write_text(json.dumps(content, indent=1) + "\n")
    return content


def _keep_open_set(content: dict[str, Any], previous: Path) -> None:
    """Carry each curve's open-set rule (benchmarks/open_set.py: fitted on tens of
    millions of impostor pairs, which a recalibration on a few people's pairs cannot
    replace) over from the calibration in use, where it was fitted for the same
    pipeline; without one, /identify decides by the nearest distance alone."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    bodies = [(content, old)] + [
        (content["curves"][name], (old.get("curves") or {}).get(name) or {})
        for name in (content.get("curves") or {})
    ]
    for new, before in bodies:
        if "open_set" in before and before.get("pipeline") == new.get("pipeline"):
            new["open_set"] = before["open_set"]
