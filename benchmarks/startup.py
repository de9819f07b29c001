"""Start-up: how long `faceverify serve` takes to answer /readyz 200 and to identify,
on a given data folder (issue 41: it had crept to 5.2-6.5 s; the target is 3 s at any
gallery size).

    python benchmarks/startup.py [--data-dir DIR] [--runs 5] [--against OLD_CHECKOUT
                                 [--against-data-dir COPY_OF_DIR]]
                                 [--import-file GALLERY.npz | --cold]

Each run starts a server on a loopback port, polls /readyz every 50 ms until it answers
200, then until it says identify is ready, sends one /identify with a real photo, and
stops the server. With ``--against``, the old checkout's server (the same virtualenv,
its source tree on PYTHONPATH) is started in alternate runs, so a slow minute of this
shared machine falls on both alike, and the ratios new/old are printed. Without
``--data-dir`` the gallery is empty (a fresh temporary folder each run).

The three starts issue 41 names:

- a restart: the data folder as it is (its index snapshot opened);
- ``--cold``: its index snapshots removed before each start, as a restored database or
  a new replica finds it (the server builds one: the next run removes it again);
- ``--import-file``: each run imports the file into a fresh folder with the tree's own
  `faceverify gallery import` (timed), then starts: the first start after an import.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import FACEVERIFY, bench_env  # noqa: E402

KEY = "startup-bench-key-0123456789"
PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "obama.jpg"


def one_import(data_dir: Path, gallery: Path, checkout: Path | None) -> float:
    """Seconds `faceverify gallery import` of ``gallery`` into ``data_dir`` took (its
    snapshot included, where the tree saves one)."""
    env = bench_env(data_dir, f"{KEY}:admin")
    command = [FACEVERIFY, "gallery", "import", str(gallery)]
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
        command = [sys.executable, "-m", "app.cli", *command[1:]]
    started = time.perf_counter()
    subprocess.run(command, cwd=checkout, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def one_start(data_dir: Path, port: int, checkout: Path | None) -> tuple[float, float, float]:
    """Seconds from the process's start to /readyz 200, to identify ready, and to the
    first /identify answered."""
    env = bench_env(data_dir, f"{KEY}:admin")
    command = [FACEVERIFY, "serve", "--port", str(port)]
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(
        command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url, ready = f"http://127.0.0.1:{port}", None
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                r = httpx2.get(url + "/readyz", timeout=2)
                if r.status_code == 200:
                    ready = ready or time.perf_counter() - started
                    if r.json().get("identify") == "ready":
                        break
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        identify = time.perf_counter() - started
        answer = httpx2.post(
            url + "/identify",
            files={"image": PHOTO.read_bytes()},
            headers={"X-API-Key": KEY},
            timeout=120,
        )
        answer.raise_for_status()
        return ready, identify, time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, default=None, help="an older checkout")
    parser.add_argument(
        "--against-data-dir",
        type=Path,
        default=None,
        help="the old checkout's copy of the data folder (default: --data-dir), for when "
        "the two write snapshots the other would not open and rebuild",
    )
    parser.add_argument("--import-file", type=Path, default=None, help="a .npz or .jsonl")
    parser.add_argument("--cold", action="store_true", help="no index snapshot at each start")
    parser.add_argument("--port", type=int, default=8990)
    args = parser.parse_args()
    trees = {"new": None} if args.against is None else {"old": args.against, "new": None}
    for tree in trees.values():  # neither pays for compiling its sources at each start
        source = (tree or Path(__file__).resolve().parent.parent) / "app"
        compileall.compile_dir(str(source), quiet=2)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    imports: dict[str, list[float]] = {name: [] for name in trees}
    for run in range(args.runs):
        for name, checkout in trees.items():
            folder = (args.against_data_dir if name == "old" else None) or args.data_dir
            if args.import_file is not None:
                folder = Path(tempfile.mkdtemp(prefix="fv-startup-import-"))
                imports[name].append(one_import(folder, args.import_file, checkout))
            folder = folder or Path(tempfile.mkdtemp(prefix="fv-startup-"))
            if args.cold:
                shutil.rmtree(folder / "index", ignore_errors=True)
            os.sync()
            results[name].append(one_start(folder, args.port + run % 2, checkout))
            if args.import_file is not None:
                shutil.rmtree(folder, ignore_errors=True)
    for name, seconds in imports.items():
        if seconds:
            print(f"{name}: gallery import {statistics.median(seconds):.1f} s (median)")
    medians = {}
    for name, rows in results.items():
        columns = [statistics.median(column) for column in zip(*rows, strict=True)]
        medians[name] = columns
        print(
            f"{name}: /readyz {columns[0]:.2f} s, identify ready {columns[1]:.2f} s, first "
            f"/identify answered {columns[2]:.2f} s (median of {len(rows)})"
        )
    if "old" in medians:
        new, old = medians["new"], medians["old"]
        print(
            "new/old: /readyz {:.2f}, identify ready {:.2f}, first /identify {:.2f}".format(
                *(n / o for n, o in zip(new, old, strict=True))
            )
        )


if __name__ == "__main__":
    main()
