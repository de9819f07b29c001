"""What the container tests share: a command that must succeed, a free port, and the
image of this checkout built once per test module (docker's layer cache makes the
second module's build quick)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if not engine_answers():
        if os.environ.get("CI"):
            pytest.fail("no container engine answers (docker info); .ci/run starts dockerd")
        pytest.skip("no container engine answers (docker info)")
    tag = f"faceverify:test-{uuid.uuid4().hex[:8]}"
    run("docker", "build", "-q", "--network=host", "-t", tag, *build_args(), ".", timeout=900)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def build_args() -> list[str]:
    """The base image a machine with no registry built (.ci/base-image.sh), if any."""
    base = os.environ.get("FACEVERIFY_TEST_BASE_IMAGE")
    return ["--build-arg", f"BASE_IMAGE={base}"] if base else []
