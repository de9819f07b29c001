"""/verify over HTTP against a `faceverify serve` subprocess, every answer checked."""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from app.bench.measure import percentiles, timed_runs
from app.cpus import usable_cpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for key, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{key}.jpg"'
            "\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# Concurrent requests per load run: 50 a client, ~5 s at 80/s. Ten a client (the run
# before) lasted ~1 s, much of it the ramp-up and the tail with fewer clients left.
LOAD_REQUESTS = 400


# A key for the benchmark's own server (FACEVERIFY_API_KEYS), made per run.
BENCH_KEY = "bench-" + uuid.uuid4().hex


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, ctype: str) -> int:
    return post_answer(conn, path, body, ctype)[0]


def post_answer(
    conn: http.client.HTTPConnection, path: str, body: bytes, ctype: str
) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=body, headers={"Content-Type": ctype, "X-API-Key": BENCH_KEY})
    response = conn.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else {}


# Two /verify answers for the same photo agree when the distance is within this and the
# probe box is the same (ONNX Runtime's last bits may differ between thread counts).
DISTANCE_TOLERANCE = 1e-5


class AnswerCheck:
    """Counts /verify answers that differ from the photo's first (sequential) answer: a
    benchmark under load checks the answers, not only the status codes (issue 9)."""

    def __init__(self) -> None:
        self.expected: dict[bytes, tuple[float, dict[str, int]]] = {}
        self.checked = 0
        self.wrong = 0
        self._lock = threading.Lock()

    def __call__(self, body: bytes, status: int, answer: dict[str, Any]) -> None:
        if status != 200:
            return  # a refusal (429/503) is counted by status, not as an answer
        got = (float(answer["distance"]), answer["probe"]["box"])
        with self._lock:
            want = self.expected.setdefault(body, got)
            self.checked += 1
            if abs(got[0] - want[0]) > DISTANCE_TOLERANCE or got[1] != want[1]:
                self.wrong += 1


