"""The audit trail under load, with the real server and models (issue 27): N concurrent
requests leave N events whose outcomes match the answers, the chain is valid (also
with two replicas on one PostgreSQL), and a kill -9 loses no event of an answered
request."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from app.gallery import Gallery
from app.privacy.trail import AuditTrail
from tests.helpers import AUTH, TEST_KEY, data
from tests.server import FACEVERIFY, free_port, serving, wait_ready

pytestmark = pytest.mark.model

PROBES = {"obama2.jpg": True, "biden.jpg": False}


def verify(http: httpx2.Client, url: str, photo: str) -> tuple[str, int, bool | None]:
    r = http.post(
        url + "/verify", data={"subject_id": "obama"}, files={"image": data(photo)}, timeout=60
    )
    return r.headers["x-request-id"], r.status_code, r.json().get("match")


def checked(url: str, answered: list[tuple[str, bool | None]]) -> AuditTrail:
    """The trail after the servers stopped: every answered request id has its event,
    with the match it answered; sealed, the chain verifies."""
    store = Gallery.open(url)
    try:
        trail = AuditTrail(store.database)
        events = {e["request_id"]: e for e in trail.export()}
        for rid, match in answered:
            assert rid in events, f"answered request {rid} has no event"
            assert events[rid]["match"] is match
        trail.seal()
        verdict = trail.verify()
        assert verdict.ok and verdict.unsealed == 0
        assert verdict.events == len(events)
        return trail
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_every_concurrent_answer_has_its_event_and_the_chain_holds(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path)}
    db_url = f"sqlite:///{tmp_path / 'faceverify.db'}"
    if database == "postgres":
        db_url = env["FACEVERIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    photos = list(PROBES) * 60  # 120 requests
    with serving(env) as a, serving(env) as b, httpx2.Client(headers=AUTH) as http:
        r = http.post(
            a + "/enroll", data={"subject_id": "obama"}, files={"image": data("obama.jpg")}
        )
        assert r.status_code == 201, r.text
        with ThreadPoolExecutor(8) as pool:  # two replicas, four clients each
            answers = list(
                pool.map(lambda i: (photos[i], verify(http, (a, b)[i % 2], photos[i])), range(120))
            )
    wrong = [(p, s, m) for p, (_, s, m) in answers if s != 200 or m is not PROBES[p]]
    assert wrong == []
    checked(db_url, [(rid, match) for _, (rid, _, match) in answers])
    store = Gallery.open(db_url)
    try:
        verifies = AuditTrail(store.database).query(action="verify", limit=1000)
        assert len(verifies) == len(answers) == 120  # N requests, N events
    finally:
        store.close()


@pytest.mark.slow
def test_a_kill_9_under_load_loses_no_event_of_an_answered_request(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FACEVERIFY, "serve", "--port", str(port)],
            env={
                **os.environ,
                "FACEVERIFY_DATA_DIR": str(tmp_path),
                "FACEVERIFY_API_KEYS": f"{TEST_KEY}:admin",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    answered: list[tuple[str, bool | None]] = []
    stop = threading.Event()
    try:
        wait_ready(url, proc, log)
        with httpx2.Client(headers=AUTH) as http:
            r = http.post(
                url + "/enroll", data={"subject_id": "obama"}, files={"image": data("obama.jpg")}
            )
            assert r.status_code == 201

            def client() -> None:
                with httpx2.Client(headers=AUTH) as mine:
                    while not stop.is_set():
                        try:
                            rid, status, _ = verify(mine, url, "obama2.jpg")
                        except (httpx2.TransportError, ValueError):
                            continue
                        if status == 200:
                            answered.append((rid, True))

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            for t in threads:
                t.join(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(answered) > 20, "too little load to mean anything"
    checked(f"sqlite:///{tmp_path / 'faceverify.db'}", answered)
