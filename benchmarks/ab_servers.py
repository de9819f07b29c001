"""Two checkouts' servers side by side, requests alternated: is one slower?

    python benchmarks/ab_servers.py OLD_CHECKOUT NEW_CHECKOUT [--sequential 200] [--runs 3]

Both servers run at once on loopback ports, each from its own source tree (the same
virtualenv), so a slow minute of this shared machine falls on both alike. Measured in
turns: sequential /verify, /identify and /compare (one request to old, one to new, ...),
then 8 concurrent clients of /verify for 10 s, old and new in alternating runs. Every
answer's distance is compared between the two servers: the same photo must give the
same distance (within 1e-5) on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import serving  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data"
KEY = "ab-" + uuid.uuid4().hex


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def sequential(
    clients: dict[str, httpx2.Client], n: int, path: str, files: dict[str, bytes], data: dict
) -> tuple[dict[str, list[float]], float]:
    """ms per request on each server, taken in turns; the largest distance difference."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    worst = 0.0
    for i in range(n + 3):
        answers = {}
        for name, client in clients.items():
            start = time.perf_counter()
            r = client.post(path, files=files, data=data)
            elapsed = (time.perf_counter() - start) * 1000
            r.raise_for_status()
            answers[name] = r.json()
            if i >= 3:  # warm-up
                times[name].append(elapsed)
        distances = [distance_of(a) for a in answers.values()]
        worst = max(worst, max(distances) - min(distances))
    return times, worst


def refused(
    clients: dict[str, httpx2.Client], n: int, files: dict[str, bytes]
) -> dict[str, list[float]]:
    """ms per /verify of a photo with no face, on each server in turns; each answer
    must be 422 no_face."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    for i in range(n + 3):
        for name, client in clients.items():
            start = time.perf_counter()
            r = client.post("/verify", files=files, data={"subject_id": "obama"})
            elapsed = (time.perf_counter() - start) * 1000
            assert r.status_code == 422 and r.json()["code"] == "no_face", r.text
            if i >= 3:
                times[name].append(elapsed)
    return times


def writes(clients: dict[str, httpx2.Client], n: int) -> dict[str, dict[str, list[float]]]:
    """ms per /enroll of a new subject and per DELETE of it, on each server in turns."""
    times: dict[str, dict[str, list[float]]] = {
        name: {"enroll": [], "delete": []} for name in clients
    }
    body = photo("biden.jpg")
    for i in range(n + 3):
        for name, client in clients.items():
            subject = f"w{i}"
            start = time.perf_counter()
            client.post("/enroll", files={"image": body}, data={"subject_id": subject})
            middle = time.perf_counter()
            client.delete(f"/subjects/{subject}").raise_for_status()
            end = time.perf_counter()
            if i >= 3:  # warm-up
                times[name]["enroll"].append((middle - start) * 1000)
                times[name]["delete"].append((end - middle) * 1000)
    return times


def distance_of(answer: dict) -> float:
    if "candidates" in answer:
        return float(answer["candidates"][0]["distance"])
    return float(answer["distance"])


def load(url: str, seconds: float, clients: int) -> float:
    """/verify requests per second from ``clients`` at once."""
    stop = time.monotonic() + seconds
    done = [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx2.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as http:
            body = photo("obama2.jpg")
            while time.monotonic() < stop:
                r = http.post("/verify", files={"image": body}, data={"subject_id": "obama"})
                if r.status_code == 200:
                    with lock:
                        done[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--writes", type=int, default=0, help="enroll + delete turns")
    parser.add_argument(
        "--no-face", type=int, default=0, help="/verify turns with photos that have no face"
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                serving(Path(tempfile.mkdtemp(prefix="ab-")), f"{KEY}:admin", checkout.resolve())
            )
            for name, checkout in (("old", args.old), ("new", args.new))
        }
        clients = {
            name: stack.enter_context(
                httpx2.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60)
            )
            for name, url in urls.items()
        }
        for client in clients.values():
            r = client.post(
                "/enroll", files={"image": photo("obama.jpg")}, data={"subject_id": "obama"}
            )
            r.raise_for_status()
        cases = {
            "/verify": ("/verify", {"image": photo("obama2.jpg")}, {"subject_id": "obama"}),
            "/identify": ("/identify", {"image": photo("obama2.jpg")}, {}),
            "/compare": (
                "/compare",
                {"image_a": photo("obama.jpg"), "image_b": photo("biden.jpg")},
                {},
            ),
        }
        for label, (path, files, data) in cases.items():
            n = args.sequential if label == "/verify" else args.sequential // 2
            times, worst = sequential(clients, n, path, files, data)
            row = "  ".join(
                f"{name} p50 {statistics.median(t):6.2f} p95 "
                f"{sorted(t)[int(0.95 * len(t))]:6.2f} ms"
                for name, t in times.items()
            )
            ratio = statistics.median(times["new"]) / statistics.median(times["old"])
            print(f"{label:10s} {row}  new/old {ratio:.3f}  distance differs by {worst:.2e}")
        for name in ("coffee.png", "rocket.jpg") if args.no_face else ():
            times = refused(clients, args.no_face, {"image": photo(name)})
            row = "  ".join(
                f"{server} p50 {statistics.median(t):7.2f} ms" for server, t in times.items()
            )
            ratio = statistics.median(times["new"]) / statistics.median(times["old"])
            print(f"no face ({name}) {row}  new/old {ratio:.3f}")
        if args.writes:
            written = writes(clients, args.writes)
            for what in ("enroll", "delete"):
                row = "  ".join(
                    f"{name} p50 {statistics.median(t[what]):6.2f} ms"
                    for name, t in written.items()
                )
                ratio = statistics.median(written["new"][what]) / statistics.median(
                    written["old"][what]
                )
                print(f"/{what:9s} {row}  new/old {ratio:.3f}")
        rates: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.runs):
            for name, url in urls.items():
                rates[name].append(load(url, args.seconds, args.clients))
        for name, values in rates.items():
            shown = ", ".join(f"{v:.1f}" for v in values)
            mean = statistics.mean(values)
            print(f"{args.clients} clients {name}: {shown} requests/s (mean {mean:.1f})")
        print(f"new/old {statistics.mean(rates['new']) / statistics.mean(rates['old']):.3f}")


if __name__ == "__main__":
    main()
