"""Load test: C concurrent clients verifying for S seconds against a running server.
Bounded in count and time; talks only to the URL given (use a loopback address).

    python benchmarks/load.py URL KEY SUBJECT PHOTO [--clients 100] [--seconds 30]

Prints status counts, p50/p99 latency per status class and throughput. The server
should answer the excess 429/503 (with Retry-After), never 5xx otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("subject")
    parser.add_argument("photo", type=Path)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    target = urlparse(args.url)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="subject_id"\r\n\r\n'
            f'{args.subject}\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            'filename="p.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + args.photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-API-Key": args.key}
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                conn.request("POST", "/verify", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                elapsed = (time.perf_counter() - start) * 1000
                if status in (429, 503):
                    # Honour Retry-After as a well-behaved client would (capped).
                    time.sleep(min(float(response.getheader("Retry-After") or 1), 2))
            except (OSError, http.client.HTTPException):
                status, elapsed = 0, (time.perf_counter() - start) * 1000
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            with lock:
                results.append((status, elapsed))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    ok = np.array([ms for status, ms in results if status == 200])
    refused = np.array([ms for status, ms in results if status in (429, 503)])
    print(f"clients={args.clients} seconds={wall:.1f} requests={len(results)} statuses={statuses}")
    if len(ok):
        print(
            f"200: {len(ok) / wall:.1f}/s  p50 {np.percentile(ok, 50):.0f} ms  "
            f"p99 {np.percentile(ok, 99):.0f} ms"
        )
    if len(refused):
        print(
            f"429/503: p50 {np.percentile(refused, 50):.0f} ms  "
            f"p99 {np.percentile(refused, 99):.0f} ms"
        )
    errors = sum(n for s, n in statuses.items() if s >= 500 and s != 503 or s == 0)
    print(f"5xx other than 503, or failed connections: {errors}")


if __name__ == "__main__":
    main()
