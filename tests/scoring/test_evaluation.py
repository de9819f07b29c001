"""faceverify evaluate / calibrate end to end on a small identity folder of real photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.scoring.calibration import Calibration
from app.settings import Settings
from tests.helpers import DATA

pytestmark = pytest.mark.model

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))
PEOPLE = {
    # biden.jpg filed under obama: a mislabelled photo, as real data sets have, so the
    # classes overlap and the curve's slope is defined.
    "obama": ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_small.jpg", "biden.jpg"],
    "hopper": ["hopper.jpg", "hopper_gray.jpg", "hopper.png", "hopper_orientation_3.jpg"],
    "curie": ["curie_upright.jpg", "curie_orientation_6.jpg"],
    "astronaut": ["astronaut.png"],
    "nobody": ["coffee.png", "transparent.png"],  # no face: failure to acquire
}


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("people")
    for person, photos in PEOPLE.items():
        (root / person).mkdir()
        for photo in photos:
            shutil.copy(DATA / photo, root / person / photo)
    return root


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FACEVERIFY, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def evaluate(identities: Path, out: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """`faceverify evaluate` on the identity folder with 40 different-person pairs."""
    args = ("--identities", str(identities), "--out", str(out), "--different", "40", *more)
    return run("evaluate", *args, env={"FACEVERIFY_DATA_DIR": str(out.parent)})


@pytest.mark.slow
def test_evaluate_writes_pairs_report_and_plots(identities: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = evaluate(identities, out)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (out / "pairs.tsv").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert len(rows) == report["pairs"]["total"] == report["pairs"]["same"] + 40
    assert all(len(r) == 6 and r[0] in ("0", "1") for r in rows)
    assert not any(r[4].startswith("/") for r in rows)  # paths relative to the root
    # coffee.png and transparent.png have no face; their pair is a non-match.
    assert report["failure_to_acquire"]["images_without_face"] == 2
    nobody = [r for r in rows if r[4].startswith("nobody/")]
    assert nobody and all(r[1] == "inf" and float(r[3]) == 0.1 for r in nobody)
    assert 0 <= report["accuracy_at_threshold"] <= 1
    assert report["fnmr_at_fmr"][0]["supported"] is False
    assert (out / "det.png").stat().st_size > 1000 and (out / "reliability.png").exists()


@pytest.mark.slow
def test_evaluate_scores_every_mode_from_one_pass(identities: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = evaluate(identities, out, "--mode", "all")
    assert proc.returncode == 0, proc.stderr
    reports = {
        m: json.loads((out / m / "report.json").read_text()) for m in ("fast", "mixed", "thorough")
    }
    assert {m: r["curve"]["name"] for m, r in reports.items()} == {
        "fast": "fast",
        "mixed": "mixed",
        "thorough": "thorough",
    }
    distances = {
        m: [line.split("\t")[1] for line in (out / m / "pairs.tsv").read_text().splitlines()]
        for m in reports
    }
    assert distances["fast"] != distances["mixed"] != distances["thorough"]
    assert "mode thorough, curve thorough" in proc.stdout
    bad = evaluate(identities, out, "--mode", "slow")
    assert bad.returncode == 2 and "--mode must be one of" in bad.stderr


@pytest.mark.slow
def test_calibrate_writes_a_usable_calibration(identities: Path, tmp_path: Path) -> None:
    target = tmp_path / "calibration.json"
    proc = run(
        "calibrate",
        "--identities",
        str(identities),
        "--out",
        str(target),
        "--different",
        "40",
        "--name",
        "test-people",
        env={"FACEVERIFY_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    cal = Calibration.load(target)
    assert not cal.provisional and cal.w < 0
    assert cal.probability(0.3) > 0.5 > cal.probability(1.0)
    raw = json.loads(target.read_text())
    assert raw["data"]["name"] == "test-people" and raw["data"]["identities"] == 5
    assert len(raw["data"]["pair_list_sha256"]) == 64
    held = raw["fit"]["held_out"]
    assert held["folds"] == 0 or set(held) >= {"logistic", "isotonic"}
    assert 0 < raw["fmr_table"]["impostor_pairs"] <= 40
    # One pass fits every curve in use: fast at the top, templates' under "curves".
    assert set(raw["curves"]) == {"mixed", "thorough"}
    for name in ("mixed", "thorough"):
        curve = cal.curve(name)
        assert curve is not None and curve.w < 0 and curve.version.endswith(f"-{name}")
        assert curve.pipeline == {**(cal.pipeline or {}), "template_views": 10}
    # Averaging views moves a same-person pair's distance: the curves differ.
    assert cal.curve("thorough").b != cal.b  # type: ignore[union-attr]
    # The open-set rules of the calibration in use (same pipeline) are carried over:
    # 40 impostor pairs could not fit them.
    shipped = Calibration.load(Settings().resolved_calibration_file())
    for name in ("fast", "mixed", "thorough"):
        kept, before = cal.curve(name), shipped.curve(name)
        assert kept is not None and before is not None and kept.open_set is not None
        assert before.open_set is not None and kept.open_set.version == before.open_set.version


@pytest.mark.slow
def test_calibrate_refuses_pairs_that_cannot_fix_a_slope(tmp_path: Path) -> None:
    root = tmp_path / "people"
    people = {
        "obama": ["obama.jpg", "obama2.jpg"],
        "hopper": ["hopper.jpg", "hopper.png"],
        "curie": ["curie_upright.jpg", "curie_orientation_6.jpg"],
        "astronaut": ["astronaut.png"],
    }
    for person, photos in people.items():
        (root / person).mkdir(parents=True)
        for photo in photos:
            shutil.copy(DATA / photo, root / person / photo)
    proc = run(
        "calibrate",
        "--identities",
        str(root),
        "--out",
        str(tmp_path / "c.json"),
        "--different",
        "4",
        env={"FACEVERIFY_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 2 and "more (and harder) pairs" in proc.stderr
    assert not (tmp_path / "c.json").exists()


@pytest.mark.slow
def test_evaluate_open_set_reports_fpir_fnir_and_a_det_plot(
    identities: Path, tmp_path: Path
) -> None:
    """Gallery of 2 of the 4 people with a face: the others are strangers; obama's and
    hopper's other photos are mated searches."""
    out = tmp_path / "open"
    proc = run(
        "evaluate", "--open-set", "--identities", str(identities), "--out", str(out),
        "--gallery-sizes", "2,3", "--fpir", "0.01,0.2",
        env={"FACEVERIFY_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "open_set.json").read_text())
    assert report["photos_without_face"] == 2 and report["people"] == 5
    for size in ("2", "3"):
        rep = report["sizes"][size]
        assert rep["mated_searches"] > 0 and rep["non_mated_searches"] > 0
        for target in ("0.01", "0.2"):
            at = rep["at_target"][target]
            lo, hi = at["fpir_ci95"]
            assert 0 <= lo <= at["fpir"] <= hi <= 1 and 0 <= at["fnir"] <= 1
    assert (out / "open_set_det.png").stat().st_size > 1000
    assert "N = 2:" in proc.stdout and "FNIR" in proc.stdout
    refused = run(
        "evaluate", "--open-set", "--out", str(out), env={"FACEVERIFY_DATA_DIR": str(tmp_path)}
    )
    assert refused.returncode == 2 and "--identities" in refused.stderr


@pytest.mark.slow
def test_evaluate_buckets_reports_detection_and_errors_by_face_size_and_pose(
    identities: Path, tmp_path: Path
) -> None:
    """Each pair's probe shrunk into a 640x480 frame at 50 and 24 px: every probe lands in
    a width bucket and (at 60 px or more) a yaw bucket; counts add up, rates are rates."""
    out = tmp_path / "buckets"
    proc = run(
        "evaluate", "--buckets", "--identities", str(identities), "--out", str(out),
        "--different", "10", "--widths", "50,24",
        env={"FACEVERIFY_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    rows = (out / "probes.tsv").read_text().splitlines()[1:]
    widths = report["face_width"]
    assert sum(b["probes"] for b in widths.values()) == report["probes"] == len(rows) > 0
    assert widths["40-60 px"]["probes"] > 0 and widths["24-40 px"]["probes"] > 0
    # hopper's photos are themselves 40-60 px faces: their own size adds to that bucket.
    assert widths["40-60 px"]["probes"] > widths["24-40 px"]["probes"]
    for bucket in (*widths.values(), *report["yaw_at_least_60px"].values()):
        for rate in ("detection_rate", "fnmr", "fmr"):
            assert bucket[rate] is None or 0 <= bucket[rate] <= 1
    # Real faces at 50 px in a frame are found (YuNet where HOG cannot).
    assert widths["40-60 px"]["detection_rate"] >= 0.9
    assert (out / "buckets.png").stat().st_size > 1000 and "24-40 px" in proc.stdout
    refused = run(
        "evaluate", "--buckets", "--identities", str(identities), "--out", str(out),
        "--widths", "50,x", env={"FACEVERIFY_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert refused.returncode == 2 and "--widths" in refused.stderr