def bench_http(
    photos: dict[str, bytes],
    requests: int,
    clients: int,
    workers: int = 1,
    load_requests: int = LOAD_REQUESTS,
) -> dict[str, Any]:
    """/verify over HTTP against a `faceverify serve` subprocess (``workers`` processes)
    on a loopback port: ``requests`` sequential ones per photo, then ``load_requests``
    from ``clients`` at once (a quarter of each for the 12 MP photo)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "FACEVERIFY_DATA_DIR": data_dir,
            "FACEVERIFY_PORT": str(port),
            "FACEVERIFY_API_KEYS": f"{BENCH_KEY}:admin",
            "FACEVERIFY_WORKERS": str(workers),
        }
        env.pop("FACEVERIFY_DATABASE_URL", None)
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(port, server)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            result: dict[str, Any] = {"first_request": _first_request(conn, photos)}
            body, ctype = multipart({"subject_id": "bench"}, {"image": photos["640x480"]})
            if _post(conn, "/enroll", body, ctype) != 201:
                raise RuntimeError("enrolling the benchmark subject failed")
            check = AnswerCheck()
            for name, data in photos.items():
                # A new connection: the server drops one idle for 5 s (uvicorn's keep-alive
                # timeout), as the sequential one was through the last load run.
                conn.close()
                result.update(
                    _photo_rounds(conn, port, name, data, requests, clients, load_requests, check)
                )
            # Both photos at once from every client, alternating: different inputs in
            # flight together, which is what shared native state gets wrong.
            bodies = [multipart({"subject_id": "bench"}, {"image": d}) for d in photos.values()]
            latencies, wall, statuses = _concurrent(port, bodies, load_requests, clients, check)
            result["mixed"] = {f"concurrent_{clients}": _load_row(latencies, wall, statuses)}
            result["answers"] = {"checked": check.checked, "wrong": check.wrong}
            conn.close()
            return result
        finally:
            server.terminate()
            server.wait(timeout=30)


def _first_request(conn: http.client.HTTPConnection, photos: dict[str, bytes]) -> dict[str, Any]:
    """Cold start: the first model call after /readyz against the steady ones."""
    pair = multipart({}, {"image_a": photos["640x480"], "image_b": photos["640x480"]})
    compare = [timed_runs(lambda: _post(conn, "/compare", *pair), 1, warmup=0)[0]]
    compare += timed_runs(lambda: _post(conn, "/compare", *pair), 9, warmup=0)
    return {
        "first_compare_ms": round(compare[0], 1),
        "steady_compare_p50_ms": round(statistics.median(compare[1:]), 1),
        "ratio": round(compare[0] / statistics.median(compare[1:]), 2),
    }


def _photo_rounds(
    conn: http.client.HTTPConnection,
    port: int,
    name: str,
    data: bytes,
    requests: int,
    clients: int,
    load_requests: int,
    check: AnswerCheck,
) -> dict[str, Any]:
    """One photo's sequential /verify (with the stage breakdown), then under load."""
    stages: list[dict[str, float]] = []
    body, ctype = multipart({"subject_id": "bench"}, {"image": data})

    def verify() -> None:
        status, answer = post_answer(conn, "/verify", body, ctype)
        check(body, status, answer)
        if status == 200:
            stages.append(answer["timing"])

    n = requests if name == "640x480" else max(10, requests // 4)
    seq = timed_runs(verify, n)
    load = load_requests if name == "640x480" else max(2 * clients, load_requests // 4)
    latencies, wall, statuses = _concurrent(port, [(body, ctype)], load, clients, check)
    return {
        f"{name}_stages": stage_breakdown(stages[-n:], seq),
        name: {
            "sequential": percentiles(seq),
            f"concurrent_{clients}": _load_row(latencies, wall, statuses),
        },
    }


def _load_row(latencies: list[float], wall: float, statuses: dict[int, int]) -> dict[str, Any]:
    return {
        **percentiles(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "statuses": statuses,
    }


STAGES = ("decode_ms", "detect_ms", "align_ms", "encode_ms", "search_ms", "quality_ms")


def stage_breakdown(timings: list[dict[str, float]], latencies: list[float]) -> dict[str, float]:
    """Median ms per stage of sequential requests, from the answers' ``timing``; the rest
    of the server's time (``other_ms``: waiting for a slot, reading the subject's row,
    building the answer), and the client's latency beyond the server's total
    (``http_ms``: connection, multipart parsing, JSON, the event loop).

    With a spare core a lone request scores its quality beside its encoding
    (app/face/cores.py): that phase then lasts the longer of the two, not their sum."""
    beside = usable_cpus() > 1

    def serial(t: dict[str, float]) -> float:
        both = t["encode_ms"] + t["quality_ms"]
        pair = max(t["encode_ms"], t["quality_ms"]) if beside else both
        return sum(t[k] for k in STAGES) - both + pair

    out = {stage: round(statistics.median(t[stage] for t in timings), 2) for stage in STAGES}
    total = statistics.median(t["total_ms"] for t in timings)
    out["other_ms"] = round(statistics.median(t["total_ms"] - serial(t) for t in timings), 2)
    out["http_ms"] = round(statistics.median(latencies) - total, 2)
    out["client_p50_ms"] = round(statistics.median(latencies), 2)
    return out


def wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the benchmark server exited; run `faceverify serve` to see why")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the benchmark server did not become ready in 120 s")


def _concurrent(
    port: int,
    bodies: list[tuple[bytes, str]],
    total: int,
    clients: int,
    check: AnswerCheck,
) -> tuple[list[float], float, dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    per_client = max(1, total // clients)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(per_client):
            body, ctype = bodies[(k + i) % len(bodies)]
            start = time.perf_counter()
            status, answer = post_answer(conn, "/verify", body, ctype)
            check(body, status, answer)
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, statuses
