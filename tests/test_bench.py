"""`faceverify bench`'s stage breakdown of a sequential /verify (app/bench/)."""

from __future__ import annotations

import pytest

from app import bench
from app.bench import http as bench_http

TIMING = {
    "decode_ms": 2.0,
    "detect_ms": 3.0,
    "align_ms": 1.5,
    "encode_ms": 4.5,
    "search_ms": 0.5,
    "quality_ms": 1.0,
    "total_ms": 13.0,
}


@pytest.mark.parametrize(("cpus", "other"), [(2, 1.5), (1, 0.5)])
def test_the_quality_score_beside_the_encoder_is_not_counted_twice(
    monkeypatch: pytest.MonkeyPatch, cpus: int, other: float
) -> None:
    monkeypatch.setattr(bench_http, "usable_cpus", lambda: cpus)
    row = bench.stage_breakdown([TIMING] * 3, [16.0, 16.0, 16.0])
    # On 2 cores encode and quality overlap: 13 - (2 + 3 + 1.5 + max(4.5, 1) + 0.5).
    assert row["other_ms"] == other
    assert row["http_ms"] == 3.0 and row["client_p50_ms"] == 16.0


def test_ours_and_the_baseline_are_timed_in_turns() -> None:
    calls: list[str] = []
    samples = bench.in_turns(
        {"ours": (lambda: calls.append("o"), 6), "baseline": (lambda: calls.append("b"), 2)},
        warmup=1,
    )
    assert {name: len(v) for name, v in samples.items()} == {"ours": 6, "baseline": 2}
    # One warm-up each, then the baseline's two runs spread among ours, not after them.
    assert "".join(calls) == "ob" + "ooob" * 2
