"""Requests/s and latency of /verify against a running server, with C concurrent clients.

    python benchmarks/verify_load.py URL SUBJECT PHOTO [--clients 4] [--seconds 15]

Bounded in time; talks only to the URL given (use a loopback address).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import httpx2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("subject")
    parser.add_argument("photo", type=Path)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    photo = args.photo.read_bytes()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client() -> None:
        with httpx2.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                r = http.post(
                    args.url + "/verify", data={"subject_id": args.subject}, files={"image": photo}
                )
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    print(
        f"clients={args.clients} requests={len(latencies)} rps={len(latencies) / wall:.2f} "
        f"p50={q[49]:.0f}ms p95={q[94]:.0f}ms statuses={statuses}"
    )


if __name__ == "__main__":
    main()
