"""The real command: `faceverify serve` processes, as `make run` starts them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.conftest import data
from tests.server import FACEVERIFY, free_port, serving

pytestmark = pytest.mark.model


def test_two_servers_on_one_sqlite_file_share_the_gallery(tmp_path: Path) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path)}
    with serving(env) as a, serving(env) as b:
        r = httpx2.post(
            a + "/enroll",
            data={"subject_id": "obama"},
            files={"image": data("obama.jpg")},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        r = httpx2.post(
            b + "/verify",
            data={"subject_id": "obama"},
            files={"image": data("obama2.jpg")},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["match"] is True
        r = httpx2.post(b + "/identify", files={"image": data("obama3.jpg")}, timeout=30)
        assert r.json()["best"]["subject_id"] == "obama"
        assert httpx2.delete(a + "/subjects/obama", timeout=30).status_code == 200
        r = httpx2.post(
            b + "/verify",
            data={"subject_id": "obama"},
            files={"image": data("obama2.jpg")},
            timeout=30,
        )
        assert r.status_code == 404 and r.json()["code"] == "subject_not_found"
        r = httpx2.post(b + "/identify", files={"image": data("obama3.jpg")}, timeout=30)
        assert r.json()["candidates"] == []


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
