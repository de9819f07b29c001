"""Noisy neighbours (issue 25): what one tenant's flood does to another tenant's /verify.

Starts `faceverify serve` (default settings, a temporary data folder, loopback only) with
three keys bound to three collections, then measures a quiet tenant's sequential /verify
alone, and again while

- key ``noface`` floods /verify with a grey 800x800 JPEG (no face: HOG finds nothing, then
  the fallback looks: YuNet by default, dlib's CNN with FACEVERIFY_DETECT_FALLBACK=cnn) from
  ``--noface-clients`` clients, and
- key ``thorough`` floods /verify ``mode=thorough`` with a 1080p photo from
  ``--thorough-clients`` clients.

Every answer is checked, not only its status: the quiet tenant's must equal its answer
alone (same distance within 1e-5, same match); the thorough flood's 200s likewise; the
no-face flood's 422s must be ``no_face``. 429/503 are counted by code. Bounded in count
and time; talks only to 127.0.0.1.

    python benchmarks/noisy_neighbour.py [--requests 150] [--noface-clients 8]
        [--thorough-clients 16] [--json OUT]

Prints p50/p95 of the quiet tenant alone and loaded, their ratio (the target: p95
within 2x, no 429), and the floods' status counts and throughput.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "faces"
TESTS = ROOT / "tests" / "data"
ADMIN = "noisy-admin-key-0123456789"
KEYS = {
    "quiet": "noisy-quiet-key-0123456789",
    "noface": "noisy-noface-key-0123456789",
    "thorough": "noisy-thorough-key-012345678",
}
TOLERANCE = 1e-5


def _photo(name: str) -> bytes:
    for folder in (TESTS, SHARED):
        if (folder / name).is_file():
            return (folder / name).read_bytes()
    raise SystemExit(f"{name} not found in {TESTS} or {SHARED}")


def grey_jpeg(side: int = 800) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(out, "JPEG", quality=90)
    return out.getvalue()


def thorough_photo() -> bytes:
    """A 1080p photo of obama: the shared one if present, else obama.jpg scaled up."""
    if (SHARED / "obama-1080p.jpg").is_file():
        return (SHARED / "obama-1080p.jpg").read_bytes()
    image = Image.open(io.BytesIO(_photo("obama.jpg"))).convert("RGB")
    out = io.BytesIO()
    image.resize((1920, 1080)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Flood:
    """``clients`` threads posting one request shape until stopped; every answer checked
    by ``check`` (returns a label: 'ok', a problem code, or 'wrong')."""

    def __init__(self, url: str, key: str, clients: int, send: Any, check: Any) -> None:
        self.url, self.key, self.clients = url, key, clients
        self.send, self.check = send, check
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        self.started = 0.0
        self.elapsed = 0.0

    def _run(self) -> None:
        with httpx2.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=120) as c:
            while not self.stop.is_set():
                try:
                    label = self.check(self.send(c))
                except httpx2.TransportError as exc:
                    label = f"transport:{type(exc).__name__}"
                with self.lock:
                    self.counts[label] += 1
                if label in ("too_many_requests", "rate_limited", "service_busy"):
                    time.sleep(0.05)  # a refused client backs off a little, as clients do

    def start(self) -> None:
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.elapsed = time.perf_counter() - self.started


def _label(r: httpx2.Response) -> str:
    if r.status_code == 200:
        return "ok"
    try:
        return str(r.json().get("code", r.status_code))
    except ValueError:
        return str(r.status_code)


def run(requests: int, noface_clients: int, thorough_clients: int) -> dict[str, Any]:
    keys = [f"{ADMIN}:admin"] + [f"{key}:verify+enroll@{name}" for name, key in KEYS.items()]
    with (
        tempfile.TemporaryDirectory(prefix="faceverify-noisy-") as tmp,
        serving(Path(tmp), ",".join(keys)) as url,
    ):
        return _measure(url, requests, noface_clients, thorough_clients)


def _measure(url: str, requests: int, noface_clients: int, thorough_clients: int) -> dict[str, Any]:
    obama, obama2 = _photo("obama.jpg"), _photo("obama2.jpg")
    grey, big = grey_jpeg(), thorough_photo()
    for name, key in KEYS.items():
        r = httpx2.post(
            url + "/enroll",
            headers={"X-API-Key": key},
            data={"subject_id": "obama"},
            files={"images": ("obama.jpg", obama, "image/jpeg")},
            timeout=120,
        )
        if r.status_code != 201:
            raise SystemExit(f"enroll in {name}: {r.status_code} {r.text}")

    def verify(c: httpx2.Client, photo: bytes, mode: str = "fast") -> httpx2.Response:
        return c.post(
            "/verify",
            data={"subject_id": "obama", "mode": mode},
            files={"image": ("p.jpg", photo, "image/jpeg")},
        )

    quiet = httpx2.Client(base_url=url, headers={"X-API-Key": KEYS["quiet"]}, timeout=120)
    thorough_client = httpx2.Client(
        base_url=url, headers={"X-API-Key": KEYS["thorough"]}, timeout=120
    )
    want = verify(quiet, obama2).json()
    want_thorough = verify(thorough_client, big, "thorough").json()
    thorough_client.close()

    def sequential(n: int, stages: dict[str, list[float]]) -> tuple[list[float], Counter[str]]:
        latencies, labels = [], Counter[str]()
        for _ in range(n):
            started = time.perf_counter()
            r = verify(quiet, obama2)
            latencies.append((time.perf_counter() - started) * 1000)
            label = _label(r)
            if label == "ok":
                got = r.json()
                for stage, ms in got.get("timing", {}).items():
                    stages.setdefault(stage, []).append(ms)
                if (
                    abs(got["distance"] - want["distance"]) > TOLERANCE
                    or got["match"] != want["match"]
                ):
                    label = "wrong"
            labels[label] += 1
        return latencies, labels

    sequential(10, {})  # warm
    alone_stages: dict[str, list[float]] = {}
    alone, alone_labels = sequential(requests, alone_stages)

    def check_noface(r: httpx2.Response) -> str:
        return _label(r)  # no_face, or a refusal code; never 'ok' for a grey photo

    def check_thorough(r: httpx2.Response) -> str:
        label = _label(r)
        if label == "ok" and abs(r.json()["distance"] - want_thorough["distance"]) > TOLERANCE:
            return "wrong"
        return label

    floods = [
        Flood(url, KEYS["noface"], noface_clients, lambda c: verify(c, grey), check_noface),
        Flood(
            url,
            KEYS["thorough"],
            thorough_clients,
            lambda c: verify(c, big, "thorough"),
            check_thorough,
        ),
    ]
    for flood in floods:
        flood.start()
    time.sleep(3.0)  # let the floods fill every queue
    loaded_stages: dict[str, list[float]] = {}
    loaded, loaded_labels = sequential(requests, loaded_stages)
    for flood in floods:
        flood.finish()
    quiet.close()
    report = {
        "requests": requests,
        "alone_ms": {
            "p50": _pct(alone, 0.5),
            "p95": _pct(alone, 0.95),
            "mean": statistics.mean(alone),
        },
        "loaded_ms": {
            "p50": _pct(loaded, 0.5),
            "p95": _pct(loaded, 0.95),
            "mean": statistics.mean(loaded),
        },
        # The server's own stage timings (means): what the wait was spent on.
        "alone_stages_ms": {k: round(statistics.mean(v), 2) for k, v in alone_stages.items()},
        "loaded_stages_ms": {k: round(statistics.mean(v), 2) for k, v in loaded_stages.items()},
        "alone_answers": dict(alone_labels),
        "loaded_answers": dict(loaded_labels),
        "noface_flood": {
            "clients": noface_clients,
            "answers": dict(floods[0].counts),
            "per_second": sum(floods[0].counts.values()) / floods[0].elapsed,
        },
        "thorough_flood": {
            "clients": thorough_clients,
            "answers": dict(floods[1].counts),
            "per_second": sum(floods[1].counts.values()) / floods[1].elapsed,
        },
    }
    report["p95_ratio"] = report["loaded_ms"]["p95"] / report["alone_ms"]["p95"]
    report["p50_ratio"] = report["loaded_ms"]["p50"] / report["alone_ms"]["p50"]
    wrong = (
        loaded_labels["wrong"]
        + alone_labels["wrong"]
        + floods[1].counts["wrong"]
        + floods[0].counts["ok"]
    )
    report["wrong_answers"] = wrong
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--noface-clients", type=int, default=8)
    parser.add_argument("--thorough-clients", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.requests, args.noface_clients, args.thorough_clients)
    a, b = report["alone_ms"], report["loaded_ms"]
    print(f"quiet tenant /verify alone : p50 {a['p50']:.1f} ms  p95 {a['p95']:.1f} ms")
    print(f"quiet tenant /verify loaded: p50 {b['p50']:.1f} ms  p95 {b['p95']:.1f} ms")
    ratios = f"p50 {report['p50_ratio']:.2f}x  p95 {report['p95_ratio']:.2f}x"
    print(f"ratio loaded/alone         : {ratios}")
    print(f"quiet answers alone / loaded: {report['alone_answers']} / {report['loaded_answers']}")
    print(f"server stages alone : {report['alone_stages_ms']}")
    print(f"server stages loaded: {report['loaded_stages_ms']}")
    for name in ("noface_flood", "thorough_flood"):
        f = report[name]
        print(f"{name} ({f['clients']} clients): {f['per_second']:.1f}/s {f['answers']}")
    print(f"wrong answers: {report['wrong_answers']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["wrong_answers"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
