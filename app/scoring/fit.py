"""Fitting P(same | distance) on labelled pairs.

- :func:`fit_logistic`: Platt scaling, p = sigmoid(w * d + b), class-balanced, no
  regularisation, by Newton's method (IRLS) on the two parameters: a single dense unit
  with a sigmoid activation.
- :func:`fit_isotonic`: the non-parametric check, a non-increasing step function of the
  distance (pool-adjacent-violators).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.scoring.metrics import balanced_weights


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_logistic(
    distance: np.ndarray, same: np.ndarray, *, iterations: int = 100
) -> tuple[float, float]:
    """Class-balanced maximum-likelihood logistic fit of ``same`` on ``distance``.

    Returns:
        (w, b) with P(same | d) = sigmoid(w * d + b) at a prior of 0.5.
    """
    d = np.asarray(distance, dtype=np.float64)
    y = np.asarray(same, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("calibration needs both same-person and different-person pairs")
    if d[y == 1].max() < d[y == 0].min():
        # Without regularisation the maximum-likelihood slope is then infinite.
        raise ValueError(
            "every same-person pair is closer than every different-person pair: the data "
            "cannot fix the curve's slope; calibrate on more (and harder) pairs"
        )
    weights = balanced_weights(np.asarray(same, dtype=bool))
    x = np.stack([d, np.ones_like(d)], axis=1)
    # Start from a line through the class means' midpoint: IRLS converges from there.
    mid = (d[y == 1].mean() + d[y == 0].mean()) / 2
    theta = np.array([-10.0, 10.0 * mid])
    for _ in range(iterations):
        p = _sigmoid(x @ theta)
        gradient = x.T @ (weights * (y - p))
        hessian = (x * (weights * p * (1 - p))[:, None]).T @ x
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        theta = theta + step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


@dataclass(frozen=True)
class Isotonic:
    """A non-increasing step function: ``values[i]`` for distances in
    [edges[i], edges[i+1])."""

    edges: np.ndarray
    values: np.ndarray

    def __call__(self, distance: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.edges, np.asarray(distance), side="right") - 1
        return self.values[np.clip(i, 0, len(self.values) - 1)]


def fit_isotonic(distance: np.ndarray, same: np.ndarray) -> Isotonic:
    """Class-balanced isotonic regression of ``same`` on ``distance`` (non-increasing)."""
    order = np.argsort(distance, kind="stable")
    d = np.asarray(distance, dtype=np.float64)[order]
    y = np.asarray(same, dtype=np.float64)[order]
    w = balanced_weights(np.asarray(same, dtype=bool))[order]
    # Pool adjacent violators on a sequence that must not increase.
    means: list[float] = []
    weights: list[float] = []
    starts: list[int] = []
    for i in range(len(d)):
        means.append(y[i])
        weights.append(w[i])
        starts.append(i)
        while len(means) > 1 and means[-2] < means[-1]:
            total = weights[-2] + weights[-1]
            merged = (means[-2] * weights[-2] + means[-1] * weights[-1]) / total
            means[-2:] = [merged]
            weights[-2:] = [total]
            starts.pop()
    edges = d[np.asarray(starts)]
    edges[0] = -np.inf
    return Isotonic(edges=edges, values=np.asarray(means))
