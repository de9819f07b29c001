"""``faceverify evaluate`` and ``faceverify calibrate``: the service's own pipeline run
over labelled pairs, the accuracy report, and the distance -> probability fit."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import FaceVerifyError
from app.face.detect import main_face
from app.face.pipeline import FacePipeline
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
    """One image's main face embedded both ways: fast (as a probe) and as an enrollment
    template (None when templates are off or were not asked for)."""

    fast: np.ndarray
    template: np.ndarray | None = None


def embed_images(
    pipeline: FacePipeline,
    paths: Iterable[Path],
    *,
    templates: bool = False,
    progress: bool = True,
    batch: int = 32,
) -> dict[Path, Embedded | None]:
    """Each image's embedding by the service's pipeline (its main face, as /verify uses),
    and with ``templates`` also its enrollment template; None when no face was found or
    the file is unreadable (failure to acquire)."""
    templates = templates and pipeline.template != FAST
    unique = sorted(set(paths))
    out: dict[Path, Embedded | None] = {}
    pending: list[tuple[Path, Any]] = []
    bar = _progress(len(unique), "embedding", progress)

    def flush() -> None:
        if pending:
            faces = [face for _, face in pending]
            fast = pipeline.embed(faces, Timings())
            both = pipeline.embed(faces, Timings(), thorough=True) if templates else fast
            for (path, _), f, t in zip(pending, fast, both, strict=True):
                out[path] = Embedded(f, t if templates else None)
            pending.clear()

    for path in unique:
        try:
            faces = pipeline.find_faces(
                path.read_bytes(), Timings(), views=main_face if templates else None
            )
        except (OSError, FaceVerifyError):
            faces = []
        if faces:
            pending.append((path, main_face(faces)))
        else:
            out[path] = None
        if len(pending) >= batch:
            flush()
        bar.update(1)
    flush()
    bar.close()
    return out


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
    pairs: list[Pair], embeddings: dict[Path, Embedded | None], mode: Mode = "fast"
) -> Scored:
    """Each pair's distance, both photos embedded as ``mode`` says: fast, thorough (both
    as templates) or mixed (the first photo as an enrolled template, the second as a fast
    probe). Without templates every mode is fast."""
    distance = np.full(len(pairs), np.inf)
    for i, p in enumerate(pairs):
        a, b = embeddings.get(p.a), embeddings.get(p.b)
        if a is not None and b is not None:
            x = a.template if mode != "fast" and a.template is not None else a.fast
            y = b.template if mode == "thorough" and b.template is not None else b.fast
            distance[i] = float(np.linalg.norm(x.astype(np.float64) - y))
    missing = sorted(path for path, v in embeddings.items() if v is None)
    return Scored(
        pairs=pairs,
        same=np.array([p.same for p in pairs]),
        distance=distance,
        folds=np.array([p.fold for p in pairs]),
        missing_images=missing,
    )


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


def _embed_with_service_pipeline(
    settings: Settings, pairs: list[Pair], templates: bool, progress: bool
) -> tuple[dict[Path, Embedded | None], str]:
    """Embed every image of ``pairs`` with the pipeline the server would build from
    ``settings`` (no gallery, no database); also the template recipe's name."""
    from app.face.registry import build_pipeline

    pipeline = build_pipeline(settings)
    embeddings = embed_images(
        pipeline,
        [p.a for p in pairs] + [p.b for p in pairs],
        templates=templates,
        progress=progress,
    )
    return embeddings, pipeline.template


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
    embeddings, template = _embed_with_service_pipeline(settings, pairs, templates, progress)
    loaded = Calibration.load(settings.resolved_calibration_file())
    reports: dict[Mode, dict[str, Any]] = {}
    for mode in modes:
        folder = out if len(modes) == 1 else out / mode
        scored = score_pairs(pairs, embeddings, mode)
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
    embeddings, template = _embed_with_service_pipeline(settings, pairs, True, progress)

    def fitted(mode: Mode) -> dict[str, Any]:
        scored = score_pairs(pairs, embeddings, mode)
        curve = mode_curve(mode, template)
        return fit_calibration(scored, settings, data_name=data_name, root=root, curve=curve)

    content = fitted("fast")
    if template != FAST:
        content["curves"] = {"mixed": fitted("mixed"), "thorough": fitted("thorough")}
    out.write_text(json.dumps(content, indent=1) + "\n")
    return content
