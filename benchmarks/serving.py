"""Start a `faceverify serve` of this checkout for a benchmark: loopback only, a
temporary data folder, the ONNX conversion cached across runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def bench_env(data_dir: Path, api_keys: str) -> dict[str, str]:
    return {
        **os.environ,
        "FACEVERIFY_DATA_DIR": str(data_dir),
        "FACEVERIFY_API_KEYS": api_keys,
        "FACEVERIFY_LOG_FORMAT": "text",
        "FACEVERIFY_CACHE_DIR": os.environ.get(
            "FACEVERIFY_CACHE_DIR", str(Path(tempfile.gettempdir()) / "faceverify-bench-cache")
        ),
    }


@contextmanager
def serving(data_dir: Path, api_keys: str, checkout: Path | None = None) -> Iterator[str]:
    """The server's URL while it runs (stopped at the end); its log is data_dir/server.log.
    ``checkout``: run that source tree's code (same virtualenv) instead of this one's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    with (data_dir / "server.log").open("wb") as log:
        env = bench_env(data_dir, api_keys)
        command = [FACEVERIFY, "serve", "--port", str(port)]
        if checkout is not None:
            env["PYTHONPATH"] = str(checkout)
            command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        server = subprocess.Popen(
            command,
            cwd=checkout,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited; see {data_dir / 'server.log'}")
            try:
                if httpx2.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
