"""Load test: C concurrent clients verifying for S seconds against a running server.
Bounded in count and time; talks only to the URL given (use a loopback address).

    python benchmarks/load.py URL KEY SUBJECT PHOTO [PHOTO ...] [--clients 100] [--seconds 30]

Prints status counts, p50/p99 latency per status class and throughput. The server
should answer the excess 429/503 (with Retry-After), never 5xx otherwise. With several
photos each client alternates between them, and every 200 is checked against that
photo's answer computed alone before the load starts (distance within 1e-5, same box):
wrong answers are printed as a number, which must be 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
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
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    target = urlparse(args.url)
    boundary = uuid.uuid4().hex
    bodies = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="subject_id"\r\n\r\n'
            f'{args.subject}\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            'filename="p.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
        for photo in args.photos
    ]
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-API-Key": args.key}

    def verify(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict, str]:
        conn.request("POST", "/verify", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        answer = json.loads(raw) if response.status == 200 else {}
        return response.status, answer, response.getheader("Retry-After") or "1"

    # Each photo's answer computed alone, before any load.
    alone = []
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    for photo, body in zip(args.photos, bodies, strict=True):
        status, answer, _ = verify(conn, body)
        if status != 200:
            raise SystemExit(f"{photo}: /verify answered {status} before any load")
        alone.append((answer["distance"], answer["probe"]["box"]))
    conn.close()

    results: list[tuple[int, float]] = []
    wrong: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        i = k
        while time.monotonic() < stop_at:
            which = i % len(bodies)
            i += 1
            start = time.perf_counter()
            try:
                status, answer, retry_after = verify(conn, bodies[which])
                elapsed = (time.perf_counter() - start) * 1000
                if status == 200:
                    distance, box = alone[which]
                    if abs(answer["distance"] - distance) > 1e-5 or answer["probe"]["box"] != box:
                        with lock:
                            wrong.append(f"{args.photos[which].name}: {answer['distance']}")
                if status in (429, 503):
                    # Honour Retry-After as a well-behaved client would (capped).
                    time.sleep(min(float(retry_after), 2))
            except (OSError, http.client.HTTPException):
                status, elapsed = 0, (time.perf_counter() - start) * 1000
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            with lock:
                results.append((status, elapsed))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
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
    print(f"wrong answers: {len(wrong)} of {statuses.get(200, 0)} (must be 0) {wrong[:5]}")


if __name__ == "__main__":
    main()
