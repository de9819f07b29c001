"""The open-set rule's parts (app/scoring/openset.py, openset_fit.py) on data made here
with known answers, and the shipped rule as the calibration file holds it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.errors import InvalidRequest
from app.scoring.calibration import Calibration
from app.scoring.openset import FAR, NEIGHBOURS, ImpostorTail, OpenSetRule, features
from app.scoring.openset_fit import (
    fpir_table,
    gpd_pwm,
    impostor_tail,
    measured_correction,
    stranger_order_statistics,
    tail_dict,
)
from app.service.decisions import Decisions
from app.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "models" / "calibration.json"
NAMES = ("d1", "margin", "spread", "log_n")


def test_gpd_pwm_recovers_a_known_shape_and_scale() -> None:
    rng = np.random.default_rng(0)
    xi, sigma = -0.2, 0.03
    u = rng.random(200_000)
    sample = sigma / xi * ((1 - u) ** -xi - 1)  # inverse CDF of the GPD
    got_xi, got_sigma = gpd_pwm(sample)
    assert got_xi == pytest.approx(xi, abs=0.02) and got_sigma == pytest.approx(sigma, rel=0.03)


@pytest.fixture(scope="module")
def tail() -> ImpostorTail:
    """A tail counted on 3,000 x 3,000 random pairs of 'people' (one photo each)."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=(1500, 16)) / 4
    p = rng.normal(size=(1500, 16)) / 4
    return impostor_tail(g, np.arange(1500), p, np.arange(1500, 3000), tail_share=1e-3)


def test_tail_cdf_and_quantile_are_inverse_and_continuous_at_the_fit(tail: ImpostorTail) -> None:
    for rate in (1e-9, 1e-6, 1e-4, tail.cdf_u, 0.01, 0.3):
        assert float(tail.cdf(tail.quantile(np.array(rate)))) == pytest.approx(rate, rel=0.02)
    just = np.array([tail.u - 1e-9, tail.u + 1e-9])
    below, above = tail.cdf(just)
    assert below == pytest.approx(above, rel=0.05)
    assert 0 < tail.floor < 1 / tail.pairs


def test_tail_survives_its_stored_form(tail: ImpostorTail) -> None:
    again = ImpostorTail.from_dict(json.loads(json.dumps(tail_dict(tail))))
    d = np.linspace(0.0, 1.5, 50)
    assert np.allclose(again.cdf(d), tail.cdf(d), atol=1e-9)


def test_order_statistics_match_a_direct_draw(tail: ImpostorTail) -> None:
    """The k smallest of N draws, sampled by spacings, against N draws sorted."""
    rng = np.random.default_rng(2)
    n = 200
    fast = stranger_order_statistics(tail, n, 4000, rng)
    direct = np.sort(tail.quantile(rng.random((4000, n))), axis=1)[:, :NEIGHBOURS]
    assert np.allclose(np.median(fast, axis=0), np.median(direct, axis=0), atol=0.01)


def test_fpir_table_thresholds_give_their_rate_on_fresh_strangers(tail: ImpostorTail) -> None:
    weights, bias = np.array([-20.0, 10.0, 30.0, 0.5]), 5.0
    table = fpir_table(NAMES, weights, bias, tail, sizes=(10, 100, 1000), samples=100_000)
    rule = _rule(table, tail, weights, bias)
    rng = np.random.default_rng(9)
    for n in (10, 100, 1000):
        d = stranger_order_statistics(tail, n, 100_000, rng)
        z = features(d, n, NAMES) @ weights + bias
        for level in (0.01, 0.1):
            assert (z >= rule.threshold(n, level)).mean() == pytest.approx(level, rel=0.15)


def test_measured_strangers_move_the_table_by_what_they_measured(tail: ImpostorTail) -> None:
    weights, bias = np.array([-20.0, 10.0, 30.0, 0.5]), 5.0
    table = fpir_table(NAMES, weights, bias, tail, sizes=(10, 100, 1000), samples=50_000)
    rng = np.random.default_rng(3)
    measured = {}
    for n in (10, 100):
        d = stranger_order_statistics(tail, n, 50_000, rng)
        measured[n] = features(d, n, NAMES) @ weights + bias + 2.0  # strangers score 2 higher
    moved, record = measured_correction(table, measured, {10: 50_000, 100: 50_000})
    before, after = np.asarray(table["logits"]), np.asarray(moved["logits"])
    # Measured levels (and the sizes past them) move by about 2; 1,000 takes 100's.
    level = table["levels"].index(0.01)
    assert np.allclose((after - before)[:, level], 2.0, atol=0.25)
    assert record["measured_sizes"] == [10, 100]
    assert all(np.all(np.diff(row) <= 1e-9) for row in after)  # stricter: never lower


def _rule(table: dict, tail: ImpostorTail, weights: np.ndarray, bias: float) -> OpenSetRule:
    return OpenSetRule.from_dict(
        {
            "version": "t",
            "features": list(NAMES),
            "weights": weights.tolist(),
            "bias": bias,
            "impostor_tail": tail_dict(tail),
            "fpir_table": table,
        },
        "fast",
    )


