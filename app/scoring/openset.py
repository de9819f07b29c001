"""Open-set identification: is the nearest enrolled subject the person in the photo, or
is the person not enrolled at all?

A 1:1 threshold applied to a search of N subjects lets a stranger through whenever any
one of the N is closer than it: about 1 - (1 - FMR)^N of strangers (issue 36: 92% at
N = 940 with the 1:1 threshold). The decision here knows N and looks at more than the
nearest distance:

- :class:`ImpostorTail`: the lower tail of the distance between two different people's
  embeddings, counted on millions of impostor pairs and, below the last thousands of
  them, a generalised Pareto fit (the peaks-over-threshold method of extreme-value
  theory; ISO/IEC 5152 describes it for biometric tails). It says how far down the
  data reaches and the fit may be trusted.
- :class:`OpenSetRule`: one dense logistic unit, p = sigmoid(x . w + b), over features
  of the search (the nearest distance, its margin to the next subject, the collection's
  size; :func:`features`), fitted on identity-split searches of galleries of 100 to
  5,000 people (app/scoring/openset_fit.py). ``p`` is the probability that the nearest
  subject is the person, at a stated prior that the person is enrolled at all.
- The false-positive identification rate (FPIR: strangers given a ``best``) of a
  decision "p >= t" at N subjects comes from a table of thresholds per (N, FPIR),
  simulated from the impostor tail: the k nearest of N strangers are the k smallest of
  N draws from it. A size past what the tail supports for the FPIR asked is refused,
  not guessed (:meth:`OpenSetRule.decide` says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The search features, by name, in the order of the rule's weights. Each needs the
# distances of the nearest NEIGHBOURS subjects (fewer: the missing ones count as far).
FEATURES = {
    "d1": "distance to the nearest subject",
    "margin": "distance to the second-nearest subject minus d1",
    "log_n": "natural log of the subjects in the collection",
    "spread": "mean distance to the 2nd..5th nearest subjects minus d1",
}
NEIGHBOURS = 5
# A subject missing from the search (a collection of fewer than NEIGHBOURS) counts as a
# typical stranger: the median impostor distance, 0.79-0.81 on every curve of the
# shipped calibration. (Past every impostor, 1.2, made a stranger 0.8 away from both
# subjects of a 2-subject collection look 93% likely to be the nearest.)
FAR = 0.8


def features(distances: np.ndarray, subjects: int, names: tuple[str, ...]) -> np.ndarray:
    """The rule's features for searches with these nearest-subject distances.

    Args:
        distances: (searches, k) ascending distances to the k nearest subjects; k may be
            below NEIGHBOURS (the missing ones count as FAR).
        subjects: the subjects searched (N), one per search or one for all.
        names: which features, in order (keys of FEATURES).
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.shape[1] < NEIGHBOURS:
        pad = np.full((d.shape[0], NEIGHBOURS - d.shape[1]), FAR)
        d = np.concatenate([d, pad], axis=1)
    d = d[:, :NEIGHBOURS]
    n = np.broadcast_to(np.asarray(subjects, dtype=np.float64), (d.shape[0],))
    columns: dict[str, Callable[[], np.ndarray]] = {
        "d1": lambda: d[:, 0],
        "margin": lambda: d[:, 1] - d[:, 0],
        "log_n": lambda: np.log(np.maximum(n, 1.0)),
        "spread": lambda: d[:, 1:].mean(axis=1) - d[:, 0],
    }
    return np.stack([columns[name]() for name in names], axis=1)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class ImpostorTail:
    """P(distance <= d) between two different people's embeddings.

    Counted on a grid above ``u`` (where ``cdf_u`` of the pairs lie below), and below
    ``u`` the generalised Pareto tail F(d) = cdf_u * (1 + xi (u - d) / sigma)^(-1/xi),
    fitted to the pairs under ``u``. ``floor`` is the smallest share the service will
    rest a promise on: below it neither the data nor the fit says anything reliable.
    """

    grid_step: float
    cumulative: np.ndarray  # share of pairs at or below each grid step
    pairs: int
    u: float
    cdf_u: float
    xi: float
    sigma: float
    floor: float
    # Quantiles (0, 0.01, ..., 1) of the probes' shifts: the distances above are
    # centred on each probe's own (app/scoring/openset_fit.py impostor_tail).
    shifts: np.ndarray = field(default_factory=lambda: np.zeros(1))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImpostorTail:
        gpd = raw["gpd"]
        return cls(
            grid_step=float(raw["grid_step"]),
            cumulative=np.asarray(raw["cumulative"], dtype=np.float64) / float(raw["pairs"]),
            pairs=int(raw["pairs"]),
            u=float(gpd["u"]),
            cdf_u=float(gpd["cdf_u"]),
            xi=float(gpd["xi"]),
            sigma=float(gpd["sigma"]),
            floor=float(raw["floor"]),
            shifts=np.asarray(raw.get("shifts", [0.0]), dtype=np.float64),
        )

    @property
    def grid(self) -> np.ndarray:
        return np.arange(len(self.cumulative)) * self.grid_step

    def pooled_cdf(self, d: np.ndarray | float) -> np.ndarray:
        """The share of all impostor pairs at or below ``d`` (one comparison's false
        match rate): the centred distribution averaged over the probes' shifts."""
        d = np.asarray(d, dtype=np.float64)
        pooled: np.ndarray = np.mean([self.cdf(d - shift) for shift in self.shifts], axis=0)
        return pooled

    def pooled_quantile(self, rate: float) -> float:
        """The distance at which :meth:`pooled_cdf` reaches ``rate`` (bisection)."""
        low, high = -0.5, 2.0
        for _ in range(60):
            mid = (low + high) / 2
            if float(self.pooled_cdf(mid)) < rate:
                low = mid
            else:
                high = mid
        return high

    def cdf(self, d: np.ndarray | float) -> np.ndarray:
        """The share of (centred) impostor pairs at or below ``d``."""
        d = np.asarray(d, dtype=np.float64)
        above = np.interp(d, self.grid, self.cumulative)
        z = np.maximum(self.u - d, 0.0)
        if abs(self.xi) < 1e-9:
            below = self.cdf_u * np.exp(-z / self.sigma)
        else:
            base = np.maximum(1.0 + self.xi * z / self.sigma, 0.0)
            with np.errstate(divide="ignore"):
                below = self.cdf_u * np.where(base > 0, base ** (-1.0 / self.xi), 0.0)
        return np.where(d >= self.u, above, below)

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """The distance at which the share of impostor pairs reaches ``p`` (inverse of
        :meth:`cdf`)."""
        p = np.asarray(p, dtype=np.float64)
        grid, shares = self.grid, self.cumulative
        # Above u: the counted curve (strictly increasing where it has pairs).
        keep = np.concatenate([[True], np.diff(shares) > 0])
        above = np.interp(p, shares[keep], grid[keep])
        ratio = np.clip(p / self.cdf_u, 1e-300, 1.0)
        if abs(self.xi) < 1e-9:
            z = -self.sigma * np.log(ratio)
        else:
            z = self.sigma / self.xi * (ratio ** (-self.xi) - 1.0)
        return np.where(p >= self.cdf_u, above, self.u - z)


