"""Enrollment templates and probe modes with the fake models: which curve scores which
distance, faces enrolled before templates, the calibration file's curves, /info, and the
modes of `faceverify evaluate` (tests/face/test_views.py has the real photos)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.errors import ModelFileError
from app.evaluation import Embedded, mode_curve, score_pairs
from app.face.registry import curve_fingerprint
from app.scoring.calibration import Calibration, matched_threshold
from app.scoring.pairs import Pair
from app.service import FaceService
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import AUTH, assert_problem, parts
from tests.helpers import fake_service as make_fake_service

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "calibration.json"


def _calibration(tmp_path: Path, settings: Settings, *, curves: bool = True) -> Path:
    """The shipped file with made-up mixed and thorough curves (distinct slopes, so the
    percent tells which one scored), fitted "for" these settings."""
    raw = json.loads(SHIPPED.read_text())
    raw.pop("curves", None)
    raw["pipeline"] = curve_fingerprint(settings, "fast")
    if curves:
        raw["curves"] = {
            name: {
                **{k: v for k, v in raw.items() if k != "curves"},
                "version": f"{raw['version']}-{name}",
                "params": {"w": w, "b": 0.6 * -w},
                "pipeline": curve_fingerprint(settings, name),
            }
            for name, w in (("mixed", -20.0), ("thorough", -30.0))
        }
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def templated(settings: Settings, tmp_path: Path) -> Settings:
    settings = settings.model_copy(update={"template_views": 8})
    return settings.model_copy(update={"calibration_file": _calibration(tmp_path, settings)})


@pytest.fixture
def service(templated: Settings) -> FaceService:
    return make_fake_service(templated)


def test_enrollment_stores_a_template_and_each_mode_is_scored_on_its_curve(
    service: FaceService,
) -> None:
    (stored,) = service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))]
    ).faces
    assert stored.pipeline_version == "fake-1/tpl-views8"
    probe = fake_image(face(1, noise=0.3))
    fast = service.verify(collection="default", subject_id="ann", image=probe)
    thorough = service.verify(collection="default", subject_id="ann", image=probe, mode="thorough")
    assert (fast.mode, fast.result.curve) == ("fast", "mixed")
    assert (thorough.mode, thorough.result.curve) == ("thorough", "thorough")
    d = fast.result.distance
    assert fast.result.score == service.curve("mixed").percent(d)
    assert thorough.result.score == service.curve("thorough").percent(d)
    assert fast.result.score != thorough.result.score  # two curves, one distance
    same = service.compare(image_a=probe, image_b=fake_image(face(1)))
    both = service.compare(image_a=probe, image_b=fake_image(face(1)), mode="thorough")
    assert (same.result.curve, both.result.curve) == ("fast", "thorough")
    found = service.identify(collection="default", image=probe, mode="thorough")
    assert found.best is not None and found.best.result.curve == "thorough"
    assert found.curve == "thorough" and found.mode == "thorough"


def test_the_setting_makes_thorough_the_default(templated: Settings) -> None:
    service = make_fake_service(templated.model_copy(update={"probe_mode": "thorough"}))
    service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    calls = parts(service).pipeline.encoder.encode_calls  # type: ignore[attr-defined]
    result = service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    assert (result.mode, result.result.curve) == ("thorough", "thorough")
    assert parts(service).pipeline.encoder.encode_calls == calls + 1  # type: ignore[attr-defined]


def test_faces_enrolled_before_templates_keep_the_fast_curve(
    settings: Settings, templated: Settings
) -> None:
    before = make_fake_service(templated.model_copy(update={"template_views": 2}))
    (old,) = before.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))]
    ).faces
    assert old.pipeline_version == "fake-1"  # as every face stored before templates
    after = make_fake_service(templated)
    probe = fake_image(face(1, noise=0.2))
    assert after.verify(collection="default", subject_id="ann", image=probe).result.curve == "fast"
    thorough = after.verify(collection="default", subject_id="ann", image=probe, mode="thorough")
    assert thorough.result.curve == "mixed"
    # A new face of the same subject is a template: verify picks the face the photo
    # most likely matches, each scored on its own curve.
    (new,) = after.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))], add=True
    ).faces
    assert new.pipeline_version.endswith("/tpl-views8")
    verified = after.verify(collection="default", subject_id="ann", image=probe)
    curves = {"fast": old.id, "mixed": new.id}
    assert verified.face_id == curves[verified.result.curve]
    p_old = after.curve("fast").probability(verified.result.distance)
    p_new = after.curve("mixed").probability(verified.result.distance)
    assert verified.result.curve == ("fast" if p_old >= p_new else "mixed")


def test_identify_scores_each_candidate_on_its_faces_curve(
    settings: Settings, templated: Settings
) -> None:
    before = make_fake_service(templated.model_copy(update={"template_views": 2}))
    before.enroll(collection="default", subject_id="old", images=[fake_image(face(1))])
    after = make_fake_service(templated)
    after.enroll(collection="default", subject_id="new", images=[fake_image(face(2))])
    found = after.identify(collection="default", image=fake_image(face(1)), top_k=2)
    assert {c.subject_id: c.result.curve for c in found.candidates} == {
        "old": "fast",
        "new": "mixed",
    }
    by_face = after.identify_face(collection="default", face_id=found.candidates[1].face_id)
    assert by_face.candidates[0].result.curve == "mixed"  # a template against an old face


def test_a_missing_curve_is_named_and_flagged(settings: Settings, tmp_path: Path) -> None:
    templated = settings.model_copy(update={"template_views": 8})
    path = _calibration(tmp_path, templated, curves=False)
    service = make_fake_service(templated.model_copy(update={"calibration_file": path}))
    assert not service.calibration_matches_pipeline()
    assert service.curve_matches("fast") and not service.curve_matches("mixed")
    service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    result = service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    assert result.result.curve == "fast"  # what actually scored it, not what should have
    # Without templates only the fast curve is in use, and it matches.
    plain = settings.model_copy(update={"template_views": 2, "calibration_file": path})
    assert make_fake_service(plain).calibration_matches_pipeline()


def test_curves_are_checked_against_the_template_setting(templated: Settings) -> None:
    assert make_fake_service(templated).calibration_matches_pipeline()
    other = make_fake_service(templated.model_copy(update={"template_views": 12}))
    assert other.curve_matches("fast") and not other.curve_matches("thorough")
    assert not other.calibration_matches_pipeline()


def test_a_calibration_file_with_an_unknown_curve_is_refused(tmp_path: Path) -> None:
    raw = json.loads(SHIPPED.read_text())
    raw["curves"] = {"sideways": raw.get("curves", {}).get("mixed", {})}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="curves may only be"):
        Calibration.load(path)


def test_the_api_takes_a_mode_names_the_curve_and_info_lists_the_curves(
    templated: Settings,
) -> None:
    app = create_app(templated, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as client:
        r = client.post("/enroll", files={"image": fake_image(face(1))}, data={"subject_id": "a"})
        assert r.status_code == 201 and r.json()["faces"][0]["template"] == "views8"
        r = client.post(
            "/verify",
            files={"image": fake_image(face(1))},
            data={"subject_id": "a", "mode": "thorough"},
        )
        body = r.json()
        assert r.status_code == 200 and body["mode"] == "thorough"
        assert body["calibration"]["curve"] == "thorough"
        assert body["calibration"]["version"].endswith("-thorough")
        r = client.post("/identify", files={"image": fake_image(face(1))})
        assert r.json()["mode"] == "fast" and r.json()["candidates"][0]["curve"] == "mixed"
        r = client.post(
            "/compare",
            files={"image_a": fake_image(face(1)), "image_b": fake_image(face(1))},
            data={"mode": "thorough"},
        )
        assert r.json()["calibration"]["curve"] == "thorough"
        bad = client.post(
            "/verify",
            files={"image": fake_image(face(1))},
            data={"subject_id": "a", "mode": "slow"},
        )
        assert_problem(bad, 422, "validation_error")
        face_id = client.get("/subjects/a").json()["faces"][0]["face_id"]
        r = client.post("/identify", json={"face_id": face_id, "mode": "thorough"})
        assert_problem(r, 422, "validation_error")
        info = client.get("/info").json()
        assert info["calibration_matches_pipeline"] is True
        assert [c["curve"] for c in info["calibration"]["curves"]] == ["fast", "mixed", "thorough"]
        assert all(c["present"] and c["matches_pipeline"] for c in info["calibration"]["curves"])
        assert info["settings"]["template_views"] == 8


def test_evaluate_modes_pair_templates_and_fast_embeddings() -> None:
    a, b = Path("a.jpg"), Path("b.jpg")
    pair = Pair(a=a, b=b, same=True, fold=0, identity_a="x", identity_b="x")
    embeddings = {
        a: Embedded(fast=np.array([0.0, 0.0]), template=np.array([1.0, 0.0])),
        b: Embedded(fast=np.array([0.0, 3.0]), template=np.array([0.0, 1.0])),
    }
    assert score_pairs([pair], embeddings, "fast").distance[0] == 3.0
    assert np.isclose(score_pairs([pair], embeddings, "mixed").distance[0], np.sqrt(10))
    assert np.isclose(score_pairs([pair], embeddings, "thorough").distance[0], np.sqrt(2))
    assert [mode_curve(m, "views16") for m in ("fast", "mixed", "thorough")] == [
        "fast",
        "mixed",
        "thorough",
    ]
    assert mode_curve("thorough", "fast") == "fast"  # templates off: every mode is fast


def _with_fmr(curve: Calibration, shift: float) -> Calibration:
    """``curve`` with its impostors' distances all moved by ``shift``."""
    table = dict(curve.fmr_table or {})
    step, counts = table["grid_step"], np.asarray(table["cumulative_impostors"])
    grid = np.arange(len(counts)) * step
    table["cumulative_impostors"] = np.interp(grid - shift, grid, counts).tolist()
    return replace(curve, fmr_table=table, name="thorough")


