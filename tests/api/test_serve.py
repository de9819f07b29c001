"""The real command: `faceverify serve` processes, as `make run` starts them."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.helpers import AUTH, TEST_KEY, data
from tests.server import FACEVERIFY, free_port, serving

pytestmark = pytest.mark.model


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_servers_on_one_database_share_the_gallery(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path)}
    if database == "postgres":
        env["FACEVERIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with serving(env) as a, serving(env) as b, httpx2.Client(headers=AUTH) as http:
        r = http.post(
            a + "/enroll",
            data={"subject_id": "obama"},
            files={"image": data("obama.jpg")},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        r = http.post(
            b + "/verify",
            data={"subject_id": "obama"},
            files={"image": data("obama2.jpg")},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["match"] is True
        r = http.post(b + "/identify", files={"image": data("obama3.jpg")}, timeout=30)
        assert r.json()["best"]["subject_id"] == "obama"
        assert http.delete(a + "/subjects/obama", timeout=30).status_code == 200
        r = http.post(
            b + "/verify",
            data={"subject_id": "obama"},
            files={"image": data("obama2.jpg")},
            timeout=30,
        )
        assert r.status_code == 404 and r.json()["code"] == "subject_not_found"
        r = http.post(b + "/identify", files={"image": data("obama3.jpg")}, timeout=30)
        assert r.json()["candidates"] == []
    # Nothing secret or biometric in the logs: no key, no image bytes, no embeddings.
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("server-*.log"))
    assert "/verify" in logs and TEST_KEY not in logs
    assert base64.b64encode(data("obama.jpg")[:48]).decode()[:40] not in logs
    assert "embedding" not in logs.lower()


def test_serve_fails_fast_when_weights_are_missing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [FACEVERIFY, "serve", "--port", str(free_port())],
        env={
            **os.environ,
            "FACEVERIFY_WEIGHTS_DIR": str(tmp_path),
            "FACEVERIFY_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "shape_predictor_5_face_landmarks.dat is missing" in proc.stderr


def test_serve_fails_fast_when_a_weight_file_is_wrong(tmp_path: Path) -> None:
    from app.face.weights import installed_weights_dir

    source = installed_weights_dir()
    assert source is not None
    for name in (
        "shape_predictor_5_face_landmarks.dat",
        "dlib_face_recognition_resnet_model_v1.dat",
    ):
        (tmp_path / name).symlink_to(source / name)
    (tmp_path / "shape_predictor_5_face_landmarks.dat").unlink()
    (tmp_path / "shape_predictor_5_face_landmarks.dat").write_bytes(b"not the model")
    proc = subprocess.run(
        [FACEVERIFY, "models", "check"],
        env={**os.environ, "FACEVERIFY_WEIGHTS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "sha256" in proc.stderr


@pytest.mark.slow
def test_first_start_without_keys_prints_one_admin_key(tmp_path: Path) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "FACEVERIFY_API_KEYS": ""}
    with serving(env) as url:
        log = next(tmp_path.glob("server-*.log")).read_text()
        keys = [w for w in log.split() if w.startswith("fv_")]
        assert len(keys) == 1 and "shown only now" in log
        assert httpx2.get(url + "/info", timeout=10).status_code == 401
        assert (
            httpx2.get(url + "/info", headers={"X-API-Key": keys[0]}, timeout=10).status_code == 200
        )
    for old in tmp_path.glob("server-*.log"):
        old.unlink()
    with serving(env):  # a key exists now: none is made or printed
        assert "fv_" not in next(tmp_path.glob("server-*.log")).read_text()
