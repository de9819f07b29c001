"""Metrics, fits and pair files, checked against direct computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.scoring import metrics
from app.scoring.calibration import Calibration
from app.scoring.fit import fit_isotonic, fit_logistic
from app.scoring.pairs import identity_fold, identity_pairs, read_lfw_pairs


def synthetic(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.where(same, rng.normal(0.4, 0.08, n), rng.normal(0.8, 0.08, n))
    return same, d


def test_accuracy_and_best_threshold_match_a_brute_force_search() -> None:
    same, d = synthetic(500)
    t = metrics.best_threshold(same, d)
    brute = max(metrics.accuracy(same, d, x) for x in np.linspace(0, 1.5, 3001))
    # The grid may miss the exact optimum by one pair at most.
    assert metrics.accuracy(same, d, t) >= brute - 1 / 500


def test_kfold_picks_thresholds_without_the_test_fold() -> None:
    same, d = synthetic(1000)
    folds = np.arange(1000) % 10
    mean, std, per_fold, thresholds = metrics.kfold_accuracy(same, d, folds)
    assert len(per_fold) == 10 and 0.95 < mean <= 1 and std < 0.05
    assert all(0.5 < t < 0.7 for t in thresholds)


def test_eer_of_symmetric_classes_is_at_the_midpoint() -> None:
    same, d = synthetic(20000)
    rate, t = metrics.eer(same, d)
    # Two normals 0.4 and 0.8 apart by 5 sd: EER = Phi(-2.5) = 0.0062.
    assert abs(t - 0.6) < 0.01
    assert abs(rate - 0.0062) < 0.003


def test_fnmr_at_fmr_needs_enough_impostors() -> None:
    same, d = synthetic(1000)  # ~500 impostors
    assert metrics.fnmr_at_fmr(same, d, 1e-2)["supported"] is False
    same, d = synthetic(20000)
    row = metrics.fnmr_at_fmr(same, d, 1e-2)
    assert row["supported"] and row["fmr"] <= 1e-2
    impostor = np.sort(d[~same])
    # The threshold accepts at most 1% of impostors, and the next impostor would exceed it.
    assert np.mean(impostor <= row["threshold"]) <= 1e-2


def test_calibration_metrics_on_known_cases() -> None:
    same = np.array([True, False, True, False])
    perfect = np.array([1.0, 0.0, 1.0, 0.0])
    assert metrics.brier(same, perfect) == 0
    assert metrics.log_loss(same, np.full(4, 0.5)) == pytest.approx(np.log(2))
    assert metrics.ece(same, np.full(4, 0.5), bins=2) == pytest.approx(0.0)
    assert metrics.ece(same, np.full(4, 0.9), bins=1) == pytest.approx(0.4)


def test_logistic_fit_recovers_the_generating_curve() -> None:
    rng = np.random.default_rng(1)
    d = rng.uniform(0.1, 1.1, 50_000)
    w_true, b_true = -12.0, 7.2
    same = rng.random(len(d)) < 1 / (1 + np.exp(-(w_true * d + b_true)))
    # Class-balanced: the fit is at prior 0.5, so the intercept moves by the log-odds of
    # the sample's class ratio; the slope is unchanged.
    w, b = fit_logistic(d, same)
    shift = np.log((~same).sum() / same.sum())
    assert w == pytest.approx(w_true, rel=0.05)
    assert b == pytest.approx(b_true + shift, abs=0.15)


def test_isotonic_fit_never_increases_with_distance() -> None:
    same, d = synthetic(3000)
    iso = fit_isotonic(d, same)
    grid = np.linspace(0, 1.2, 500)
    p = iso(grid)
    assert np.all(np.diff(p) <= 1e-12) and p[0] > 0.9 and p[-1] < 0.1


def test_fmr_lookup_errs_high(tmp_path: Path) -> None:
    cal_file = tmp_path / "c.json"
    cal_file.write_text(
        '{"version": "t", "params": {"w": -10, "b": 6}, "threshold": 0.6, '
        '"fmr_table": {"impostor_pairs": 100, "grid_step": 0.1, '
        '"cumulative_impostors": [0, 0, 0, 0, 1, 5, 20, 50, 80, 100]}}'
    )
    cal = Calibration.load(cal_file)
    assert cal.fmr(0.35) == (0.01, 1, 100)  # counted up to 0.4
    assert cal.fmr(0.4) == (0.01, 1, 100)
    assert cal.fmr(0.0) == (0.0, 0, 100)
    assert cal.fmr(5.0) == (1.0, 100, 100)
    # An overflowed distance (issue 25: imported rows of 3e38 made /verify answer 500).
    assert cal.fmr(float("inf")) == (1.0, 100, 100)
    assert cal.percent(float("inf")) == 0.1


def test_prior_shifts_the_log_odds(tmp_path: Path) -> None:
    cal_file = tmp_path / "c.json"
    cal_file.write_text('{"version": "t", "params": {"w": -10, "b": 6}, "threshold": 0.6}')
    cal = Calibration.load(cal_file)
    p = cal.probability(0.6)
    assert p == pytest.approx(0.5)
    assert cal.probability(0.6, prior=0.1) == pytest.approx(0.1)
    assert cal.percent(0.0) == 99.75 and cal.percent(3.0) == 0.1


def test_view1_and_view2_pairs_files(tmp_path: Path) -> None:
    view1 = tmp_path / "v1.txt"
    view1.write_text("2\nA\t1\t2\nB\t1\t3\nA\t1\tB\t2\nC\t4\tD\t1\n")
    pairs = read_lfw_pairs(view1, tmp_path)
    assert [p.same for p in pairs] == [True, True, False, False]
    assert (
        pairs[0].a == tmp_path / "A" / "A_0001.jpg" and pairs[3].b == tmp_path / "D" / "D_0001.jpg"
    )
    view2 = tmp_path / "v2.txt"
    view2.write_text("2\t1\nA\t1\t2\nA\t1\tB\t2\nC\t1\t2\nC\t1\tD\t2\n")
    assert [p.fold for p in read_lfw_pairs(view2, tmp_path)] == [0, 0, 1, 1]
    view2.write_text("2\t1\nA\t1\t2\n")
    with pytest.raises(ValueError):
        read_lfw_pairs(view2, tmp_path)


def test_identity_pairs_keep_folds_disjoint(tmp_path: Path) -> None:
    for person in range(40):
        folder = tmp_path / f"person{person}"
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"x")
    pairs = identity_pairs(tmp_path, max_same_per_identity=2, different=200, seed=3)
    same = [p for p in pairs if p.same]
    assert len(same) == 80  # 3 possible per person, capped at 2
    for p in pairs:
        assert identity_fold(p.identity_a) == identity_fold(p.identity_b) == p.fold
    assert len({p.fold for p in pairs}) == 10
    assert sum(not p.same for p in pairs) == 200
    assert pairs == identity_pairs(tmp_path, max_same_per_identity=2, different=200, seed=3)


def test_perfectly_separated_pairs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="cannot fix the curve"):
        fit_logistic(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]))


def test_the_shipped_calibration_is_fitted_for_the_default_pipeline() -> None:
    from app.face.registry import calibration_fingerprint
    from app.settings import Settings

    settings = Settings()
    cal = Calibration.load(settings.resolved_calibration_file())
    assert not cal.provisional
    assert cal.pipeline == calibration_fingerprint(settings)
    assert cal.raw["data"]["name"].startswith("lfw-devtrain")
    held = cal.raw["fit"]["held_out"]
    # Held-out identities: the logistic curve is no worse than isotonic regression by
    # more than a little, and calibrated within 5 points on average.
    assert held["logistic"]["ece"] < 0.05
    assert held["logistic"]["log_loss"] < held["isotonic"]["log_loss"] + 0.02
    counts = cal.raw["fmr_table"]["cumulative_impostors"]
    assert counts == sorted(counts) and counts[-1] <= cal.raw["fmr_table"]["impostor_pairs"]
    # dlib's 0.6 threshold sits near the curve's middle: between 20% and 80%.
    assert 20 < cal.percent(0.6) < 80


def test_a_small_probe_refit_is_read_from_the_file_and_only_applies_below_its_limit(
    tmp_path: Path,
) -> None:
    import json

    from app.errors import ModelFileError
    from app.settings import Settings

    raw = json.loads(Settings().resolved_calibration_file().read_text())
    raw["small_probe"] = {"below_inter_eye_px": 16, "slope": 0.6, "offset": -0.2}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    cal = Calibration.load(path)
    for curve in (cal, *cal.curves.values()):
        assert curve.small_probe == cal.small_probe and curve.is_small(15.9)
        assert not curve.is_small(16.0)
        logit = curve.w * 0.5 + curve.b
        expected = 1 / (1 + np.exp(-(0.6 * logit - 0.2)))
        assert float(curve.probability(0.5, small=True)) == pytest.approx(expected)
        assert curve.percent(0.5, small=True) < curve.percent(0.5)
    assert cal.small_probe is not None and cal.small_probe.threshold_shift == 0.0
    for bad in ({"below_inter_eye_px": 16, "slope": 0}, {"below_inter_eye_px": 0, "slope": 1},
                {"slope": 1, "offset": 0},
                {"below_inter_eye_px": 16, "slope": 1, "threshold_shift": 0.01}):  # fmt: skip
        raw["small_probe"] = {"offset": 0.0, **bad}
        path.write_text(json.dumps(raw))
        with pytest.raises(ModelFileError):
            Calibration.load(path)
    del raw["small_probe"]
    path.write_text(json.dumps(raw))
    assert not Calibration.load(path).is_small(1.0)  # a file fitted before issue 39