def test_a_size_past_the_tail_is_refused_not_guessed(tail: ImpostorTail) -> None:
    weights, bias = np.array([-20.0, 10.0, 30.0, 0.5]), 5.0
    table = fpir_table(NAMES, weights, bias, tail, sizes=(10, 100, 1000), samples=10_000)
    rule = _rule(table, tail, weights, bias)
    close = np.array([0.0, 1.0, 1.0, 1.0, 1.0])  # as near as it gets: named where supported
    edge = int(0.01 / tail.floor)
    assert rule.decide(close, 100, 0.01, None).named
    past = rule.decide(close, edge * 2, 0.01, None)
    assert not past.named and not past.supported and past.reason == "fpir_unsupported"


def test_features_pad_a_small_gallery_with_far_neighbours() -> None:
    x = features(np.array([[0.3, 0.5]]), 2, NAMES)
    assert x[0, 0] == 0.3 and x[0, 1] == pytest.approx(0.2)
    assert x[0, 2] == pytest.approx((0.5 + 3 * FAR) / 4 - 0.3)
    assert x[0, 3] == pytest.approx(np.log(2))


def test_the_shipped_calibration_has_an_open_set_rule_for_every_curve() -> None:
    calibration = Calibration.load(SHIPPED)
    for name in ("fast", "mixed", "thorough"):
        curve = calibration.curve(name)
        assert curve is not None and curve.open_set is not None
        rule = curve.open_set
        assert rule.names == NAMES and rule.tail.pairs >= 10_000_000
        fit = rule.raw["fit"]
        assert fit["people"] > 4000 and max(fit["gallery_sizes"]) >= 2000
        # A nearer nearest, a wider margin: a higher probability.
        near = rule.probability(np.array([0.35, 0.7, 0.72, 0.74, 0.75]), 1000, None)
        far = rule.probability(np.array([0.55, 0.58, 0.6, 0.61, 0.62]), 1000, None)
        assert near is not None and far is not None and near > 0.95 > 0.2 > far
        # A larger collection asks for more (the same search, a hundred times the people).
        s = np.array([0.45, 0.6, 0.62, 0.63, 0.64])
        assert (
            not rule.decide(s, 100_000, 0.01, None).named or rule.decide(s, 100, 0.01, None).named
        )
    held = calibration.curve("mixed").open_set.raw["fit"]["held_out"]  # type: ignore[union-attr]
    for fold in held:
        assert fold["1000"]["0.01"]["fpir"] < 0.015 and fold["100"]["0.01"]["fpir"] < 0.015
        assert fold["1000"]["ece_balanced"] < 0.03


def _decisions() -> Decisions:
    settings = Settings()
    return Decisions(settings, Calibration.load(SHIPPED), templates=True)


def test_missing_neighbours_of_a_large_collection_are_not_read_as_a_wide_margin() -> None:
    """Expired subjects left out of a search leave fewer than five distances: the gap
    must not look like strangers far away (a stranger at 0.55 would be named)."""
    decisions = _decisions()
    full = [0.55, 0.6, 0.62, 0.63, 0.64]
    for found in (full[:1], full[:2], full[:3], full):
        decision = decisions.open_set(found, 1000, 0.01, None, "mixed", True)
        assert not decision.named and decision.probability is not None
        assert decision.probability < 0.5
    # A collection of two really has two: the rule's own padding, a clear match named.
    small = decisions.open_set([0.3, 0.8], 2, 0.01, None, "mixed", True)
    assert small.named and small.probability == pytest.approx(0.999)


def test_distances_that_are_not_finite_give_an_answer_not_an_error() -> None:
    decisions = _decisions()
    for bad in ([float("nan"), 0.7], [0.5, float("inf"), float("inf")], [float("inf")]):
        decision = decisions.open_set(bad, 1000, 0.01, None, "mixed", bad[0] < 0.59)
        assert not decision.named and decision.probability is not None
        assert np.isfinite(decision.probability)


def test_max_fmr_rounds_the_threshold_down_and_refuses_what_it_cannot_support() -> None:
    decisions = _decisions()
    curve = decisions.curve("mixed")
    found = curve.distance_for_max_fmr(1e-4)
    assert found is not None and found[1]
    assert found[0] - 1e-4 < decisions.threshold_for_fmr("mixed", 1e-4) <= found[0]
    without = replace(curve, open_set=None)  # only the 100,000 pairs' FMR table
    assert without.distance_for_max_fmr(1e-6) == (
        pytest.approx(without.distance_for_max_fmr(1e-5)[0]),
        False,
    )  # type: ignore[index]
    decisions.calibration = replace(decisions.calibration, open_set=None, curves={})
    with pytest.raises(InvalidRequest):
        decisions.threshold_for_fmr("fast", 1e-6)
