"""Fitting the open-set rule (app/scoring/openset.py) on embedded, labelled photos.

- :func:`impostor_tail`: every pair of photos of two different people (tens of millions),
  counted on a grid, and a generalised Pareto fit to the lowest ``tail_share`` of them
  (probability-weighted moments, Hosking & Wallis 1987: closed form, no optimiser).
- :func:`simulate_searches`: open-set searches as the service makes them: a gallery of
  N people with one enrolled photo each, searched with another photo of an enrolled
  person (mated) or a photo of someone not enrolled (non-mated).
- :func:`fit_weights`: one dense logistic unit over the searches' features
  (class-balanced per gallery size: the probability is stated at a prior of 0.5 that
  the person searched for is enrolled), by Newton's method.
- :func:`fpir_table`: the rule's threshold per (N, FPIR): the k nearest of N strangers
  drawn as the k smallest of N draws from the impostor tail (exponential spacings),
  so any N can be tabled, not only the sizes the photos allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.scoring.openset import FAR, NEIGHBOURS, ImpostorTail, features

TAIL_GRID_STEP = 0.0025
TAIL_GRID_MAX = 1.6
# The lower tail's generalised Pareto fit starts where this share of impostor pairs lie
# below (at ~40M pairs: the lowest ~4,000).
TAIL_SHARE = 1e-4
# Each probe's shift: its own 1% impostor quantile against the median probe's.
SHIFT_QUANTILE = 0.01
SHIFT_POINTS = 101
# How far below the data the fit is trusted: one decade under one pair in all of them.
FLOOR_DECADES = 1.0
# The table's sizes and FPIR levels (a request may ask for no FPIR below LEVELS[0]).
SIZES = tuple(int(round(x)) for x in np.geomspace(2, 1e8, 33))
LEVELS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between every row of ``a`` and every row of ``b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sq = (a64 * a64).sum(1)[:, None] + (b64 * b64).sum(1)[None, :] - 2 * a64 @ b64.T
    out: np.ndarray = np.sqrt(np.maximum(sq, 0.0))
    return out


def impostor_tail(
    gallery: np.ndarray,
    gallery_people: np.ndarray,
    probes: np.ndarray,
    probe_people: np.ndarray,
    *,
    tail_share: float = TAIL_SHARE,
    shift_quantile: float | None = SHIFT_QUANTILE,
    block: int = 1024,
) -> ImpostorTail:
    """The impostor distance distribution between ``gallery`` embeddings and ``probes``
    (every pair of two different people), counted, and its lower tail fitted.

    With ``shift_quantile``, each probe's distances are first centred on its own
    ``shift_quantile`` impostor quantile (its shift from the median probe's): some
    faces lie nearer to everyone than others, so one probe's N distances are not N
    independent draws from the pooled distribution, and treating them so overstated
    FPIR at N = 1,000 several times over on held-out people. The tail is then of the
    centred distances, and the shifts' distribution is kept beside it."""
    shifts = np.zeros(len(probes))
    if shift_quantile is not None:
        for rows in _blocks(len(probes), block):
            d = pair_distances(probes[rows], gallery)
            d[probe_people[rows][:, None] == gallery_people[None, :]] = np.nan
            shifts[rows] = np.nanquantile(d, shift_quantile, axis=1)
        shifts -= np.median(shifts)
    bins = int(round(TAIL_GRID_MAX / TAIL_GRID_STEP))
    counts = np.zeros(bins + 1, dtype=np.int64)

    def centred(rows: slice) -> np.ndarray:
        d = pair_distances(probes[rows], gallery) - shifts[rows][:, None]
        values: np.ndarray = d[probe_people[rows][:, None] != gallery_people[None, :]]
        return values

    for rows in _blocks(len(probes), block):
        values = centred(rows)
        idx = np.clip(np.ceil(values / TAIL_GRID_STEP - 1e-9).astype(np.int64), 0, bins)
        counts += np.bincount(idx, minlength=bins + 1)
    pairs = int(counts.sum())
    # Keep the distances under the grid step where twice the tail's share is reached.
    keep_below = (int(np.searchsorted(np.cumsum(counts), 2 * tail_share * pairs)) + 1) * (
        TAIL_GRID_STEP
    )
    lows = [v[v < keep_below] for v in (centred(rows) for rows in _blocks(len(probes), block))]
    low = np.sort(np.concatenate(lows))
    k = max(int(tail_share * pairs), 50)
    if len(low) <= k:
        raise ValueError(f"too few impostor pairs ({pairs}) to fit a tail")
    u = float(low[k])
    excess = u - low[:k]
    xi, sigma = gpd_pwm(excess)
    return ImpostorTail(
        grid_step=TAIL_GRID_STEP,
        cumulative=np.cumsum(counts) / pairs,
        pairs=pairs,
        u=u,
        cdf_u=k / pairs,
        xi=xi,
        sigma=sigma,
        floor=10.0**-FLOOR_DECADES / pairs,
        shifts=np.quantile(shifts, np.linspace(0, 1, SHIFT_POINTS)),
    )


def gpd_pwm(excess: np.ndarray) -> tuple[float, float]:
    """(xi, sigma) of a generalised Pareto distribution, P(Z > z) = (1 + xi z /
    sigma)^(-1/xi), fitted to positive ``excess`` by probability-weighted moments."""
    z = np.sort(np.asarray(excess, dtype=np.float64))
    n = len(z)
    p = (np.arange(1, n + 1) - 0.35) / n
    b0 = z.mean()
    b1 = float(np.mean((1 - p) * z))
    k = b0 / (b0 - 2 * b1) - 2  # Hosking's shape: xi = -k
    sigma = 2 * b0 * b1 / (b0 - 2 * b1)
    return float(-k), float(sigma)


def tail_dict(tail: ImpostorTail) -> dict[str, Any]:
    """The tail as calibration.json stores it (counts, not shares)."""
    cumulative = np.rint(tail.cumulative * tail.pairs).astype(np.int64)
    # The counted curve past the last step that moves adds nothing.
    last = int(np.searchsorted(cumulative, cumulative[-1])) + 1
    return {
        "grid_step": tail.grid_step,
        "cumulative": cumulative[:last].tolist(),
        "pairs": tail.pairs,
        "gpd": {"u": tail.u, "cdf_u": tail.cdf_u, "xi": tail.xi, "sigma": tail.sigma},
        "floor": tail.floor,
        "shifts": [round(float(x), 5) for x in tail.shifts],
    }


@dataclass
class Searches:
    """Open-set searches: the nearest subjects' distances and what they were."""

    distances: np.ndarray  # (searches, NEIGHBOURS), ascending; FAR past the gallery
    mated: np.ndarray  # the person searched for is enrolled
    correct: np.ndarray  # the nearest subject is the person searched for
    subjects: np.ndarray  # N of each search's gallery

    @classmethod
    def concat(cls, parts: list[Searches]) -> Searches:
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )


def nearest(
    gallery: np.ndarray, gallery_people: np.ndarray, probes: np.ndarray, k: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's k nearest gallery rows (one per subject): distances and people."""
    d = pair_distances(probes, gallery)
    k_eff = min(k, d.shape[1])
    idx = np.argpartition(d, k_eff - 1, axis=1)[:, :k_eff]
    dd = np.take_along_axis(d, idx, 1)
    order = np.argsort(dd, axis=1)
    dd = np.take_along_axis(dd, order, 1)
    people = gallery_people[np.take_along_axis(idx, order, 1)]
    if k_eff < k:
        dd = np.concatenate([dd, np.full((len(dd), k - k_eff), FAR)], axis=1)
    return dd, people


def simulate_searches(
    people: np.ndarray,
    gallery_embeddings: np.ndarray,
    probe_embeddings: np.ndarray,
    *,
    size: int,
    rng: np.random.Generator,
    mated_per_person: int = 2,
) -> Searches:
    """One gallery of ``size`` people drawn from those in ``people`` (one photo each,
    the people with a second photo first, so there are mated searches), searched with
    up to ``mated_per_person`` other photos of each enrolled person and one photo of
    each person left out.

    Args:
        people: each photo's person (an integer id); rows of the embeddings.
        gallery_embeddings: each photo as enrolled.
        probe_embeddings: each photo as a probe.
    """
    photos: dict[int, list[int]] = {}
    for i, p in enumerate(people.tolist()):
        photos.setdefault(p, []).append(i)
    names = np.array(sorted(photos))
    rng.shuffle(names)
    multi = [p for p in names if len(photos[p]) > 1]
    single = [p for p in names if len(photos[p]) == 1]
    # Half the gallery (at most) from people with several photos: mated searches need
    # them, and strangers need people left out of every size.
    take_multi = min(len(multi), max(size // 2, size - len(single) // 2))
    enrolled = multi[:take_multi] + single[: size - take_multi]
    left = multi[take_multi:] + single[size - take_multi :]
    rows: list[int] = []
    mated_rows: list[int] = []
    for p in enrolled:
        mine = rng.permutation(photos[p])
        rows.append(mine[0])
        mated_rows.extend(mine[1 : 1 + mated_per_person])
    stranger_rows = [photos[p][rng.integers(len(photos[p]))] for p in left]
    rows_a = np.asarray(rows)
    probe_rows = np.asarray(mated_rows + stranger_rows, dtype=np.int64)
    dd, who = nearest(gallery_embeddings[rows_a], people[rows_a], probe_embeddings[probe_rows])
    mated = np.arange(len(probe_rows)) < len(mated_rows)
    return Searches(
        distances=dd,
        mated=mated,
        correct=mated & (who[:, 0] == people[probe_rows]),
        subjects=np.full(len(probe_rows), len(rows_a)),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def search_weights(searches: Searches) -> np.ndarray:
    """Weights that give mated and non-mated searches equal mass at every gallery size
    (the rule's prior of 0.5), and every size equal mass."""
    w = np.zeros(len(searches.mated))
    sizes = np.unique(searches.subjects)
    for n in sizes:
        at = searches.subjects == n
        for flag in (True, False):
            group = at & (searches.mated == flag)
            if group.any():
                w[group] = 0.5 / group.sum() / len(sizes)
    return w * len(w)


def fit_weights(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, ridge: float = 1e-6
) -> tuple[np.ndarray, float]:
    """Weighted maximum-likelihood logistic regression of ``y`` on ``x`` (Newton/IRLS),
    a whisker of ridge so separable data still converges. Returns (w, b)."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    # Standardise for the solver; the answer is mapped back.
    mean, scale = xb[:, :-1].mean(0), xb[:, :-1].std(0) + 1e-12
    xs = xb.copy()
    xs[:, :-1] = (xs[:, :-1] - mean) / scale
    theta = np.zeros(xs.shape[1])
    for _ in range(100):
        p = _sigmoid(xs @ theta)
        gradient = xs.T @ (weights * (y - p)) - ridge * np.r_[theta[:-1], 0.0]
        hessian = (xs * (weights * p * (1 - p))[:, None]).T @ xs + ridge * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta += step
        if np.abs(step).max() < 1e-9:
            break
    w = theta[:-1] / scale
    b = float(theta[-1] - (w * mean).sum())
    return w, b


def stranger_order_statistics(
    tail: ImpostorTail, size: int, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Samples of the NEIGHBOURS smallest of ``size`` impostor distances: uniform order
    statistics from exponential spacings (U_(j) = S_j / (S_k + Gamma(N + 1 - k))),
    through the tail's quantile function; FAR past ``size``."""
    k = min(size, NEIGHBOURS)
    spacings = np.cumsum(rng.exponential(size=(samples, k)), axis=1)
    rest = rng.gamma(size + 1 - k, size=samples)
    u = spacings / (spacings[:, -1:] + rest[:, None])
    # Each search a probe of its own: a shift drawn from the probes' shifts.
    shift = np.interp(rng.random(samples), np.linspace(0, 1, len(tail.shifts)), tail.shifts)
    d = tail.quantile(u) + shift[:, None]
    if k < NEIGHBOURS:
        d = np.concatenate([d, np.full((samples, NEIGHBOURS - k), FAR)], axis=1)
    out: np.ndarray = d
    return out


def stranger_searches(
    people: np.ndarray,
    gallery_embeddings: np.ndarray,
    probe_embeddings: np.ndarray,
    *,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Non-mated searches only: a gallery of ``size`` people (one photo each), searched
    with one photo of everyone else (one each, as the test searches are: people with
    many photos would otherwise weigh as much as many people). Their distances."""
    photos: dict[int, list[int]] = {}
    for i, p in enumerate(people.tolist()):
        photos.setdefault(p, []).append(i)
    names = np.array(sorted(photos))
    rng.shuffle(names)
    enrolled, left = names[:size], names[size:]
    rows = np.asarray([photos[p][rng.integers(len(photos[p]))] for p in enrolled])
    probe_rows = np.asarray([photos[p][rng.integers(len(photos[p]))] for p in left])
    dd, _ = nearest(gallery_embeddings[rows], people[rows], probe_embeddings[probe_rows])
    return dd


def fpir_table(
    names: tuple[str, ...],
    weights: np.ndarray,
    bias: float,
    tail: ImpostorTail,
    *,
    sizes: tuple[int, ...] = SIZES,
    levels: tuple[float, ...] = LEVELS,
    samples: int = 400_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The rule's logit thresholds per (size, FPIR level), from simulated strangers'
    searches, and the largest size each level is supported at (``level / N`` of the
    impostor pairs no rarer than the tail's floor)."""
    rng = np.random.default_rng(seed)
    logits = []
    for size in sizes:
        d = stranger_order_statistics(tail, size, samples, rng)
        z = np.sort(features(d, size, names) @ weights + bias)
        # The threshold a share ``level`` of strangers reach or pass.
        row = [float(z[min(int(np.floor((1 - lv) * samples)), samples - 1)]) for lv in levels]
        logits.append(row)
    return {
        "sizes": list(sizes),
        "levels": list(levels),
        "logits": logits,
        "max_sizes": [lv / tail.floor for lv in levels],
        "samples": samples,
        "seed": seed,
    }


# A table cell is measured (not simulated) where at least this many different strangers
# are expected past its threshold (repeated galleries search the same strangers again, so
# the count is of people, not searches).
MEASURED_MIN = 20


def measured_correction(
    table: dict[str, Any],
    measured: dict[int, np.ndarray],
    strangers: dict[int, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The simulated table moved onto strangers' searches measured on real photos.

    ``measured``: per gallery size, the rule's logits of real non-mated searches, of
    ``strangers`` different people. Where a cell has MEASURED_MIN of them past it, the
    measured threshold minus the simulated one is its correction; other cells take the
    correction of the nearest measured level at the same size, and sizes past the
    largest measured one take its
    corrections (the simulation gives the shape past the photos, the photos the level).
    Sizes below the smallest measured one take its corrections too.

    Returns the corrected table and a record of the corrections."""
    sizes = np.asarray(table["sizes"], dtype=np.float64)
    levels = list(table["levels"])
    simulated = np.asarray(table["logits"], dtype=np.float64)
    measured_sizes = sorted(measured)
    delta_at: dict[int, list[float]] = {}
    for n in measured_sizes:
        z = np.sort(measured[n])
        row: list[float | None] = []
        sim_row = [
            float(np.interp(np.log(n), np.log(sizes), simulated[:, j])) for j in range(len(levels))
        ]
        for j, level in enumerate(levels):
            if level * strangers[n] >= MEASURED_MIN:
                real = float(z[min(int(np.floor((1 - level) * len(z))), len(z) - 1)])
                row.append(real - sim_row[j])
            else:
                row.append(None)
        # Unmeasured levels take the nearest measured level's correction.
        known = [j for j, v in enumerate(row) if v is not None]
        if not known:
            raise ValueError(f"size {n}: too few strangers' searches to measure any level")
        nearest_known = [row[min(known, key=lambda i: abs(i - j))] for j in range(len(levels))]
        delta_at[n] = [float(v) for v in nearest_known if v is not None]
    log_measured = np.log(np.asarray(measured_sizes, dtype=np.float64))
    corrected = simulated.copy()
    for i, n in enumerate(sizes):
        for j in range(len(levels)):
            deltas = [delta_at[m][j] for m in measured_sizes]
            corrected[i, j] += float(np.interp(np.log(n), log_measured, deltas))
    # A stricter level never has a lower threshold.
    corrected = np.maximum.accumulate(corrected[:, ::-1], axis=1)[:, ::-1]
    out = dict(table)
    out["logits"] = corrected.round(4).tolist()
    record = {
        "measured_sizes": measured_sizes,
        "strangers_searches": {str(n): int(len(measured[n])) for n in measured_sizes},
        "strangers": {str(n): strangers[n] for n in measured_sizes},
        "corrections": {str(n): [round(float(v), 4) for v in delta_at[n]] for n in measured_sizes},
    }
    return out, record
