"""``faceverify bench --audit``: what the audit trail costs (issue 27), measured side by
side: two servers at once, one with FACEVERIFY_AUDIT_TRAIL=false and one with it on,
requests alternated between them so a slow second of this machine falls on both.

Sequential /verify (one to each, in turns), then ``clients`` concurrent clients in
alternating runs. Every answer is checked (the same photo, the same distance), and the
audited server's trail must hold one event for every request it answered, with the
match it answered, and verify as a chain.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.bench.http import (
    BENCH_KEY,
    AnswerCheck,
    free_port,
    multipart,
    post_answer,
    wait_ready,
)

# Concurrent runs per server (alternated), and requests per run.
RUNS = 3


@dataclass
class Config:
    """One side of the comparison: its servers (replicas on one database) and where
    its trail is."""

    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    database_url: str


def bench_audit(
    photo: bytes,
    requests: int,
    clients: int,
    load_requests: int,
    *,
    database_urls: tuple[str, str] | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Trail off against trail on. ``database_urls``: the (off, on) databases (default:
    a SQLite file each); ``replicas``: servers on each, the clients spread over them."""
    with tempfile.TemporaryDirectory() as root:
        sides: dict[str, Config] = {}
        try:
            for i, (name, on) in enumerate((("off", "false"), ("on", "true"))):
                folder = Path(root) / name
                folder.mkdir()
                url = database_urls[i] if database_urls else f"sqlite:///{folder / 'faceverify.db'}"
                sides[name] = Config([], [], url)
                for _ in range(replicas):
                    port = free_port()
                    env = {
                        **os.environ,
                        "FACEVERIFY_DATA_DIR": str(folder),
                        "FACEVERIFY_DATABASE_URL": url,
                        "FACEVERIFY_PORT": str(port),
                        "FACEVERIFY_API_KEYS": f"{BENCH_KEY}:admin",
                        "FACEVERIFY_AUDIT_TRAIL": on,
                    }
                    sides[name].ports.append(port)
                    sides[name].procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "app.cli", "serve"],
                            env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                    wait_ready(port, sides[name].procs[-1])  # one at a time: migrations
            report = _measure(sides, photo, requests, clients, load_requests)
            report["replicas"] = replicas
            report["database"] = sides["on"].database_url.split(":", 1)[0]
            return report
        finally:
            for side in sides.values():
                for proc in side.procs:
                    proc.terminate()
                    proc.wait(timeout=60)


def _measure(
    sides: dict[str, Config],
    photo: bytes,
    requests: int,
    clients: int,
    load_requests: int,
) -> dict[str, Any]:
    body, ctype = multipart({"subject_id": "bench"}, {"image": photo})
    check = AnswerCheck()
    answered: dict[str, list[tuple[str, bool]]] = {name: [] for name in sides}
    conns = {
        name: http.client.HTTPConnection("127.0.0.1", side.ports[0], timeout=120)
        for name, side in sides.items()
    }
    for name, conn in conns.items():
        status, _ = post_answer(conn, "/enroll", body, ctype)
        if status != 201:
            raise RuntimeError(f"enrolling on the audit-{name} server failed: {status}")
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(requests + 5):
        for name, conn in conns.items():
            start = time.perf_counter()
            status, answer, rid = _verify(conn, body, ctype)
            elapsed = (time.perf_counter() - start) * 1000
            check(body, status, answer)
            answered[name].append((rid, bool(answer.get("match"))))
            if i >= 5:  # warm-up
                times[name].append(elapsed)
    for conn in conns.values():
        conn.close()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(RUNS):
        for name, side in sides.items():
            done, wall = _load(
                side.ports, body, ctype, clients, load_requests, check, answered[name]
            )
            rates[name].append(done / wall)
    report: dict[str, Any] = {}
    for name in sides:
        ordered = sorted(times[name])
        report[f"audit_{name}"] = {
            "verify_ms_p50": round(statistics.median(ordered), 2),
            "verify_ms_p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            f"concurrent_{clients}_rps": round(statistics.median(rates[name]), 1),
            "runs_rps": [round(r, 1) for r in rates[name]],
        }
    off, on = report["audit_off"], report["audit_on"]
    report["p50_added_ms"] = round(on["verify_ms_p50"] - off["verify_ms_p50"], 2)
    key = f"concurrent_{clients}_rps"
    report["throughput_change_pct"] = round(100 * (on[key] / off[key] - 1), 1)
    report["answers"] = {"checked": check.checked, "wrong": check.wrong}
    report["trail"] = _trail_check(sides["on"].database_url, answered["on"])
    return report


def _verify(
    conn: http.client.HTTPConnection, body: bytes, ctype: str
) -> tuple[int, dict[str, Any], str]:
    conn.request(
        "POST", "/verify", body=body, headers={"Content-Type": ctype, "X-API-Key": BENCH_KEY}
    )
    response = conn.getresponse()
    import json

    raw = response.read()
    return response.status, json.loads(raw) if raw else {}, response.getheader("x-request-id", "")


def _load(
    ports: list[int],
    body: bytes,
    ctype: str,
    clients: int,
    total: int,
    check: AnswerCheck,
    answered: list[tuple[str, bool]],
) -> tuple[int, float]:
    lock = threading.Lock()
    done = [0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ports[k % len(ports)], timeout=120)
        for _ in range(max(1, total // clients)):
            status, answer, rid = _verify(conn, body, ctype)
            check(body, status, answer)
            if status == 200:
                with lock:
                    done[0] += 1
                    answered.append((rid, bool(answer.get("match"))))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], time.perf_counter() - start


def _trail_check(database_url: str, answered: list[tuple[str, bool]]) -> dict[str, Any]:
    """The audited server's trail against what it answered: N answers, N events with
    the same match, a valid chain."""
    from app.gallery import Database
    from app.privacy.trail import AuditTrail

    store = Database(database_url)
    try:
        trail = AuditTrail(store)
        deadline = time.monotonic() + 10  # the server's sealer: once a second
        while trail.verify().unsealed and time.monotonic() < deadline:
            time.sleep(0.5)
        events = {e["request_id"]: e for e in trail.export() if e["action"] == "verify"}
        missing = [rid for rid, _ in answered if rid not in events]
        differ = [rid for rid, m in answered if rid in events and events[rid]["match"] is not m]
        verdict = trail.verify()
        return {
            "requests": len(answered),
            "events": len(events),
            "missing": len(missing),
            "outcome_differs": len(differ),
            "chain_valid": verdict.ok,
            "sealed": verdict.events,
        }
    finally:
        store.close()


def print_audit(report: dict[str, Any], clients: int) -> None:
    key = f"concurrent_{clients}_rps"
    print("\naudit trail, side by side     verify p50 ms  p95 ms   " + f"{clients} clients req/s")
    for name in ("off", "on"):
        row = report[f"audit_{name}"]
        print(
            f"  {name:3s} {row['verify_ms_p50']:22.2f} {row['verify_ms_p95']:7.2f} {row[key]:14.1f}"
        )
    trail = report["trail"]
    print(
        f"  p50 {report['p50_added_ms']:+.2f} ms,"
        f" throughput {report['throughput_change_pct']:+.1f}%;"
        f" {trail['requests']} answers, {trail['events']} events, {trail['missing']} missing,"
        f" chain {'valid' if trail['chain_valid'] else 'BROKEN'};"
        f" answers checked {report['answers']['checked']}, wrong {report['answers']['wrong']}"
    )