@dataclass(frozen=True)
class OpenSetDecision:
    """What an identify answer says of its nearest subject."""

    named: bool  # the nearest subject is the answer's ``best``
    # P(the nearest subject is the person), at ``prior``; None from the fallback rule.
    probability: float | None
    prior: float
    fpir: float  # the target the decision was made at
    subjects: int  # N: the subjects searched
    supported: bool  # False: N is past what the data supports at this FPIR
    rule: str  # the rule's version
    curve: str  # the calibration curve whose rule decided
    reason: str | None = None  # why a nearest subject was not named (a stable code)


@dataclass(frozen=True)
class OpenSetRule:
    """The open-set decision for searches scored on one calibration curve."""

    version: str
    curve: str
    names: tuple[str, ...]
    weights: np.ndarray
    bias: float
    prior: float
    tail: ImpostorTail
    # Score thresholds (as logits at ``prior``) by collection size and FPIR: row i is
    # sizes[i], column j the logit above which a stranger's search lands with
    # probability levels[j] (simulated from the tail).
    sizes: np.ndarray
    levels: np.ndarray
    logits: np.ndarray
    # The largest size each level is supported at (the tail's floor).
    max_sizes: np.ndarray
    raw: dict[str, Any]
    # The same pairs' distances not centred on their probes: one comparison's false
    # match rate (/verify's max_fmr).
    pairs_tail: ImpostorTail | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], curve: str) -> OpenSetRule:
        table = raw["fpir_table"]
        rule = cls(
            version=str(raw["version"]),
            curve=curve,
            names=tuple(raw["features"]),
            weights=np.asarray(raw["weights"], dtype=np.float64),
            bias=float(raw["bias"]),
            prior=float(raw.get("prior", 0.5)),
            tail=ImpostorTail.from_dict(raw["impostor_tail"]),
            sizes=np.asarray(table["sizes"], dtype=np.float64),
            levels=np.asarray(table["levels"], dtype=np.float64),
            logits=np.asarray(table["logits"], dtype=np.float64),
            max_sizes=np.asarray(table["max_sizes"], dtype=np.float64),
            raw=raw,
            pairs_tail=ImpostorTail.from_dict(raw["pairs_tail"]) if "pairs_tail" in raw else None,
        )
        unknown = set(rule.names) - set(FEATURES)
        if unknown or len(rule.weights) != len(rule.names):
            raise ValueError(f"open-set rule of curve {curve}: features {rule.names!r}")
        if rule.logits.shape != (len(rule.sizes), len(rule.levels)):
            raise ValueError(f"open-set rule of curve {curve}: fpir_table has the wrong shape")
        return rule

    def logit(self, distances: np.ndarray, subjects: int) -> np.ndarray:
        """The rule's log-odds that the nearest subject is the person, at its prior."""
        z: np.ndarray = features(distances, subjects, self.names) @ self.weights + self.bias
        return z

    def probability(self, distances: np.ndarray, subjects: int, prior: float | None) -> float:
        return self._probability(float(self.logit(distances, subjects)[0]), prior)

    def _probability(self, z: float, prior: float | None) -> float:
        """The probability at ``prior`` of the logit ``z`` (at the rule's prior)."""
        if prior is not None and prior != self.prior:
            z += _logit(prior) - _logit(self.prior)
        return 1.0 / (1.0 + math.exp(-max(min(z, 700.0), -700.0)))

    def supported(self, subjects: int, fpir: float) -> bool:
        """Whether the tail supports a promise of ``fpir`` at ``subjects``."""
        limit = float(np.interp(math.log(fpir), np.log(self.levels), np.log(self.max_sizes)))
        return subjects <= math.exp(limit) * (1 + 1e-9)

    def threshold(self, subjects: int, fpir: float) -> float:
        """The logit (at the rule's prior) a search of ``subjects`` must reach to name
        its nearest subject with a false-positive identification rate of ``fpir``:
        the table read at log N and log FPIR (bilinear), clamped to its edges."""
        ln, lf = np.log(self.sizes), np.log(self.levels)
        x = min(max(math.log(max(subjects, 1)), ln[0]), ln[-1])
        y = min(max(math.log(fpir), lf[0]), lf[-1])
        i = min(int(np.searchsorted(ln, x, side="right")) - 1, len(ln) - 2)
        j = min(int(np.searchsorted(lf, y, side="right")) - 1, len(lf) - 2)
        i, j = max(i, 0), max(j, 0)
        tx = (x - ln[i]) / (ln[i + 1] - ln[i])
        ty = (y - lf[j]) / (lf[j + 1] - lf[j])
        t = self.logits
        return float(
            (1 - tx) * (1 - ty) * t[i, j]
            + tx * (1 - ty) * t[i + 1, j]
            + (1 - tx) * ty * t[i, j + 1]
            + tx * ty * t[i + 1, j + 1]
        )

    def decide(
        self, distances: np.ndarray, subjects: int, fpir: float, prior: float | None
    ) -> OpenSetDecision:
        """Name the nearest subject when its search clears the threshold for ``fpir``
        at ``subjects``; never past the size the tail supports for ``fpir``."""
        z = float(self.logit(distances, subjects)[0])
        probability = self._probability(z, prior)
        supported = self.supported(subjects, fpir)
        reason = None
        if not supported:
            named, reason = False, "fpir_unsupported"
        else:
            named = z >= self.threshold(subjects, fpir)
            reason = None if named else "below_open_set_threshold"
        return OpenSetDecision(
            named=named,
            probability=probability,
            prior=self.prior if prior is None else prior,
            fpir=fpir,
            subjects=subjects,
            supported=supported,
            rule=self.version,
            curve=self.curve,
            reason=reason,
        )