def test_other_curves_decide_at_the_fast_thresholds_false_match_rate() -> None:
    fast = Calibration.load(SHIPPED)
    closer = _with_fmr(fast, -0.02)  # strangers 0.02 closer, as averaging views makes them
    rate = fast.fmr_rate(0.6)
    assert rate is not None and 0.001 < rate < 0.05
    assert abs(matched_threshold(fast, closer, 0.6) - 0.58) < 0.002
    assert abs((closer.fmr_rate(matched_threshold(fast, closer, 0.6)) or 0) - rate) < 1e-4
    assert matched_threshold(fast, fast, 0.55) == 0.55
    assert matched_threshold(fast, replace(closer, fmr_table=None), 0.6) == 0.6


def test_a_verify_answer_carries_its_curves_threshold(templated: Settings, tmp_path: Path) -> None:
    path = templated.calibration_file
    assert path is not None
    raw = json.loads(path.read_text())
    fast = Calibration.load(SHIPPED)
    raw["curves"]["mixed"]["fmr_table"] = _with_fmr(fast, -0.02).fmr_table
    path.write_text(json.dumps(raw))
    service = make_fake_service(templated)
    service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    result = service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    assert result.result.curve == "mixed"
    assert result.result.threshold == service.threshold("mixed")
    assert abs(result.result.threshold - 0.58) < 0.002 and service.threshold("fast") == 0.6
