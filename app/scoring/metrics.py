"""Verification metrics over labelled pairs: accuracy, ROC, EER, FNMR at FMR, and the
calibration of a probability (Brier, log loss, ECE).

Conventions: ``same`` is a bool array (True = same person); ``distance`` a float array
where ``inf`` marks a pair that could not be compared (no face found): it never matches.
A pair is accepted as the same person when distance <= threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A FMR level is reported only where the impostor pairs could show at least this many
# false matches at that level (e.g. 3,000 impostor pairs for FMR 1e-2): fewer makes the
# threshold a guess. The "rule of 30" (Doddington et al.).
MIN_ERRORS_FOR_RATE = 30


def accuracy(same: np.ndarray, distance: np.ndarray, threshold: float) -> float:
    return float(np.mean((distance <= threshold) == same))


def best_threshold(same: np.ndarray, distance: np.ndarray) -> float:
    """The threshold with the highest accuracy on these pairs (midpoint between the
    neighbouring distances where it changes)."""
    finite = np.sort(np.unique(distance[np.isfinite(distance)]))
    if len(finite) == 0:
        return 0.0
    candidates = np.concatenate([[finite[0] - 1e-6], (finite[:-1] + finite[1:]) / 2, [finite[-1]]])
    order = np.argsort(distance, kind="stable")
    d_sorted, s_sorted = distance[order], same[order]
    # accepted(t) = pairs with d <= t; correct = genuine accepted + impostors rejected.
    genuine_at_or_below = np.concatenate([[0], np.cumsum(s_sorted)])
    impostor_at_or_below = np.concatenate([[0], np.cumsum(~s_sorted)])
    idx = np.searchsorted(d_sorted, candidates, side="right")
    correct = genuine_at_or_below[idx] + ((~same).sum() - impostor_at_or_below[idx])
    return float(candidates[int(np.argmax(correct))])


def kfold_accuracy(
    same: np.ndarray, distance: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float], list[float]]:
    """Accuracy per fold with the threshold chosen on the other folds. Returns mean,
    standard deviation, per-fold accuracies and per-fold thresholds."""
    accs, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        t = best_threshold(same[~test], distance[~test])
        thresholds.append(t)
        accs.append(accuracy(same[test], distance[test], t))
    return float(np.mean(accs)), float(np.std(accs)), accs, thresholds


@dataclass(frozen=True)
class Roc:
    thresholds: np.ndarray  # ascending
    fmr: np.ndarray  # impostors accepted / impostors
    fnmr: np.ndarray  # genuine rejected / genuine


def roc(same: np.ndarray, distance: np.ndarray) -> Roc:
    finite = np.unique(distance[np.isfinite(distance)])
    thresholds = np.concatenate([[-np.inf], finite])
    genuine = np.sort(distance[same])
    impostor = np.sort(distance[~same])
    fmr = np.searchsorted(impostor, thresholds, side="right") / max(len(impostor), 1)
    fnmr = 1 - np.searchsorted(genuine, thresholds, side="right") / max(len(genuine), 1)
    return Roc(thresholds, fmr, fnmr)


def eer(same: np.ndarray, distance: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold (where FMR and FNMR cross, interpolated)."""
    r = roc(same, distance)
    diff = r.fmr - r.fnmr  # rises from -1 to >= 0
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(r.fnmr[0]), float(r.thresholds[0])
    if i >= len(diff):
        return float(r.fmr[-1]), float(r.thresholds[-1])
    lo, hi = diff[i - 1], diff[i]
    w = 0.0 if hi == lo else -lo / (hi - lo)
    rate = (1 - w) * (r.fmr[i - 1] + r.fnmr[i - 1]) / 2 + w * (r.fmr[i] + r.fnmr[i]) / 2
    t_lo = r.thresholds[i - 1] if np.isfinite(r.thresholds[i - 1]) else r.thresholds[i]
    return float(rate), float((1 - w) * t_lo + w * r.thresholds[i])


def fnmr_at_fmr(same: np.ndarray, distance: np.ndarray, target: float) -> dict[str, object]:
    """FNMR at the largest threshold whose FMR is <= ``target``, or a note that the
    impostor pairs are too few to support the level."""
    impostors = int((~same).sum())
    if impostors * target < MIN_ERRORS_FOR_RATE:
        return {
            "fmr_target": target,
            "supported": False,
            "note": f"not enough pairs: {impostors} impostor pairs; FMR {target:g} needs "
            f"{math.ceil(MIN_ERRORS_FOR_RATE / target):,}",
        }
    r = roc(same, distance)
    ok = np.nonzero(r.fmr <= target)[0]
    i = int(ok[-1])
    return {
        "fmr_target": target,
        "supported": True,
        "threshold": float(r.thresholds[i]),
        "fmr": float(r.fmr[i]),
        "fnmr": float(r.fnmr[i]),
    }


def balanced_weights(same: np.ndarray) -> np.ndarray:
    """Weights that make both classes count equally (the prior of 0.5 the percent is
    stated at), normalised to mean 1."""
    n, n_same = len(same), int(same.sum())
    w = np.where(same, n / (2 * max(n_same, 1)), n / (2 * max(n - n_same, 1)))
    weights: np.ndarray = w / w.mean()
    return weights


def brier(same: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    return float(np.average((p - same) ** 2, weights=w))


def log_loss(same: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(np.average(-(same * np.log(q) + (~same) * np.log(1 - q)), weights=w))


def reliability(
    same: np.ndarray, p: np.ndarray, bins: int = 10, w: np.ndarray | None = None
) -> list[dict[str, float]]:
    """Equal-count bins of predicted probability: mean prediction vs observed rate."""
    w = np.ones(len(p)) if w is None else w
    order = np.argsort(p, kind="stable")
    rows = []
    for chunk in np.array_split(order, bins):
        if len(chunk) == 0:
            continue
        rows.append(
            {
                "count": int(len(chunk)),
                "weight": float(w[chunk].sum()),
                "mean_predicted": float(np.average(p[chunk], weights=w[chunk])),
                "observed": float(np.average(same[chunk], weights=w[chunk])),
            }
        )
    return rows


def ece(same: np.ndarray, p: np.ndarray, bins: int = 10, w: np.ndarray | None = None) -> float:
    """Expected calibration error over ``bins`` equal-count bins."""
    rows = reliability(same, p, bins, w)
    total = sum(r["weight"] for r in rows)
    return float(sum(r["weight"] / total * abs(r["mean_predicted"] - r["observed"]) for r in rows))
