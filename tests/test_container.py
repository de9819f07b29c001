"""The image built and run as a user runs it (issue 14): ready, enroll + verify + an
impostor with real photos, a gallery that survives a restart and a new container on the
same volume, not root, a read-only root filesystem, HEALTHCHECK healthy on a non-default
port and unhealthy when the app is not serving, JSON logs; then the compose stack (app +
PostgreSQL with pgvector).

Marker ``container``: not part of ``make test`` (building takes minutes); .ci/run runs it
with ``make test-container``. Without a container engine it skips, except under CI=true,
where that is a failure. FACEVERIFY_TEST_BASE_IMAGE / FACEVERIFY_TEST_POSTGRES_IMAGE name
locally built images (.ci/base-image.sh, .ci/postgres-image.sh) where no registry is
reachable; otherwise the Dockerfile's and compose file's defaults are pulled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx2
import pytest

from tests.containers import free_port, image, run
from tests.helpers import DATA

__all__ = ["image"]  # the fixture, shared with tests/test_image_contents.py

ROOT = Path(__file__).resolve().parent.parent
KEY = "container-test-key-0123456789abcdef"
pytestmark = pytest.mark.container


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz did not answer 200 within {seconds} s")


def health(container: str) -> str:
    return run("docker", "inspect", "--format", "{{.State.Health.Status}}", container)


def wait_health(container: str, want: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while (status := health(container)) != want and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == want, run("docker", "inspect", "--format", "{{json .State.Health}}", container)


def post_photo(url: str, path: str, photo: str, **data: str) -> httpx2.Response:
    return httpx2.post(
        url + path,
        data=data,
        files={"image": (DATA / photo).read_bytes()},
        headers={"X-API-Key": KEY},
        timeout=60,
    )


def enroll_and_verify(url: str) -> None:
    """A real person enrolled; a second photo of him matches, another person does not."""
    r = post_photo(url, "/enroll", "obama.jpg", subject_id="obama")
    assert r.status_code == 201, r.text
    assert_verifies(url)


def assert_verifies(url: str) -> None:
    same = post_photo(url, "/verify", "obama2.jpg", subject_id="obama").json()
    assert same["match"] is True and same["distance"] < 0.5, same
    other = post_photo(url, "/verify", "biden.jpg", subject_id="obama").json()
    assert other["match"] is False and other["distance"] > 0.6, other


def assert_fallback(url: str) -> None:
    """A face HOG misses (obama tilted 60 degrees) is found by the default fallback,
    YuNet, whose ONNX model ships inside the package (app/models/yunet/): as a non-root
    user on a read-only root filesystem too."""
    import io

    from PIL import Image

    tilted = Image.open(DATA / "obama.jpg").convert("RGB")
    out = io.BytesIO()
    tilted.rotate(60, expand=True, fillcolor=(128, 128, 128)).save(out, "PNG")
    r = httpx2.post(
        url + "/detect", files={"image": out.getvalue()}, headers={"X-API-Key": KEY}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert [f["detector"] for f in r.json()["faces"]] == ["yunet"], r.json()


def test_the_image_serves_keeps_its_gallery_and_reports_its_health(image: str) -> None:
    name, volume = f"fv-test-{uuid.uuid4().hex[:8]}", f"fv-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # A non-default port inside the container: the HEALTHCHECK must follow it.
    common = ["-v", f"{volume}:/data", "-e", f"FACEVERIFY_API_KEYS={KEY}:admin"]
    common += ["-e", "FACEVERIFY_PORT=8123", "-p", f"127.0.0.1:{port}:8123"]
    common += ["--health-interval=1s", "--health-start-period=60s"]
    # As deploy/kubernetes runs it: the root filesystem read-only, /tmp and /data writable.
    common += ["--read-only", "--tmpfs", "/tmp"]
    url = f"http://127.0.0.1:{port}"
    try:
        run("docker", "run", "-d", "--name", name, *common, image)
        wait_ready(url)
        assert run("docker", "exec", name, "id", "-u") != "0"
        enroll_and_verify(url)
        assert_fallback(url)
        wait_health(name, "healthy")
        logs = subprocess.run(
            ["docker", "logs", name], capture_output=True, text=True, check=True
        ).stderr.splitlines()
        access = [json.loads(line) for line in logs if '"faceverify.access"' in line]
        assert any(e["route"] == "/verify" and e["status"] == 200 for e in access), logs[-5:]
        for line in logs:
            if line.startswith("{"):
                json.loads(line)  # every structured line is one JSON object
        run("docker", "restart", name)
        wait_ready(url)
        assert_verifies(url)  # the gallery survived the restart
        run("docker", "rm", "-fv", name)
        run("docker", "run", "-d", "--name", name, *common, image)
        wait_ready(url)
        assert_verifies(url)  # and a new container on the same volume
    finally:
        subprocess.run(["docker", "rm", "-fv", name], capture_output=True, check=False)
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, check=False)


def test_the_healthcheck_fails_when_the_app_is_not_serving(image: str) -> None:
    """The container runs, but nothing listens on its FACEVERIFY_PORT."""
    name = f"fv-test-{uuid.uuid4().hex[:8]}"
    try:
        run(
            "docker", "run", "-d", "--name", name, "--health-interval=1s",
            "--health-retries=2", "--health-start-period=0s", image, "sleep", "300",
        )  # fmt: skip
        wait_health(name, "unhealthy", seconds=45)
    finally:
        subprocess.run(["docker", "rm", "-fv", name], capture_output=True, check=False)


def test_the_compose_stack_serves_from_postgresql_with_pgvector(image: str) -> None:
    compose = shutil.which("docker-compose")
    command = [compose] if compose else ["docker", "compose"]
    project, port = f"fvtest{uuid.uuid4().hex[:8]}", free_port()
    env = {
        **os.environ,
        "FACEVERIFY_API_KEYS": f"{KEY}:admin",
        "FACEVERIFY_HOST_PORT": str(port),
        "COMPOSE_PROJECT_NAME": project,
    }
    for ours, theirs in (
        ("FACEVERIFY_TEST_BASE_IMAGE", "BASE_IMAGE"),
        ("FACEVERIFY_TEST_POSTGRES_IMAGE", "POSTGRES_IMAGE"),
    ):
        if os.environ.get(ours):
            env[theirs] = os.environ[ours]
    url = f"http://127.0.0.1:{port}"
    try:
        run(*command, "up", "-d", "--build", env=env, timeout=900)
        wait_ready(url, seconds=180)
        enroll_and_verify(url)
        info = httpx2.get(url + "/info", headers={"X-API-Key": KEY}, timeout=30).json()
        assert info["settings"]["database"] == "postgresql+psycopg", info
        assert info["settings"]["vector_search"] == "pgvector", info
        best = post_photo(url, "/identify", "obama3.jpg").json()["best"]
        assert best is not None and best["subject_id"] == "obama"
        run(*command, "restart", "faceverify", env=env)
        wait_ready(url, seconds=180)
        assert_verifies(url)
    finally:
        subprocess.run(
            [*command, "down", "-v", "--rmi", "local"], env=env, capture_output=True, check=False
        )
