"""/identify on two checkouts side by side, over a gallery of N faces: is one slower?

    python benchmarks/ab_identify.py OLD_CHECKOUT NEW_CHECKOUT --faces 1000 [--requests 200]

Each checkout imports the same synthetic gallery (N subjects, one 128-d face each,
`faceverify gallery import` with its own code and schema) into its own SQLite file, and
serves it; Obama is enrolled in both from a photo. Then /identify with obama2.jpg, one
request to old, one to new, ... (the machine's drift falls on both alike), and the
answers' nearest subject and distance compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import bench_env, serving  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data"
KEY = "ab-" + uuid.uuid4().hex


def gallery_file(faces: int, folder: Path) -> Path:
    """N synthetic embeddings around dlib's scale (norms ~1.4), one subject each."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(scale=1.4 / np.sqrt(128), size=(faces, 128)).astype(np.float32)
    path = folder / f"gallery-{faces}.npz"
    np.savez(path, subject_ids=np.array([f"s{i:08d}" for i in range(faces)]), embeddings=vectors)
    return path


def load(checkout: Path, data_dir: Path, file: Path) -> None:
    env = {**bench_env(data_dir, f"{KEY}:admin"), "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-m", "app.cli", "gallery", "import", str(file)],
        cwd=checkout, env=env, check=True, capture_output=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ab-identify-"))
    file = gallery_file(args.faces, scratch)
    dirs = {name: scratch / name for name in ("old", "new")}
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    for name, folder in dirs.items():
        folder.mkdir()
        started = time.perf_counter()
        load(checkouts[name], folder, file)
        print(f"{name}: imported {args.faces} faces in {time.perf_counter() - started:.1f} s")
    os.environ.setdefault("FACEVERIFY_IDENTIFY_TOP_K", "5")
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(serving(dirs[name], f"{KEY}:admin", checkouts[name]))
            for name in dirs
        }
        clients = {
            name: stack.enter_context(
                httpx2.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=300)
            )
            for name, url in urls.items()
        }
        photo = (PHOTOS / "obama2.jpg").read_bytes()
        for client in clients.values():
            enrolled = (PHOTOS / "obama.jpg").read_bytes()
            client.post("/enroll", files={"image": enrolled}, data={"subject_id": "obama"})
            # The index loads in the background: wait until identify answers.
            while client.post("/identify", files={"image": photo}).status_code != 200:
                time.sleep(1)
        times: dict[str, list[float]] = {name: [] for name in clients}
        worst = 0.0
        for i in range(args.requests + 5):
            answers = {}
            for name, client in clients.items():
                start = time.perf_counter()
                r = client.post("/identify", files={"image": photo})
                elapsed = (time.perf_counter() - start) * 1000
                r.raise_for_status()
                answers[name] = r.json()
                if i >= 5:
                    times[name].append(elapsed)
            nearest = {a["candidates"][0]["subject_id"] for a in answers.values()}
            assert nearest == {"obama"}, nearest
            d = [a["candidates"][0]["distance"] for a in answers.values()]
            worst = max(worst, max(d) - min(d))
        row = "  ".join(
            f"{name} p50 {statistics.median(t):6.2f} p95 {sorted(t)[int(0.95 * len(t))]:6.2f} ms"
            for name, t in times.items()
        )
        ratio = statistics.median(times["new"]) / statistics.median(times["old"])
        print(f"/identify {args.faces} faces: {row}  new/old p50 {ratio:.3f}")
        print(f"nearest distance differs between the two by {worst:.1e} at most")
        new = answers["new"]
        print("new answer:", {k: new.get(k) for k in ("best", "open_set")})


if __name__ == "__main__":
    main()
