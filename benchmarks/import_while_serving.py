"""A bulk import into one collection while the server answers another (issue 25, item 4).

    python benchmarks/import_while_serving.py [--faces 1000000]

Starts `faceverify serve` (default settings, a temporary folder, loopback only), enrolls
a real photo in ``default``, then runs `faceverify gallery import` of N synthetic faces
(norm ~1) into collection ``big`` while a client enrolls in ``default`` every 0.5 s.
Prints: the enrolls' statuses during the import (503 database_busy is allowed, 500 is
not), the time of the first identify in ``default`` after the import (it must not pay
for ``big``'s reload), the time until identify in ``big`` answers 200 and its first
answers' times, and the first identify in ``default`` after a POST /collections (no
reload of anything). The answers in ``default`` are checked (obama found).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import FACEVERIFY, bench_env, serving  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "import-bench-admin-key-0123456789"
AUTH = {"X-API-Key": KEY}


def _timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def run(faces: int) -> dict[str, Any]:
    photo = (ROOT / "tests" / "data" / "obama.jpg").read_bytes()
    photo2 = (ROOT / "tests" / "data" / "obama2.jpg").read_bytes()
    with tempfile.TemporaryDirectory(prefix="faceverify-import-") as tmp:
        data = Path(tmp)
        rng = np.random.default_rng(0)
        vectors = (rng.normal(size=(faces, 128)) / np.sqrt(128)).astype(np.float32)
        ids = np.asarray([f"p{i // 2}" for i in range(faces)])
        np.savez(data / "big.npz", subject_ids=ids, embeddings=vectors)
        env = bench_env(data, f"{KEY}:admin")
        with serving(data, f"{KEY}:admin") as url:
            c = httpx2.Client(base_url=url, headers=AUTH, timeout=300)
            r = c.post("/enroll", data={"subject_id": "obama"}, files={"image": photo})
            assert r.status_code == 201, r.text
            c.post("/collections", json={"collection_id": "big"})
            # identify once in each so both are loaded before the import
            c.post("/identify", files={"image": photo2})
            c.post("/identify?collection=big", files={"image": photo2})

            statuses: Counter[str] = Counter()
            stop = threading.Event()

            def enroll_meanwhile() -> None:
                n = 0
                with httpx2.Client(base_url=url, headers=AUTH, timeout=300) as own:
                    while not stop.is_set():
                        r = own.post(
                            "/enroll", data={"subject_id": f"during-{n}"}, files={"image": photo}
                        )
                        code = r.json().get("code", "") if r.status_code != 201 else ""
                        statuses[f"{r.status_code} {code}".strip()] += 1
                        n += 1
                        stop.wait(0.5)

            enroller = threading.Thread(target=enroll_meanwhile)
            enroller.start()
            started = time.perf_counter()
            done = subprocess.run(
                [FACEVERIFY, "gallery", "import", str(data / "big.npz"), "--collection", "big"],
                env=env,
                capture_output=True,
                text=True,
            )
            import_s = time.perf_counter() - started
            stop.set()
            enroller.join()
            if done.returncode:
                raise SystemExit(done.stderr)

            def identify(collection: str, query: dict[str, Any]) -> httpx2.Response:
                return c.post(f"/identify?collection={collection}", **query)

            default_ms, r = _timed(lambda: identify("default", {"files": {"image": photo2}}))
            default_ok = r.status_code == 200 and r.json()["best"]["subject_id"] == "obama"
            first_200_ms = None
            waited: Counter[int] = Counter()
            started = time.perf_counter()
            faces_in_big = None
            while time.perf_counter() - started < 300:
                r = identify("big", {"files": {"image": photo2}})
                waited[r.status_code] += 1
                if r.status_code == 200:
                    first_200_ms = (time.perf_counter() - started) * 1000
                    faces_in_big = r.json()["gallery_size"]
                    break
                time.sleep(0.2)
            later = [
                _timed(lambda: identify("big", {"files": {"image": photo2}}))[0] for _ in range(5)
            ]
            c.post("/collections", json={"collection_id": "another"})
            after_create_ms, r2 = _timed(lambda: identify("default", {"files": {"image": photo2}}))
            c.close()
            return {
                "faces": faces,
                "import_s": round(import_s, 1),
                "enrolls_during_import": dict(statuses),
                "first_identify_default_after_import_ms": round(default_ms, 1),
                "default_answer_right": default_ok,
                "identify_big_first_200_after_ms": first_200_ms and round(first_200_ms),
                "identify_big_statuses_until_then": dict(waited),
                "big_gallery_size": faces_in_big,
                "identify_big_next_ms": [round(x, 1) for x in later],
                "identify_default_after_post_collections_ms": round(after_create_ms, 1),
                "after_create_right": r2.status_code == 200
                and r2.json()["best"]["subject_id"] == "obama",
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(run(args.faces), indent=2))


if __name__ == "__main__":
    main()
