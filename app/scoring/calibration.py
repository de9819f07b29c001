"""Distance -> match percent, through a calibration file (models/calibration.json).

The file holds a logistic curve p(same | d) = sigmoid(w * d + b) for a stated prior
probability of a genuine attempt (0.5 unless the file says otherwise), with where it
came from. A ``"provisional": true`` file is a placeholder that was not fitted on data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelFileError


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

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read and check a calibration file.

        Raises:
            ModelFileError: the file is missing, not JSON, or lacks a field.
        """
        try:
            raw = json.loads(path.read_text())
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
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"Cannot use calibration file {path}: {exc!r}") from exc
        if not (w < 0 and 0 < calibration.prior < 1 and 0 <= low < high <= 100):
            raise ModelFileError(
                f"Calibration file {path} is inconsistent: w must be negative (a larger "
                "distance must mean a lower percent), prior in (0, 1), clip within 0..100."
            )
        return calibration

    def probability(self, distance: float | np.ndarray, prior: float | None = None) -> Any:
        """P(same person | distance), at ``prior`` if given, else the file's prior.

        A different prior shifts the log-odds by logit(prior) - logit(file prior): the
        likelihood ratio the curve encodes is kept, the base rate changes.
        """
        logit = self.w * np.asarray(distance, dtype=np.float64) + self.b
        if prior is not None and prior != self.prior:
            logit = logit + _logit(prior) - _logit(self.prior)
        return 1.0 / (1.0 + np.exp(-logit))

    def percent(self, distance: float, prior: float | None = None) -> float:
        """The match percent shown to users: 100 x probability, clipped to the file's range
        (0.1..99.9 by default: no photo comparison makes anything certain)."""
        p = float(self.probability(distance, prior)) * 100.0
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
        i = min(max(math.ceil(distance / table["grid_step"] - 1e-9), 0), len(counts) - 1)
        return counts[i] / total, int(counts[i]), total

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "provisional": self.provisional,
            "method": self.raw.get("method", "logistic"),
            "prior": self.prior,
            "threshold": self.threshold,
            "description": self.raw.get("description"),
        }


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))
