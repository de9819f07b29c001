"""``faceverify bench``: speed and memory numbers, printed as a table and as JSON.

Everything is measured in one run on this machine, with baselines run in the same
process so the ratios compare like with like. Nothing here asserts a target: the
targets and the recorded numbers live in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.audit import bench_audit, print_audit
from app.bench.http import LOAD_REQUESTS, bench_http, stage_breakdown
from app.bench.measure import in_turns, make_photos
from app.bench.models import bench_encoders, bench_identify, bench_pipelines
from app.cpus import usable_cpus
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.settings import Settings

__all__ = ["in_turns", "stage_breakdown", "main", "print_table", "run"]


def run(
    *,
    photo_dir: Path,
    repeats: int,
    requests: int,
    clients: int,
    sizes: list[int],
    skip_http: bool = False,
    workers: int = 1,
    load_requests: int = LOAD_REQUESTS,
    audit_only: bool = False,
) -> dict[str, Any]:
    settings = Settings()
    if audit_only:
        photos = make_photos(photo_dir)
        return {"audit": bench_audit(photos["640x480"], requests, clients, load_requests)}
    photos = make_photos(photo_dir)
    pipeline = build_pipeline(settings)
    chips = []
    for name in ("obama.jpg", "biden.jpg", "two_people.jpg", "obama2.jpg"):
        faces = pipeline.find_faces((photo_dir / name).read_bytes(), Timings())
        chips += [f.chip for f in faces if f.chip is not None]
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "settings": {
            "encoder": settings.encoder,
            "onnx_threads": settings.onnx_threads,
            "workers": workers,
            "inference_slots": settings.max_concurrent_inference,
        },
        "encoder": bench_encoders(settings, np.stack(chips), repeats),
        "pipeline_vs_face_recognition_style": bench_pipelines(settings, photos, repeats),
        "identify": bench_identify(sizes, queries=20),
    }
    if not skip_http:
        report["http_verify"] = bench_http(photos, requests, clients, workers, load_requests)
    return report


def print_table(report: dict[str, Any], clients: int = 8) -> None:
    if "audit" in report:
        print_audit(report["audit"], clients)
        return
    print(f"machine: {report['machine']}  settings: {report['settings']}")
    _print_models(report)
    if "http_verify" in report:
        _print_http(report["http_verify"], beside=report["machine"]["usable_cpus"] > 1)
    print("\nidentify (top 5 subjects)  p50 ms   p95 ms   matrix MB   RSS growth MB")
    for size, row in report["identify"].items():
        print(
            f"  {int(size):>9,} faces {row['identify_ms_p50']:8.2f} {row['identify_ms_p95']:8.2f}"
            f" {row['matrix_mb']:11.1f} {row['rss_growth_mb']:15.1f}"
        )


def _print_models(report: dict[str, Any]) -> None:
    enc = report["encoder"]
    print("\nencoder ms/face        median    p95")
    for key in ("dlib_batch1", "onnx_batch1", "dlib_batch16", "onnx_batch16"):
        print(
            f"  {key:20s} {enc[key]['median_ms_per_face']:7.2f} {enc[key]['p95_ms_per_face']:7.2f}"
        )
    print(f"  speed-up: batch 1 {enc['speedup_batch1']}x, batch 16 {enc['speedup_batch16']}x")
    print("\nphoto -> embedding, ours vs face_recognition's way (HOG upsample 1 + dlib encoder)")
    for name, row in report["pipeline_vs_face_recognition_style"].items():
        print(
            f"  {name:8s} probe {row['ours_ms']:7.1f} ms  baseline {row['baseline_ms']:8.1f} ms"
            f"  {row['speedup']}x"
        )
        print(
            f"  {'':8s} enrollment (full search, {row['template_views']}-view template) "
            f"{row['enrollment_ms']} ms (target <= 150 at 640x480); mode=thorough probe "
            f"{row['thorough_probe_ms']} ms (target <= 80)"
        )


def _print_http(http: dict[str, Any], *, beside: bool) -> None:
    print("\n/verify over HTTP        p50     p95     p99   req/s")
    for name, row in http.items():
        if name in ("answers", "first_request") or name.endswith("_stages"):
            continue
        if "sequential" in row:
            seq = row["sequential"]
            print(f"  {name:8s} sequential {seq['p50']:7.1f} {seq['p95']:7.1f} {seq['p99']:7.1f}")
        for key, conc in row.items():
            if key.startswith("concurrent"):
                print(
                    f"  {name:8s} {key:10s} {conc['p50']:7.1f} {conc['p95']:7.1f} "
                    f"{conc['p99']:7.1f} {conc['requests_per_s']:7.1f}  {conc['statuses']}"
                )
    for name in ("640x480", "12MP"):
        row = http.get(f"{name}_stages")
        if row:
            parts = "  ".join(
                f"{k.removesuffix('_ms')} {v:.1f}"
                + (" (beside encode)" if k == "quality_ms" and beside else "")
                for k, v in row.items()
                if k != "client_p50_ms"
            )
            print(f"  {name:8s} stages (p50 ms): {parts}  = {row['client_p50_ms']:.1f}")
    first = http["first_request"]
    print(
        f"  first /compare after start {first['first_compare_ms']} ms, steady "
        f"{first['steady_compare_p50_ms']} ms ({first['ratio']}x; target <= 2x)"
    )
    answers = http["answers"]
    print(f"  answers checked {answers['checked']}, wrong {answers['wrong']} (must be 0)")


def main(
    photo_dir: Path,
    repeats: int,
    requests: int,
    clients: int,
    sizes: list[int],
    json_out: Path | None,
    skip_http: bool,
    *,
    workers: int = 1,
    load_requests: int = LOAD_REQUESTS,
    audit_only: bool = False,
) -> None:
    report = run(
        photo_dir=photo_dir,
        repeats=repeats,
        requests=requests,
        clients=clients,
        sizes=sizes,
        skip_http=skip_http,
        workers=workers,
        load_requests=load_requests,
        audit_only=audit_only,
    )
    print_table(report, clients)
    text = json.dumps(report, indent=2)
    print("\n" + text)
    if json_out:
        json_out.write_text(text + "\n")
