"""The large-collection index (app/gallery/ann.py) against exact search, in one process.

    python benchmarks/ann_recall.py --faces 1000000

A synthetic gallery like a real one: subjects with two noisy faces each (not random unit
vectors, where approximate search is unrealistically easy or hard); probes are new noisy
views of enrolled subjects. Prints build time, memory per face, search p50/p95 and
recall@1 and @10 of AnnIndex (IVF-SQ8 + exact re-rank) against ExactIndex.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from app.vectors.ann import AnnIndex
from app.vectors.index import ExactIndex


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--nprobe", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    subjects = args.faces // 2
    centres = rng.normal(size=(subjects, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = 0.35 / np.sqrt(128)
    face_ids = [f"{i:036d}" for i in range(args.faces)]
    subject_ids = [f"s{i // 2}" for i in range(args.faces)]
    picked = rng.choice(subjects, size=args.probes, replace=False)
    probes = centres[picked] + rng.normal(size=(args.probes, 128)).astype(np.float32) * noise

    results = {}
    for name, make in (
        ("ann", lambda: AnnIndex(128, exact_below=args.faces, nprobe=args.nprobe)),
        ("exact", lambda: ExactIndex(128)),
    ):
        before = rss_mb()
        index = make()
        started = time.perf_counter()
        for start in range(0, args.faces, 1_000_000):
            stop = min(start + 1_000_000, args.faces)
            chunk = np.repeat(centres[start // 2 : (stop + 1) // 2], 2, axis=0)[: stop - start]
            chunk = (
                chunk
                + np.random.default_rng(start).normal(size=chunk.shape).astype(np.float32) * noise
            )
            index.add(face_ids[start:stop], subject_ids[start:stop], chunk)
        build = time.perf_counter() - started
        grown = rss_mb() - before
        times, top = [], []
        for probe in probes:
            t = time.perf_counter()
            hits = index.search(probe, 10)
            times.append((time.perf_counter() - t) * 1000)
            top.append([h.subject_id for h in hits])
        results[name] = top
        print(
            f"{name:5s} {args.faces:,} faces: build {build:.1f} s, RSS +{grown:.0f} MB, "
            f"index {index.nbytes() / args.faces:.0f} B/face, search p50 "
            f"{statistics.median(times):.2f} ms, p95 {np.percentile(times, 95):.2f} ms"
        )
        del index
    r1 = np.mean([a[0] == e[0] for a, e in zip(results["ann"], results["exact"], strict=True)])
    r10 = np.mean(
        [
            len(set(a) & set(e)) / len(e)
            for a, e in zip(results["ann"], results["exact"], strict=True)
        ]
    )
    print(f"recall@1 {r1:.4f}, recall@10 {r10:.4f} (nprobe {args.nprobe})")


if __name__ == "__main__":
    main()
