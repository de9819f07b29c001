"""Large galleries end to end, over HTTP (issue 12).

    python benchmarks/gallery.py --faces 1000000 [--database-url URL] [--workers 1]

Fills a gallery of N synthetic faces (subjects with two noisy faces each) through
`faceverify gallery import` (the bulk path), starts `faceverify serve` on it, and prints:
import rate, start-up to /readyz and to identify ready, RSS of the server processes,
verify and identify search_ms p50/p95 with a real photo, and recall@1 / @10 of identify
by face_id against exact search over the same embeddings (the face itself left out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np

from app.gallery.index import ExactIndex
from app.gallery.store import GalleryStore

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-gallery-admin-key-0123456789"
FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def synthetic(n: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=((n + 1) // 2, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = np.repeat(centres, 2, axis=0)[:n]
    faces += rng.normal(size=faces.shape).astype(np.float32) * 0.35 / np.sqrt(128)
    np.savez(path, subject_ids=np.asarray([f"s{i // 2}" for i in range(n)]), embeddings=faces)


def rss_mb(pid: int) -> float:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    total = 0
    for p in [pid, *map(int, children.stdout.split())]:
        with open(f"/proc/{p}/status") as fh:
            total += int(next(x for x in fh if x.startswith("VmRSS")).split()[1])
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--port", type=int, default=8950)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fv-gallery-"))
    env = {**os.environ, "FACEVERIFY_DATA_DIR": str(work), "FACEVERIFY_API_KEYS": f"{KEY}:admin"}
    if args.database_url:
        env["FACEVERIFY_DATABASE_URL"] = args.database_url
    url_db = args.database_url or f"sqlite:///{work / 'faceverify.db'}"
    report: dict[str, object] = {"faces": args.faces, "database": url_db.split(":")[0]}

    synthetic(args.faces, work / "g.npz")
    started = time.perf_counter()
    subprocess.run(
        [FACEVERIFY, "gallery", "import", str(work / "g.npz")],
        env=env,
        check=True,
        capture_output=True,
    )
    report["import_faces_per_s"] = round(args.faces / (time.perf_counter() - started))

    started = time.perf_counter()
    server = subprocess.Popen(
        [FACEVERIFY, "serve", "--port", str(args.port), "--workers", str(args.workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url, h = f"http://127.0.0.1:{args.port}", {"X-API-Key": KEY}
    try:
        ready = None
        while True:
            try:
                r = httpx2.get(url + "/readyz", timeout=2)
                if r.status_code == 200:
                    ready = ready or time.perf_counter() - started
                    if r.json()["identify"] == "ready":
                        break
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        report["ready_s"] = round(ready, 1)
        report["identify_ready_s"] = round(time.perf_counter() - started, 1)
        report["rss_mb"] = round(rss_mb(server.pid))

        photos = ROOT / "tests" / "data"
        enrolled = httpx2.post(
            url + "/enroll",
            data={"subject_id": "real"},
            files={"image": (photos / "obama.jpg").read_bytes()},
            headers=h,
            timeout=60,
        )
        assert enrolled.status_code == 201, enrolled.text
        probe = (photos / "obama2.jpg").read_bytes()
        verify, identify = [], []
        for _ in range(30):
            r = httpx2.post(
                url + "/verify",
                data={"subject_id": "real"},
                files={"image": probe},
                headers=h,
                timeout=60,
            ).json()
            assert r["match"]
            verify.append(r["timing"]["search_ms"])
            r = httpx2.post(url + "/identify", files={"image": probe}, headers=h, timeout=60).json()
            assert r["best"]["subject_id"] == "real"
            identify.append(r["timing"]["search_ms"])
        report["verify_search_ms"] = [
            statistics.median(verify),
            round(float(np.percentile(verify, 95)), 2),
        ]
        report["identify_search_ms"] = [
            statistics.median(identify),
            round(float(np.percentile(identify, 95)), 2),
        ]

        # Recall: identify by stored face over HTTP against exact search in this process.
        store = GalleryStore(url_db)
        rows = store.load_embeddings(dim=128)
        store.close()
        exact = ExactIndex(128)
        exact.add(rows.face_ids, rows.subject_ids, rows.matrix)
        picks = np.random.default_rng(1).choice(
            len(rows.face_ids), size=args.queries, replace=False
        )
        r1 = r10 = 0.0
        for i in picks:
            face_id = rows.face_ids[i]
            want = [x.subject_id for x in exact.search(rows.matrix[i], 10, exclude=face_id)]
            got = httpx2.post(
                url + "/identify", data={"face_id": face_id, "top_k": "10"}, headers=h, timeout=60
            ).json()
            got_ids = [c["subject_id"] for c in got["candidates"]]
            r1 += got_ids[:1] == want[:1]
            r10 += len(set(got_ids) & set(want)) / len(want)
        report["recall_at_1"] = round(r1 / len(picks), 4)
        report["recall_at_10"] = round(r10 / len(picks), 4)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
