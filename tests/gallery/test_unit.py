"""The unit of work (app/gallery/unit.py): the caller's transaction bumps the version
once, writes the change-log entries its repositories collected, lets its participants
commit with it, and translates database errors in one place."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from app.errors import AuditUnavailable, SubjectNotFound
from app.gallery import Gallery, IdempotencyClaim, IdempotencyKeyTaken, Transaction


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    g = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    yield g
    g.close()


class Recorder:
    """A participant that notes when it is called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_commit(self, tx: Transaction) -> None:
        self.calls.append(f"before {tx.version} {[c.kind for c in tx.log.entries]}")

    def after_commit(self, tx: Transaction) -> None:
        self.calls.append("after")


def test_one_version_and_its_changes_per_transaction(gallery: Gallery) -> None:
    with gallery.transaction() as tx:
        tx.collections.create("door")
        tx.subjects.create("door", "ann", name="Ann")
        assert tx.version == 1
    assert gallery.changes.version() == 1
    changes = gallery.changes.changes_since(version=0)
    assert changes is not None and [(c.version, c.kind) for c in changes] == [
        (1, "create_collection")
    ]
    assert gallery.subjects.get(collection="door", subject_id="ann").name == "Ann"


def test_a_failed_transaction_leaves_nothing_and_its_participants_are_not_told(
    gallery: Gallery,
) -> None:
    joined = Recorder()
    with pytest.raises(SubjectNotFound), gallery.transaction(audit=joined) as tx:
        tx.collections.create("door")
        tx.subjects.delete("door", "nobody")
    assert joined.calls == []
    assert gallery.changes.version() == 0
    assert not gallery.collections.exists(collection="door")


def test_participants_commit_with_the_write(gallery: Gallery) -> None:
    joined = Recorder()
    with gallery.transaction(audit=joined) as tx:
        tx.collections.create("door")
    assert joined.calls == ["before 1 ['create_collection']", "after"]


def test_a_versioned_write_must_log_its_change(gallery: Gallery) -> None:
    """Every version has its change: a version without one makes every process reload
    every index (issue 25)."""
    joined = Recorder()
    with (
        pytest.raises(RuntimeError, match="logged no change"),
        gallery.transaction(audit=joined) as tx,
    ):
        tx.subjects.create("default", "ann")
    assert gallery.changes.version() == 0 and joined.calls == []


def test_an_unversioned_write_bumps_nothing(gallery: Gallery) -> None:
    with gallery.transaction(versioned=False) as tx:
        tx.subjects.create("default", "ann")
    with gallery.transaction(versioned=False) as tx:
        tx.subjects.update("default", "ann", name="Ann")
    assert gallery.changes.version() == 0
    assert gallery.subjects.get(collection="default", subject_id="ann").name == "Ann"


def test_an_event_that_cannot_be_written_stores_nothing(gallery: Gallery) -> None:
    class Event(Recorder):
        def before_commit(self, tx: Transaction) -> None:
            tx.events.add({"at": None, "request_id": "r", "action": "x", "status": 200})

    with gallery.database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO gone"))
    with pytest.raises(AuditUnavailable), gallery.transaction(audit=Event()) as tx:
        tx.collections.create("door")
    assert not gallery.collections.exists(collection="door")


def test_a_key_recorded_by_another_request_is_named(gallery: Gallery) -> None:
    claim = IdempotencyClaim("owner", "key-1", "sha")
    with gallery.transaction(versioned=False) as tx:
        tx.subjects.create("default", "ann")
        tx.idempotency.claim(claim)
        tx.idempotency.record("default", "ann", [])
    with pytest.raises(IdempotencyKeyTaken), gallery.transaction(versioned=False) as tx:
        tx.subjects.create("default", "bob")
        tx.idempotency.claim(claim)
    assert gallery.idempotency.find(owner="owner", key="key-1") is not None
    with pytest.raises(SubjectNotFound):
        gallery.subjects.get(collection="default", subject_id="bob")


def test_a_new_subject_stores_its_fields_as_enrollment_always_has(gallery: Gallery) -> None:
    """A subject created without metadata holds JSON null in the column, not SQL NULL, as
    every enrollment since the first release wrote it (backups and raw SQL see it)."""
    with gallery.transaction() as tx:
        tx.subjects.create("default", "ann", name=None, meta=None)
        tx.log.add("enroll", "default", "ann")
    with gallery.database.engine.connect() as conn:
        stored = conn.execute(text("SELECT metadata IS NULL FROM subjects")).scalar_one()
    assert not stored
    with pytest.raises(TypeError):
        with gallery.transaction() as tx:
            tx.subjects.create("default", "bob", colour="red")
