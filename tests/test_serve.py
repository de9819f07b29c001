"""The real command: `faceverify serve` processes, as `make run` starts them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from tests.conftest import data

pytestmark = pytest.mark.model


# The console script `make run` and the Dockerfile's CMD call.
FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[str]:
    port = free_port()
    log = Path(env["FACEVERIFY_DATA_DIR"]) / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FACEVERIFY, "serve", "--port", str(port), *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(log.read_text())
            try:
                if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
