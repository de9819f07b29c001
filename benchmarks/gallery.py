"""Large galleries end to end, over HTTP (issue 12).

    python benchmarks/gallery.py --faces 1000000 [--database-url URL] [--workers 1]
        [--work DIR] [--checkout OLD_CHECKOUT] [--lfw ../shared/data/lfw-devtrain]

Fills a gallery of N synthetic faces (subjects with two noisy faces each) through
`faceverify gallery import` (the bulk path), starts `faceverify serve` on it, and prints:
import rate, start-up to /readyz, to identify ready and to the first /identify answered,
RSS and PSS of the server processes, verify and identify search_ms p50/p95 with a real
photo, and recall@1 / @10 of identify by face_id against exact search over the same
embeddings (the face itself left out), with those searches' search_ms.

By photo (issue 41): with ``--lfw``, people of lfw-devtrain are enrolled on top (one photo
each, once per gallery) and identified by another photo of theirs: each probe is a new
photo with new candidates, so no cache of the server's answers for it (the same photo
again hid ~350 ms a search at 1M faces). Prints their search_ms and rank-1 rate.

``--checkout`` serves from another checkout (its source tree on PYTHONPATH, this
virtualenv), to measure the commit before on the same gallery.
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
from typing import Any

import httpx2
import numpy as np

from app.gallery import Gallery
from app.vectors.ann import AnnIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-gallery-admin-key-0123456789"
FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def synthetic(n: int, path: Path, shape: str) -> None:
    """Two faces a subject: drawn like lfw-devtrain's embeddings (benchmarks/synthetic.py),
    or (``sphere``) random unit centres with isotropic noise, the worst case for HNSW."""
    if shape == "lfw":
        owner, faces = generate(n, per_subject=2)
    else:
        rng = np.random.default_rng(0)
        centres = rng.normal(size=((n + 1) // 2, 128)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        faces = np.repeat(centres, 2, axis=0)[:n]
        faces += rng.normal(size=faces.shape).astype(np.float32) * 0.35 / np.sqrt(128)
        owner = np.arange(n) // 2
    np.savez(path, subject_ids=np.char.add("s", owner.astype(str)), embeddings=faces)


def memory_mb(pid: int) -> tuple[float, float]:
    """RSS and PSS of the server and its worker processes. RSS counts a page shared by
    two workers twice; PSS splits it between them, so PSS adds up to what the machine
    holds."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    rss = pss = 0
    for p in [pid, *map(int, children.stdout.split())]:
        with open(f"/proc/{p}/smaps_rollup") as fh:
            fields = {line.split(":")[0]: line.split()[1] for line in fh if ":" in line}
        rss += int(fields["Rss"])
        pss += int(fields["Pss"])
    return rss / 1024, pss / 1024


