"""A noisy neighbour on the Rekognition API (issue 40): does a tenant flooding
CompareFaces through the AWS SDK slow another tenant's /verify more than faceverify's
own floods do? The Rekognition path takes the same fair inference slots and queue
shares as every inference route.

    python benchmarks/rekognition_neighbour.py [--requests 100] [--clients 8]

One `faceverify serve`: a quiet tenant (an API key bound to ``quiet``) and a loud one
(an AWS credential bound to ``loud``). The quiet tenant's sequential /verify is timed
alone, then while ``--clients`` boto3 clients send CompareFaces of two photos as fast as
they can (no retries: a refusal is counted). Every quiet answer must equal its answer
alone. Prints p50/p95 alone and loaded, their ratios, and the loud tenant's outcomes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import boto3
import httpx2
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import FACEVERIFY, bench_env, serving  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data"
QUIET = "quiet-key-" + "0" * 20


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="fv-rk-neighbour-"))
    keys = f"{QUIET}:enroll+verify@quiet"
    out = subprocess.run(
        [
            FACEVERIFY,
            "keys",
            "create",
            "--aws",
            "--scope",
            "verify",
            "--collection",
            "loud",
            "--name",
            "loud",
        ],
        env=bench_env(data_dir, keys),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    akid = out.split("aws_access_key_id = ")[1].split()[0]
    secret = out.split("aws_secret_access_key = ")[1].split()[0]
    a, b = (PHOTOS / "obama.jpg").read_bytes(), (PHOTOS / "obama2.jpg").read_bytes()
    with serving(data_dir, keys) as url:
        quiet = httpx2.Client(base_url=url, headers={"X-API-Key": QUIET}, timeout=60)
        quiet.post("/enroll", files={"image": a}, data={"subject_id": "barack"}).raise_for_status()

        def verify() -> tuple[float, float]:
            start = time.perf_counter()
            r = quiet.post("/verify", files={"image": b}, data={"subject_id": "barack"})
            r.raise_for_status()
            return (time.perf_counter() - start) * 1000, r.json()["distance"]

        for _ in range(5):
            verify()
        alone = [verify() for _ in range(args.requests)]
        expected = alone[0][1]
        stop = threading.Event()
        outcomes: Counter[str] = Counter()

        def flood() -> None:
            loud = boto3.client(
                "rekognition",
                endpoint_url=url,
                region_name="eu-west-1",
                aws_access_key_id=akid,
                aws_secret_access_key=secret,
                config=Config(retries={"mode": "standard", "max_attempts": 1}),
            )
            while not stop.is_set():
                try:
                    loud.compare_faces(SourceImage={"Bytes": a}, TargetImage={"Bytes": b})
                    outcomes["200"] += 1
                except ClientError as refused:
                    outcomes[refused.response["Error"]["Code"]] += 1

        threads = [threading.Thread(target=flood) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(2)
        started = time.perf_counter()
        loaded = [verify() for _ in range(args.requests)]
        elapsed = time.perf_counter() - started
        stop.set()
        for t in threads:
            t.join()
    wrong = sum(abs(d - expected) > 1e-5 for _, d in alone + loaded)
    quiet_alone = [ms for ms, _ in alone]
    quiet_loaded = [ms for ms, _ in loaded]
    for label, samples in (("alone ", quiet_alone), ("loaded", quiet_loaded)):
        print(
            f"quiet /verify {label}: p50 {pct(samples, 50):6.1f} ms  p95 {pct(samples, 95):6.1f} ms"
        )
    print(
        f"ratio p50 {pct(quiet_loaded, 50) / pct(quiet_alone, 50):.2f}x  "
        f"p95 {pct(quiet_loaded, 95) / pct(quiet_alone, 95):.2f}x  wrong answers {wrong}"
    )
    print(
        f"loud CompareFaces ({args.clients} clients): {dict(outcomes)} "
        f"({outcomes['200'] / elapsed:.1f} answered/s while measured)"
    )


if __name__ == "__main__":
    main()
