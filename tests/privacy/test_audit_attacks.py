"""Issue 37's attacks on the audit trail: an anchor moved by hand, a backdated event, a
spool that held answers up while another process held SQLite's lock, and a poisoned
spool line that stopped the drain and the sealing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.errors import AuditUnavailable
from app.privacy.events import AuditDraft
from app.privacy.trail import AuditTrail
from app.service.transfer import import_faces
from tests.fakes import face, fake_image
from tests.privacy.test_audit import run
from tests.privacy.test_audit import trail as trail  # noqa: F401 - the fixture


def _forge_after_wiping(trail: AuditTrail, anchor_chain: str, **detail: object) -> None:
    """Delete every sealed event, move the anchor to the old head, chain one forged
    event (the attack of issue 37, item 2)."""
    head = trail.verify()
    run(trail, "DELETE FROM audit_events")
    run(
        trail,
        f"UPDATE audit_head SET anchor_position = {head.last_position}, "
        f"anchor_chain = '{anchor_chain}', chain = '{anchor_chain}'",
    )
    draft = AuditDraft("audit_prune" if detail else "verify", request_id="forged")
    draft.detail = detail or None
    trail.write([draft.row(0 if detail else 200, None)])
    trail.seal()


def test_an_anchor_moved_by_hand_fails_verify(trail: AuditTrail) -> None:  # noqa: F811
    real = trail.verify()
    pinned = (real.last_position, real.head_chain)
    _forge_after_wiping(trail, "ab" * 32)
    verdict = trail.verify()
    assert not verdict.ok and "no audit_prune event names" in (verdict.problem or "")
    assert not trail.verify(expect=pinned).ok  # --expect at the anchor is compared


def test_a_forged_prune_with_a_made_up_chain_fails_against_the_recorded_head(
    trail: AuditTrail,  # noqa: F811
) -> None:
    real = trail.verify()
    pinned = (real.last_position, real.head_chain)
    made_up = "cd" * 32
    _forge_after_wiping(trail, made_up, through_position=real.last_position, through_chain=made_up)
    assert trail.verify().ok  # internally consistent, as a real prune is ...
    verdict = trail.verify(expect=pinned)  # ... but not through the head kept outside
    assert not verdict.ok and "no longer passes" in (verdict.problem or "")


def test_a_real_prune_verifies_with_the_head_recorded_before_it(
    trail: AuditTrail,  # noqa: F811
) -> None:
    real = trail.verify()
    pinned = (real.last_position, real.head_chain)
    assert trail.prune(before=datetime.now(UTC) + timedelta(seconds=5)) == 6
    trail.seal()
    verdict = trail.verify(expect=pinned)
    assert verdict.ok, verdict.problem
    assert any("were pruned by event" in n for n in verdict.notes)
    early = trail.verify(expect=(2, "ef" * 32))
    assert early.ok and any("position 2 was pruned" in n for n in early.notes)


def test_a_prune_whose_event_cannot_be_written_removes_nothing(
    trail: AuditTrail,  # noqa: F811
) -> None:
    """The prune's event is refused (a trigger stands in for a full disk): the prune is
    AuditUnavailable, like every other write whose event fails, and removes nothing."""
    before = trail.count()
    run(
        trail,
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
        "WHEN NEW.action = 'audit_prune' BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    with pytest.raises(AuditUnavailable):
        trail.prune(before=datetime.now(UTC) + timedelta(seconds=5))
    assert trail.count() == before and trail.verify().ok


def test_a_backdated_event_fails_verify(trail: AuditTrail) -> None:  # noqa: F811
    draft = AuditDraft("delete_subject", request_id="backdated", subjects=["ann"])
    row = draft.row(200, None, at=datetime.now(UTC) - timedelta(days=90))
    trail.write([row])
    trail.seal()
    verdict = trail.verify()
    assert not verdict.ok and "backdated" in (verdict.problem or ""), verdict


def test_a_late_spooled_event_within_the_hour_still_verifies(
    trail: AuditTrail,  # noqa: F811
) -> None:
    late = AuditDraft("verify", request_id="spooled").row(
        200, None, at=datetime.now(UTC) - timedelta(minutes=20)
    )
    trail.write([late])
    trail.seal()
    assert trail.verify().ok


def test_reads_answer_within_a_second_while_another_process_holds_the_lock(
    fake_client: TestClient, tmp_path: Path
) -> None:
    """Item 3: the drain waited 30 s for the lock while holding the spool's lock, and
    every read's append waited on it."""
    ann = fake_image(face(1))
    fake_client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    holder = sqlite3.connect(tmp_path / "faceverify.db", timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    took, answers = [], []
    try:
        until = time.monotonic() + 6  # the sealer tries to drain every second meanwhile
        while time.monotonic() < until:
            started = time.monotonic()
            r = fake_client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
            took.append(time.monotonic() - started)
            assert r.status_code == 200 and r.json()["match"], r.text
            answers.append(r)
    finally:
        holder.rollback()
        holder.close()
    assert max(took) < 1.0, f"slowest {max(took):.2f} s over {len(took)} verifies"
    wanted = {r.headers["x-request-id"] for r in answers}
    trail: AuditTrail = fake_client.app.state.audit  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while not wanted <= {e["request_id"] for e in trail.export()}:
        assert time.monotonic() < deadline, "the spooled events did not reach the database"
        time.sleep(0.2)


def _spooled_line(request_id: str, **extra: object) -> str:
    row = AuditDraft("verify", request_id=request_id, subjects=["ann"]).row(200, None)
    row["at"] = row["at"].isoformat()
    row.update(extra)
    return json.dumps(row) + "\n"


def test_a_poisoned_spool_line_is_set_aside_and_sealing_goes_on(
    fake_client: TestClient, tmp_path: Path
) -> None:
    """Item 4: a dead process's spool with a torn line and one carrying a position."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    spool = tmp_path / f"audit-spool-{pid}.jsonl"
    spool.write_text(
        _spooled_line("good-1")
        + _spooled_line("evil", position=1, chain="00" * 32)
        + _spooled_line("good-2")
        + '{"at": "2026-12-07T04:00:00+00:00", "request_id": "tor'
    )
    for i in range(10):  # events that must be sealed meanwhile
        fake_client.post(
            "/verify", data={"subject_id": f"nobody-{i}"}, files={"image": fake_image(face(1))}
        )
    trail: AuditTrail = fake_client.app.state.audit  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while True:
        ids = {e["request_id"] for e in trail.export()}
        unsealed = [e for e in trail.export() if e["position"] is None]
        if {"good-1", "good-2"} <= ids and not unsealed:
            break
        assert time.monotonic() < deadline, (ids, len(unsealed))
        time.sleep(0.3)
    assert "evil" not in ids and not spool.exists()
    rejected = (tmp_path / "audit-spool-rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 2 and "position" in rejected[0] and "tor" in rejected[1]
    assert trail.verify().ok
    status = trail.spool_status()
    assert status is not None and status.rejected == 2 and status.pending == 0


def test_audit_verify_reports_the_set_aside_lines(tmp_path: Path) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    faceverify = str(Path(sys.executable).with_name("faceverify"))
    subprocess.run([faceverify, "db", "upgrade"], env=env, check=True, capture_output=True)
    # What a process that died left: one event, and a line torn by the crash.
    (tmp_path / "audit-spool-999999.jsonl").write_text(_spooled_line("orphan") + '{"torn')
    done = subprocess.run([faceverify, "audit", "verify"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ok: 1 events chained" in done.stdout  # the dead process's event moved in
    assert "WARNING: 1 spooled lines" in done.stdout and "set aside" in done.stdout


def test_a_spooled_line_of_the_wrong_types_is_set_aside_and_the_rest_goes_in_once(
    fake_client: TestClient, tmp_path: Path
) -> None:
    """Valid JSON with the right field names but a dict for its subjects (or a huge
    status, or a date in the future) failed the insert every turn: the events before it
    went in again each time, those after it never."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    spool = tmp_path / f"audit-spool-{int(dead.stdout)}.jsonl"
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    spool.write_text(
        _spooled_line("good-1")
        + _spooled_line("evil-1", subjects={"x": 1})
        + _spooled_line("evil-2", status=2**70)
        + _spooled_line("evil-3", at=future)
        + _spooled_line("evil-4", score="abc")
        + _spooled_line("good-2")
    )
    trail: AuditTrail = fake_client.app.state.audit  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while spool.exists() or list(tmp_path.glob("audit-spool-*.draining")):
        assert time.monotonic() < deadline, "the spool was not drained"
        time.sleep(0.3)
    time.sleep(1.5)  # a few more sealer turns: nothing goes in twice
    ids = [e["request_id"] for e in trail.export()]
    assert ids.count("good-1") == 1 and ids.count("good-2") == 1, ids
    assert not [i for i in ids if i.startswith("evil")]
    status = trail.spool_status()
    assert status is not None and status.rejected == 4 and status.pending == 0
    assert trail.verify().ok


def test_the_cli_reads_a_subject_id_as_the_api_does(tmp_path: Path) -> None:
    from tests.privacy.test_privacy_attacks import cli

    exported = cli(tmp_path, "subjects", "export", "ｅｘｐ", "-")
    assert exported.returncode == 2  # not there yet
    from app.gallery import Gallery

    store = Gallery.open(f"sqlite:///{tmp_path / 'faceverify.db'}")
    from tests.fakes import unit_vector

    import_faces(store, collection="default", subject_ids=["exp"], embeddings=unit_vector(1)[None],
                       encoder="fake", pipeline_version="x")  # fmt: skip
    store.close()
    exported = cli(tmp_path, "subjects", "export", "ｅｘｐ", "-")
    assert exported.returncode == 0 and '"subject_id": "exp"' in exported.stdout, exported.stderr
    deleted = cli(tmp_path, "subjects", "delete", "ｅｘｐ")
    assert deleted.returncode == 0, deleted.stderr
