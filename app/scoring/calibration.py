"""Distance -> match percent, through a calibration file (models/calibration.json).

The file holds a logistic curve p(same | d) = sigmoid(w * d + b) for a stated prior
probability of a genuine attempt (0.5 unless the file says otherwise), with where it
came from. A ``"provisional": true`` file is a placeholder that was not fitted on data.

Distances between two fast embeddings, between a template and a fast embedding, and
between two templates are distributed differently (averaging views brings a face's
embeddings closer together), so each has its own curve: the file's top level is the
``fast`` one, ``curves`` holds ``mixed`` and ``thorough`` (app/face/views.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelFileError
from app.face.views import CURVES, FAST
from app.scoring.openset import OpenSetRule


@dataclass(frozen=True)
class SmallProbe:
    """How a probe face too small to be enrolled is scored (issue 39): the curve's
    log-odds times ``slope`` plus ``offset``, fitted on probes of fewer than
    ``below_inter_eye_px`` px between the eyes (benchmarks/small_probes.py). A slope
    under 1 makes the percent less sure for the same distance: what a small face says
    about who it is, it says less surely. ``threshold_shift`` (never above 0) is added
    to the decision threshold, so that strangers' small faces match no more often than
    large ones: less sure, not wrong more often."""

    below_inter_eye_px: float
    slope: float
    offset: float
    threshold_shift: float = 0.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SmallProbe:
        small = cls(
            float(raw["below_inter_eye_px"]),
            float(raw["slope"]),
            float(raw["offset"]),
            float(raw.get("threshold_shift", 0.0)),
        )
        if not (small.below_inter_eye_px > 0 and 0 < small.slope <= 1.5):
            raise ValueError("small_probe: below_inter_eye_px > 0 and 0 < slope <= 1.5")
        if not -0.2 <= small.threshold_shift <= 0:
            raise ValueError("small_probe: threshold_shift in [-0.2, 0] (never looser)")
        return small


@dataclass(frozen=True)
class Calibration:
    version: str
    provisional: bool
    w: float
    b: float
    threshold: float
    prior: float
    clip_low: float
    clip_high: float
    pipeline: dict[str, Any] | None
    raw: dict[str, Any]
    fmr_table: dict[str, Any] | None = None
    # The open-set identification rule of searches on this curve (issue 36); None in a
    # file fitted before it.
    open_set: OpenSetRule | None = None

    # The other curves (app/face/views.py CURVES) by name; this one is "fast".
    curves: dict[str, Calibration] = field(default_factory=dict)
    name: str = FAST
    # How a probe face too small to enroll is scored, on every curve; None in a file
    # fitted before issue 39 (such a probe is then scored as any other).
    small_probe: SmallProbe | None = None

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read and check a calibration file: its top level is the fast curve, and
        ``curves`` holds one entry of the same shape per other curve.

        Raises:
            ModelFileError: the file is missing, not JSON, or lacks a field.
        """
        try:
            raw = json.loads(path.read_text())
            extra = raw.get("curves") or {}
            if not isinstance(extra, dict) or not set(extra) <= set(CURVES[1:]):
                raise ValueError(f"curves may only be {', '.join(CURVES[1:])}")
            curves = {name: cls._parse(body, path, name) for name, body in extra.items()}
            small = SmallProbe.from_dict(raw["small_probe"]) if "small_probe" in raw else None
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ModelFileError(f"Cannot use calibration file {path}: {exc!r}") from exc
        curves = {name: replace(c, small_probe=small) for name, c in curves.items()}
        return replace(cls._parse(raw, path, FAST), curves=curves, small_probe=small)

    @classmethod
    def _parse(cls, raw: dict[str, Any], path: Path, name: str) -> Calibration:
        try:
            w, b = float(raw["params"]["w"]), float(raw["params"]["b"])
            low, high = (float(x) for x in raw.get("clip_percent", [0.1, 99.9]))
            calibration = cls(
                version=str(raw["version"]),
                provisional=bool(raw.get("provisional", False)),
                w=w,
                b=b,
                threshold=float(raw["threshold"]),
                prior=float(raw.get("prior", 0.5)),
                clip_low=low,
                clip_high=high,
                pipeline=raw.get("pipeline"),
                raw=raw,
                fmr_table=raw.get("fmr_table"),
                open_set=OpenSetRule.from_dict(raw["open_set"], name)
                if "open_set" in raw
                else None,
                name=name,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"Cannot use calibration file {path} ({name}): {exc!r}") from exc
        if not (w < 0 and 0 < calibration.prior < 1 and 0 <= low < high <= 100):
            raise ModelFileError(
                f"Calibration file {path} ({name}) is inconsistent: w must be negative (a "
                "larger distance must mean a lower percent), prior in (0, 1), clip within "
                "0..100."
            )
        return calibration

    def curve(self, name: str) -> Calibration | None:
        """The curve for distances of this kind (app/face/views.py curve_for), or None
        when the file has none for it."""
        return self if name == FAST else self.curves.get(name)

    def is_small(self, inter_eye: float) -> bool:
        """Whether a probe face with ``inter_eye`` px between the eyes is scored as a
        small one (:class:`SmallProbe`)."""
        return self.small_probe is not None and inter_eye < self.small_probe.below_inter_eye_px

    def decision_threshold(self, threshold: float, *, small: bool = False) -> float:
        """``threshold``, tightened by the small-probe shift for a probe face too small to
        enroll (:class:`SmallProbe`; never looser)."""
        if small and self.small_probe is not None:
            return round(threshold + self.small_probe.threshold_shift, 4)
        return threshold

    def probability(
        self, distance: float | np.ndarray, prior: float | None = None, *, small: bool = False
    ) -> Any:
        """P(same person | distance), at ``prior`` if given, else the file's prior;
        ``small``: for a probe face too small to enroll (:class:`SmallProbe`).

        A different prior shifts the log-odds by logit(prior) - logit(file prior): the
        likelihood ratio the curve encodes is kept, the base rate changes.
        """
        logit = self.w * np.asarray(distance, dtype=np.float64) + self.b
        if small and self.small_probe is not None:
            logit = self.small_probe.slope * logit + self.small_probe.offset
        if prior is not None and prior != self.prior:
            logit = logit + _logit(prior) - _logit(self.prior)
        return 1.0 / (1.0 + np.exp(-logit))

    def percent(self, distance: float, prior: float | None = None, *, small: bool = False) -> float:
        """The match percent shown to users: 100 x probability, clipped to the file's range
        (0.1..99.9 by default: no photo comparison makes anything certain)."""
        p = float(self.probability(distance, prior, small=small)) * 100.0
        return round(min(max(p, self.clip_low), self.clip_high), 2)

    def fmr(self, distance: float) -> tuple[float, int, int] | None:
        """The share of the calibration data's impostor pairs at or below ``distance``:
        (share, count, impostor pairs), or None without an FMR table. Counted up to the
        next grid step above ``distance``, so the share errs high, never low."""
        table = self.fmr_table
        if not table or not table.get("impostor_pairs"):
            return None
        counts = table["cumulative_impostors"]
        total = int(table["impostor_pairs"])
        if not math.isfinite(distance):  # (an overflowed distance: past every step)
            return counts[-1] / total, int(counts[-1]), total
        i = min(max(math.ceil(distance / table["grid_step"] - 1e-9), 0), len(counts) - 1)
        return counts[i] / total, int(counts[i]), total

    def fmr_rate(self, distance: float) -> float | None:
        """The share of impostor pairs at or below ``distance``, read off the FMR table
        between its grid steps; None without a table."""
        table = self._fmr_curve()
        return None if table is None else float(np.interp(distance, *table))

    def distance_at_fmr(self, rate: float) -> float | None:
        """The distance at which this curve's impostor pairs reach ``rate`` (the inverse
        of :meth:`fmr_rate`); None without a table."""
        table = self._fmr_curve()
        if table is None:
            return None
        grid, shares = table
        # The first grid step where the share reaches the rate, and the one before it.
        i = int(np.searchsorted(shares, rate, side="left"))
        if i == 0 or i >= len(shares):
            return float(grid[min(i, len(grid) - 1)])
        low, high = shares[i - 1], shares[i]
        return float(grid[i - 1] + (rate - low) / (high - low) * (grid[i] - grid[i - 1]))

    def distance_for_max_fmr(self, rate: float) -> tuple[float, bool] | None:
        """The distance at which a false match rate of ``rate`` is reached, for /verify's
        ``max_fmr``, and whether the data supports it: from the open-set rule's impostor
        tail (tens of millions of pairs, and a fitted tail below them) where the file has
        one, else from the FMR table; None with neither. A rate under what the data
        supports gets the distance at the lowest supported rate, and False."""
        if self.open_set is not None:
            tail = self.open_set.pairs_tail or self.open_set.tail
            return tail.pooled_quantile(max(rate, tail.floor)), rate >= tail.floor
        table = self.fmr_table
        if not table or not table.get("impostor_pairs"):
            return None
        lowest = 1.0 / float(table["impostor_pairs"])
        found = self.distance_at_fmr(max(rate, lowest))
        return None if found is None else (found, rate >= lowest)

    def _fmr_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The FMR table as (distance grid, share of impostors at or below)."""
        table = self.fmr_table
        if not table or not table.get("impostor_pairs"):
            return None
        shares = np.asarray(table["cumulative_impostors"], dtype=np.float64)
        shares /= float(table["impostor_pairs"])
        return np.arange(len(shares)) * float(table["grid_step"]), shares

    def info(self) -> dict[str, Any]:
        return {
            "curve": self.name,
            "version": self.version,
            "provisional": self.provisional,
            "method": self.raw.get("method", "logistic"),
            "prior": self.prior,
            "threshold": self.threshold,
            "description": self.raw.get("description"),
        }


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def matched_threshold(fast: Calibration, curve: Calibration, threshold: float) -> float:
    """The threshold on ``curve`` with the false match rate ``threshold`` has on the fast
    curve: the same security, so a more accurate embedding shows as fewer false
    rejections rather than more false matches (averaging views brings strangers' faces
    closer too). ``threshold`` itself without FMR tables, or for the fast curve."""
    if curve is fast:
        return threshold
    rate = fast.fmr_rate(threshold)
    matched = curve.distance_at_fmr(rate) if rate is not None else None
    return threshold if matched is None else round(matched, 4)