def lfw_people(root: Path, count: int) -> list[tuple[str, Path, Path]]:
    """Up to ``count`` people of lfw-devtrain with two photos or more, spread over the
    list: (subject id, the photo enrolled, the photo identified)."""
    found = []
    for line in (root / "peopleDevTrain.txt").read_text().splitlines()[1:]:
        name, photos = line.split("\t")
        if int(photos) >= 2:
            folder = root / "images" / name
            found.append((f"lfw-{name}", folder / f"{name}_0001.jpg", folder / f"{name}_0002.jpg"))
    step = max(1, len(found) // count)
    return found[::step][:count]


def by_photo(url: str, h: dict[str, str], people: list[tuple[str, Path, Path]]) -> dict[str, Any]:
    """Each person enrolled (once a gallery: a later run finds them), then identified by
    another photo: search_ms p50/p95 and how often the person came first."""
    timings, first = [], 0
    for subject, enrolled, probe in people:
        if httpx2.get(f"{url}/subjects/{subject}", headers=h, timeout=60).status_code == 404:
            r = httpx2.post(
                url + "/enroll",
                data={"subject_id": subject},
                files={"image": enrolled.read_bytes()},
                headers=h,
                timeout=120,
            )
            if r.status_code != 201:
                continue  # no face found in that photo
        image = {"image": probe.read_bytes()}
        r = httpx2.post(url + "/identify", files=image, headers=h, timeout=120)
        if r.status_code != 200:
            continue
        answer = r.json()
        timings.append(answer["timing"]["search_ms"])
        first += bool(answer["candidates"]) and answer["candidates"][0]["subject_id"] == subject
    return {
        "by_photo_probes": len(timings),
        "by_photo_search_ms": [
            round(statistics.median(timings), 2),
            round(float(np.percentile(timings, 95)), 2),
        ],
        "by_photo_rank1": round(first / max(1, len(timings)), 4),
    }


def start(args: argparse.Namespace, env: dict[str, str], url: str) -> tuple[Any, float, float]:
    """Start `faceverify serve`; seconds to /readyz 200 and to identify ready."""
    command = [FACEVERIFY, "serve", "--port", str(args.port), "--workers", str(args.workers)]
    if args.checkout is not None:
        env = {**env, "PYTHONPATH": str(args.checkout)}
        command = [sys.executable, "-m", "app.cli", *command[1:]]
    started = time.perf_counter()
    server = subprocess.Popen(
        command, cwd=args.checkout, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ready = None
    while True:
        try:
            r = httpx2.get(url + "/readyz", timeout=2)
            if r.status_code == 200:
                ready = ready or time.perf_counter() - started
                if r.json()["identify"] == "ready":
                    return server, ready, time.perf_counter() - started
        except httpx2.TransportError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--port", type=int, default=8950)
    parser.add_argument("--shape", choices=("lfw", "sphere"), default="lfw")
    parser.add_argument(
        "--work", type=Path, default=None, help="a folder from an earlier run: reuse its gallery"
    )
    parser.add_argument("--checkout", type=Path, default=None, help="serve an older checkout")
    lfw = ROOT.parent / "shared" / "data" / "lfw-devtrain"
    parser.add_argument("--lfw", type=Path, default=lfw if lfw.is_dir() else None)
    parser.add_argument("--people", type=int, default=40, help="lfw people identified by photo")
    args = parser.parse_args()
    reuse = args.work is not None and (args.work / "faceverify.db").exists()
    work = args.work or Path(tempfile.mkdtemp(prefix="fv-gallery-"))
    env = {**os.environ, "FACEVERIFY_DATA_DIR": str(work), "FACEVERIFY_API_KEYS": f"{KEY}:admin"}
    if args.database_url:
        env["FACEVERIFY_DATABASE_URL"] = args.database_url
    url_db = args.database_url or f"sqlite:///{work / 'faceverify.db'}"
    report: dict[str, object] = {
        "faces": args.faces,
        "shape": args.shape,
        "database": url_db.split(":")[0],
    }

    if not reuse:
        synthetic(args.faces, work / "g.npz", args.shape)
        started = time.perf_counter()
        subprocess.run(
            [FACEVERIFY, "gallery", "import", str(work / "g.npz")],
            env=env,
            check=True,
            capture_output=True,
        )
        report["import_faces_per_s"] = round(args.faces / (time.perf_counter() - started))

    url, h = f"http://127.0.0.1:{args.port}", {"X-API-Key": KEY}
    server, ready, identify_ready = start(args, env, url)
    try:
        report["ready_s"] = round(ready, 1)
        report["identify_ready_s"] = round(identify_ready, 1)
        photos = ROOT / "tests" / "data"
        sent = time.perf_counter()
        httpx2.post(
            url + "/identify",
            files={"image": (photos / "biden.jpg").read_bytes()},
            headers={"X-API-Key": KEY},
            timeout=300,
        ).raise_for_status()
        report["first_identify_s"] = round(identify_ready + time.perf_counter() - sent, 1)
        report["rss_mb"], report["pss_mb"] = (round(m) for m in memory_mb(server.pid))

        httpx2.delete(url + "/subjects/real", headers=h, timeout=60)  # from an earlier run
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

        if args.lfw is not None:
            report.update(by_photo(url, h, lfw_people(args.lfw, args.people)))

        # Recall: identify by stored face over HTTP against exact search in this process.
        store = Gallery.connect(url_db)
        rows = store.faces.load(dim=128)
        store.close()
        # Exact search with numpy rows (AnnIndex never approximates below exact_below):
        # ExactIndex's per-face dictionaries would not fit beside a 10M-face server.
        exact = AnnIndex(128, exact_below=2**62)
        exact.add(rows.face_ids, rows.subject_ids, rows.matrix)
        face_ids = rows.face_ids
        picks = np.random.default_rng(1).choice(len(face_ids), size=args.queries, replace=False)
        queries = rows.matrix[picks].copy()
        del rows
        r1 = r10 = 0.0
        by_face: list[float] = []
        for i, query in zip(picks, queries, strict=True):
            face_id = face_ids[i]
            want = [x.subject_id for x in exact.search(query, 10, exclude=face_id)]
            got = httpx2.post(
                url + "/identify", data={"face_id": face_id, "top_k": "10"}, headers=h, timeout=60
            ).json()
            by_face.append(got["timing"]["search_ms"])
            got_ids = [c["subject_id"] for c in got["candidates"]]
            r1 += got_ids[:1] == want[:1]
            r10 += len(set(got_ids) & set(want)) / len(want)
        report["by_face_id_search_ms"] = [
            round(statistics.median(by_face), 2),
            round(float(np.percentile(by_face, 95)), 2),
        ]
        report["recall_at_1"] = round(r1 / len(picks), 4)
        report["recall_at_10"] = round(r10 / len(picks), 4)
        # The same photo again, now that the recall queries have touched the index's
        # pages (the first figures include faulting memory-mapped pages in).
        warm = [
            httpx2.post(url + "/identify", files={"image": probe}, headers=h, timeout=60).json()[
                "timing"
            ]["search_ms"]
            for _ in range(30)
        ]
        report["identify_search_ms_warm"] = [
            statistics.median(warm),
            round(float(np.percentile(warm, 95)), 2),
        ]
        report["after_queries_rss_mb"], report["after_queries_pss_mb"] = (
            round(m) for m in memory_mb(server.pid)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    # A restart: an in-memory index now opens the snapshot the first start saved.
    server, _, identify_ready = start(args, env, url)
    report["restart_identify_ready_s"] = round(identify_ready, 1)
    report["restart_rss_mb"], report["restart_pss_mb"] = (round(m) for m in memory_mb(server.pid))
    server.terminate()
    server.wait(timeout=30)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
