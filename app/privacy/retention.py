"""Retention (issue 27): when a subject is due for deletion, keeping a due subject from
ever matching, and the purge that deletes it.

A subject is due at its ``expires_at`` (given at enrollment), or ``retention_days``
after its last enrollment or successful verify (its collection's schedule), whichever
comes first. From that moment verify answers 404 ``subject_expired`` and identify
leaves it out, even before the purge has run. The purge runs in the service every
``purge_interval_seconds`` (one replica at a time on PostgreSQL) and as ``faceverify
purge``; each deletion is an audit event (``retention_purge``).

Time comes from ``clock`` (tests pass a fake one). The last use is written at most once
an hour per subject and process: a verify costs no write in the common case.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import (
    CollectionNotFound,
    DatabaseBusy,
    InvalidRequest,
    SubjectExpired,
    SubjectNotFound,
)
from app.gallery import CollectionPolicy, Consent, Gallery, SubjectTimes, utc
from app.gallery.cache import VersionedCache
from app.privacy.erasure import Erasure
from app.privacy.events import AuditDraft, entry, note
from app.privacy.rules import due_at, is_due, require_consent, times_of
from app.vectors import SubjectHit

log = logging.getLogger("faceverify.retention")

Clock = Callable[[], datetime]
# How often a subject's last use is written (per process).
TOUCH_EVERY = timedelta(hours=1)
# Subjects one purge round deletes at most (then it goes on).
PURGE_BATCH = 1000
# The widest search identify makes to fill its list when expired subjects were left out.
MAX_WIDER = 400
# The PostgreSQL advisory lock the purging replica holds.
PURGE_LOCK = 0x46565052  # "FVPR"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Retention:
    def __init__(self, gallery: Gallery, erasure: Erasure, clock: Clock = utc_now) -> None:
        """``erasure``: what a purge's deletes are erased with (the command line's has
        no vector backend: the running servers replay the purge from the change log)."""
        self.gallery = gallery
        self.erasure = erasure
        self.clock = clock
        # collection -> its CollectionPolicy
        self._policies = VersionedCache(4096)
        # This process's last use of each subject, and the uses not written yet.
        self._touched: dict[tuple[str, str], datetime] = {}
        self._pending: dict[tuple[str, str], datetime] = {}
        self._touch_lock = threading.Lock()

    def policy(self, collection: str, version: int | None = None) -> CollectionPolicy:
        """The collection's retention days, consent rule, whether any subject has an
        expiry, and its decision rates: read once per gallery version (``version``: one
        just read). A collection that is gone has none (the read that follows says it is
        gone)."""
        version = self.gallery.changes.version() if version is None else version
        cached = self._policies.get(collection, version)
        if cached is None:
            try:
                cached = self.gallery.collections.policy(collection=collection)
            except CollectionNotFound:
                return CollectionPolicy()
            self._policies.put(collection, version, cached)
        return cached

    def check_read(
        self, collection: str, subject_id: str, times: SubjectTimes, version: int
    ) -> None:
        """:meth:`check` for a subject just read at ``version`` (verify's read): no query
        unless it looks due, then one fresh read decides (its cached last use may be
        older than one another process wrote)."""
        days = self.policy(collection, version).retention_days
        due = due_at(self._with_recent_use(collection, subject_id, times), days)
        if due is not None and self.clock() >= due:
            self.check(collection, subject_id)

    def expired(self, collection: str, subject_ids: list[str]) -> dict[str, datetime]:
        """Those of ``subject_ids`` that are due (with when they became due). Free when
        the collection has no schedule and no expiry dates."""
        policy = self.policy(collection)
        days = policy.retention_days
        if days is None and not policy.dated:
            return {}
        now = self.clock()
        times = self.gallery.subjects.times(collection=collection, subject_ids=subject_ids)
        found = {}
        for subject_id, when in times.items():
            due = due_at(self._with_recent_use(collection, subject_id, when), days)
            if due is not None and now >= due:
                found[subject_id] = due
        return found

    def check(self, collection: str, subject_id: str) -> None:
        """SubjectExpired if the subject is due."""
        due = self.expired(collection, [subject_id]).get(subject_id)
        if due is not None:
            raise SubjectExpired.for_subject(subject_id, due)

    def check_probe(self, collection: str, subject_id: str, face_id: str) -> None:
        """A search by a stored face uses its owner's data: the owner is named in the
        event, and refused past its retention as verify refuses it (issue 37)."""
        note(subjects=[subject_id], detail={"face_id": face_id, "probe_subject": subject_id})
        self.check(collection, subject_id)

    def used(self, collection: str, subject_id: str) -> None:
        """A successful verify: restart the subject's retention clock. Written by
        :meth:`flush` (the background thread, every few seconds; at most once per
        TOUCH_EVERY per subject in this process), never in the verify: a bulk import
        holding SQLite's write lock must not stall verifies. Until then this process
        counts it from memory."""
        now = self.clock()
        key = (collection, subject_id)
        with self._touch_lock:
            last = self._touched.get(key)
            if last is not None and now - last < TOUCH_EVERY:
                return
            if len(self._touched) > 100_000:
                self._touched.clear()
            self._touched[key] = now
            self._pending[key] = now

    def flush(self) -> None:
        """Write the last uses not written yet (one that cannot be, now, waits)."""
        with self._touch_lock:
            pending, self._pending = self._pending, {}
        for (collection, subject_id), when in pending.items():
            try:
                with self.gallery.transaction(versioned=False) as tx:
                    tx.subjects.touch(collection, subject_id, when)
            except (DatabaseBusy, SQLAlchemyError):
                with self._touch_lock:
                    self._pending.setdefault((collection, subject_id), when)
                return

    def _with_recent_use(
        self, collection: str, subject_id: str, times: SubjectTimes
    ) -> SubjectTimes:
        """``times`` with this process's last use of the subject, if more recent (it may
        not be written yet)."""
        with self._touch_lock:
            recent = self._touched.get((collection, subject_id))
        if recent is None:
            return times
        stored = times.last_used_at
        if stored is not None and utc(stored) >= recent:
            return times
        return SubjectTimes(times.created_at, recent, times.expires_at)

    def check_enrollment(
        self,
        collection: str,
        subject_id: str,
        add: bool,
        expires_at: datetime | None,
        consent: Consent | None,
    ) -> None:
        """What an enrollment must meet before any photo is read: an expiry in the
        future, consent where the collection requires it (a new subject), and no
        adding to a subject past its retention."""
        if expires_at is not None and expires_at <= self.clock():
            raise InvalidRequest("expires_at must be in the future.")
        if not add:  # a new subject: refused before any photo is read
            require_consent(self.policy(collection), collection, consent, held=False)
        if add:
            self.check(collection, subject_id)

    def unexpired(
        self,
        collection: str,
        hits: list[SubjectHit],
        wider: Callable[[int], list[SubjectHit]],
        k: int,
    ) -> list[SubjectHit]:
        """``hits`` without subjects past their retention (they never match); when some
        were, a wider search (``wider(n)``) fills the list again."""
        expired = self.expired(collection, [h.subject_id for h in hits])
        if not expired:
            return hits
        more = wider(min(4 * k + len(expired), MAX_WIDER))
        gone = self.expired(collection, [h.subject_id for h in more])
        return [h for h in more if h.subject_id not in gone][:k]

    # ---- the purge -------------------------------------------------------------------
    def purge(self, *, now: datetime | None = None, request_id: str = "retention") -> int:
        """Delete every subject due at ``now`` (default: the clock), each in its own
        transaction with its audit event, and tell the search. How many were deleted
        (0 when another replica is purging)."""
        now = now or self.clock()
        self.flush()  # a verify just now keeps its subject
        deleted = 0
        with self._only_replica() as mine:
            if not mine:
                return 0
            while True:
                due = self.due_subjects(now, PURGE_BATCH)
                days = {
                    c: self.gallery.collections.policy(collection=c).retention_days
                    for c in {c for c, _ in due}
                }
                round_deleted = 0
                for collection, subject_id in due:
                    round_deleted += self._purge_one(
                        collection, subject_id, now, request_id, days[collection]
                    )
                deleted += round_deleted
                if len(due) < PURGE_BATCH or not round_deleted:
                    break
        if deleted:
            log.info("retention purge: %d subjects deleted", deleted)
        return deleted

    def _purge_one(
        self, collection: str, subject_id: str, now: datetime, request_id: str, days: int | None
    ) -> int:
        """Delete the subject if it is still due when the transaction looks (a verify may
        have just used it), its purge recorded as an audit event; 0 when it is not."""
        draft = AuditDraft("retention_purge", request_id=request_id, detail={"reason": "retention"})
        event = entry(draft)
        try:
            with self.gallery.transaction(audit=event) as tx:
                subject = tx.subjects.get(collection, subject_id)
                if subject is None or not is_due(times_of(subject), days, now):
                    # Deleted meanwhile, or used again since it was found due.
                    raise SubjectNotFound.for_id(subject_id)
                face_ids = tx.subjects.delete(collection, subject_id)
                event.about(
                    collection=collection,
                    subjects=[subject_id],
                    detail={"faces_deleted": len(face_ids)},
                )
        except SubjectNotFound:
            return 0
        self.erasure.erased(face_ids)
        return 1

    def due_subjects(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(collection, subject) pairs due for deletion at ``now``: past their expiry,
        or unused for longer than their collection's retention days."""
        due = self.gallery.subjects.expired(now=now, limit=limit)
        for collection, days in self.gallery.collections.schedules():
            cutoff = now - timedelta(days=days)
            unused = self.gallery.subjects.unused_since(
                collection=collection, cutoff=cutoff, limit=limit
            )
            due.extend((collection, s) for s in unused)
        return sorted(set(due))[:limit]

    def due(self, *, now: datetime | None = None) -> list[tuple[str, str]]:
        """What a purge at ``now`` would delete (a dry run)."""
        return self.due_subjects(now or self.clock(), 1_000_000)

    @contextmanager
    def _only_replica(self) -> Iterator[bool]:
        """On PostgreSQL, an advisory lock: one replica purges at a time."""
        database = self.gallery.database
        if database.dialect != "postgresql":
            yield True
            return
        with database.engine.connect() as conn:
            got = bool(conn.execute(text(f"SELECT pg_try_advisory_lock({PURGE_LOCK})")).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text(f"SELECT pg_advisory_unlock({PURGE_LOCK})"))
                conn.commit()
