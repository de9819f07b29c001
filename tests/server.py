"""Start real `faceverify serve` processes for tests, on free loopback ports."""

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

from tests.helpers import TEST_KEY

# The console script `make run` and the Dockerfile's CMD call.
FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(log.read_text() if log else "the server exited")
        try:
            if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("server did not become ready in 60 s")
        time.sleep(0.2)


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[str]:
    port = free_port()
    log = Path(env["FACEVERIFY_DATA_DIR"]) / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FACEVERIFY, "serve", "--port", str(port), *args],
            env={**os.environ, "FACEVERIFY_API_KEYS": f"{TEST_KEY}:admin", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
