"""Reading the gallery into the index's matrix: rows a second (issue 41: 29k rows/s at
1M in a first start after an import).

    python benchmarks/gallery_load.py DATABASE_URL [--runs 3] [--against OLD_CHECKOUT]

Times ``gallery.faces.load`` (every face's id, collection, subject and embedding into
one float32 matrix, decrypting when FACEVERIFY_ENCRYPTION_KEY is set) in a fresh
process per run, so no page of Python's own is warm from the run before. With
``--against``, the old checkout's code loads in alternate runs (the same virtualenv,
its source tree on PYTHONPATH) and the ratio new/old is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ONE_RUN = """
import json, sys, time
from app.settings import Settings
from app.service.build import open_gallery
settings = Settings(database_url=sys.argv[1])
gallery = open_gallery(settings)
started = time.perf_counter()
rows = gallery.faces.load(dim=128)
print(json.dumps({"rows": len(rows.face_ids), "s": time.perf_counter() - started}))
"""


def one_run(url: str, checkout: Path | None) -> tuple[int, float]:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    done = subprocess.run(
        [sys.executable, "-c", ONE_RUN, url],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return int(found["rows"]), float(found["s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", type=Path, default=None)
    args = parser.parse_args()
    trees = {"new": None} if args.against is None else {"old": args.against, "new": None}
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    rows = 0
    for _ in range(args.runs):
        for name, checkout in trees.items():
            rows, elapsed = one_run(args.database_url, checkout)
            seconds[name].append(elapsed)
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"{name}: {rows:,} rows in {median:.2f} s ({rows / median:,.0f} rows/s), runs {values}"
        )
    if "old" in seconds:
        ratio = statistics.median(seconds["new"]) / statistics.median(seconds["old"])
        print(f"new/old time: {ratio:.2f}")


if __name__ == "__main__":
    main()
