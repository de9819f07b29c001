"""Writing, sealing, checking, reading and pruning the audit trail.

Writes. A write's event goes in with the write (:func:`app.privacy.events.entry`). Every
other event is handed to :meth:`AuditTrail.submit`, and the answer waits until it is
committed: one writer thread takes every event waiting and commits them together, so
eight concurrent requests cost about one commit, not eight, and no request holds a lock
while another's event is written.

Sealing. Inserting an event takes no shared lock (each replica on PostgreSQL inserts
rows of its own). A sealer thread, once a second, gives the unsealed events (in id
order) the next positions of a dense sequence and chains them:
``chain[p] = sha256(chain[p-1] || canonical(event p))``. One sealer works at a time:
the ``audit_head`` row is its lock (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so another
replica's sealer skips a turn instead of waiting; SQLite: the write lock).

Checking (app/privacy/chain.py). :meth:`AuditTrail.verify` walks the positions from the
anchor and recomputes every link: a changed field, a missing position or two events
swapped name the first event where the chain breaks; events removed from the end show
against the head row; an anchor no prune names and a backdated event fail too.

Pruning. Events older than the retention are removed as a prefix of the chain, and the
anchor row keeps the position and chain value of the last one removed: the chain is
verified from there, and the prune is itself an event in it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.errors import DatabaseBusy
from app.gallery import Database, Sealing, utc
from app.gallery.models import AuditEvent, AuditHead
from app.gallery.unit import transaction
from app.privacy.chain import Verdict, verify_chain
from app.privacy.events import AuditDraft, AuditEntry, link, now, public
from app.privacy.spool import AuditSpool, SpoolStatus

log = logging.getLogger("faceverify.audit")

# Events one group commit writes at most, and one seal chains at most.
WRITE_BATCH = 512
SEAL_BATCH = 5000
# Seconds between the sealer's turns.
SEAL_INTERVAL = 1.0
# SQLite: how long the group commit waits for another writer's lock before it spools,
# and how long it then spools without asking again.
WRITER_BUSY_SECONDS = 0.2
SPOOL_SECONDS = 1.0
# Seconds before a subject's or collection's creation its trail is read from (lifetime).
LIFETIME_SKEW = 60
# Rows read at a time when verifying and exporting.
READ_CHUNK = 5000

Done = Callable[[BaseException | None], None]
# The columns a new event has (position and chain come with sealing).
_COLUMNS = (
    "at",
    "request_id",
    "key_id",
    "collection_id",
    "action",
    "subjects",
    "status",
    "code",
    "match",
    "score",
    "client",
    "detail",
)
_INSERT = f"INSERT INTO {AuditEvent.__tablename__} ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608


def _driver_value(column: str, value: Any, sqlite: bool) -> Any:
    """A value as the driver takes it, stored as SQLAlchemy would store it: SQLite's
    times as SQLAlchemy's text form (UTC), JSON as text."""
    if column == "detail":
        return None if value is None else json.dumps(value)
    if column == "at" and sqlite:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


_UNSEALED = select(AuditEvent.id).where(AuditEvent.position.is_(None)).limit(1)


class AuditTrail:
    """The audit trail of one database."""

    def __init__(self, database: Database, *, fsync: bool = True) -> None:
        """``fsync=False``: read events are committed without waiting for the disk (SQLite
        synchronous=NORMAL on the writer's own connection, PostgreSQL
        synchronous_commit=off): a commit survives faceverify's crash, and is on disk
        with the next fsync (the sealer's, each second) rather than before the answer."""
        engine = self.engine = database.engine
        self.database = database
        self.fsync = fsync
        self._writer = _writer_engine(database, fsync)
        # SQLite: where read events wait while another writer holds the lock (spool.py).
        path = engine.url.database if database.dialect == "sqlite" else None
        self._spool = (
            AuditSpool(Path(path).resolve().parent, fsync=fsync, columns=_COLUMNS)
            if path and path != ":memory:"
            else None
        )
        # The spool's drain: whole transactions (a file's events go in together or not
        # at all) that give up quickly when SQLite is busy.
        self._drainer = (
            database.engine_for(fsync=fsync, busy_timeout=WRITER_BUSY_SECONDS)
            if self._spool is not None
            else None
        )
        self._busy_until = 0.0
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Done] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # ---- the background threads ------------------------------------------------------
    def start(self) -> None:
        """The group-commit writer and the sealer."""
        for target, name in ((self._write_loop, "audit-writer"), (self._seal_loop, "audit-seal")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Write what is queued, seal, stop."""
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._writer.dispose()
        if self._drainer is not None:
            self._drainer.dispose()

    def submit(self, row: dict[str, Any], done: Done) -> None:
        """Write ``row`` with the next group commit; ``done(None)`` once it is committed,
        ``done(error)`` if it could not be (called on the writer thread)."""
        if not self._threads:
            raise RuntimeError("the audit writer is not running")
        self._queue.put((row, done))

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` now, in one transaction (the command line's events)."""
        with self.engine.begin() as conn:
            conn.execute(insert(AuditEvent), rows)

    def _commit_batch(self, rows: list[dict[str, Any]]) -> None:
        """Into the database; on SQLite, while another writer holds the lock (a bulk
        import), into the spool file instead (spool.py), for a second at a time."""
        if self._spool is None:
            self._write_batch(rows)
            return
        if time.monotonic() >= self._busy_until:
            try:
                self._write_batch(rows)
                return
            except DatabaseBusy:
                self._busy_until = time.monotonic() + SPOOL_SECONDS
        self._spool.append(rows)

    def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        """One multi-row INSERT in autocommit: one statement, one commit and one round
        trip for the whole batch, through the driver (SQLAlchemy's compile of a
        multi-row insert cost 0.45 ms of the 0.63 a read's event took; 0.18 now)."""
        with self._writer.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            mark = "?" if sqlite else "%s"
            one = "(" + ",".join([mark] * len(_COLUMNS)) + ")"
            params: list[Any] = []
            for row in rows:
                params.extend(_driver_value(column, row[column], sqlite) for column in _COLUMNS)
            conn.exec_driver_sql(_INSERT + ",".join([one] * len(rows)), tuple(params))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < WRITE_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            error: BaseException | None = None
            try:
                self._commit_batch([row for row, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter is told, none hangs
                log.error("audit events could not be written: %s", exc)
                error = exc
            for _, done in batch:
                done(error)

    def _drain_spool(self) -> None:
        """Spooled events into the database, giving up at once while it is busy (the
        spool is tried again next turn; sealing goes on either way)."""
        if self._spool is None:
            return
        try:
            self._spool.drain(self._insert_quickly)
        except DatabaseBusy:
            pass
        except Exception as exc:  # noqa: BLE001 - tried again next turn
            log.warning("spooled audit events could not be moved yet: %s", exc)

    def drain_spool(self) -> None:
        """Move what waits in spools this process may drain (its own, and those of
        processes that died) into the database, if it is free now."""
        self._drain_spool()

    def spool_status(self) -> SpoolStatus | None:
        """Events spooled beside the database and lines set aside (SQLite; else None)."""
        return self._spool.status() if self._spool is not None else None

    def _insert_quickly(self, rows: list[dict[str, Any]]) -> None:
        """``rows`` in one transaction, waiting WRITER_BUSY_SECONDS at most for the lock."""
        assert self._drainer is not None  # only with a spool
        with self._drainer.begin() as conn:
            conn.execute(insert(AuditEvent), rows)

    def _seal_loop(self) -> None:
        while not self._stop.wait(SEAL_INTERVAL):
            self._drain_spool()
            try:
                while self.seal() == SEAL_BATCH:
                    pass
            except Exception as exc:  # noqa: BLE001 - sealing is retried next turn
                log.warning("audit events could not be sealed: %s", exc)
        self._drain_spool()
        try:
            self.seal()
        except Exception as exc:  # noqa: BLE001
            log.warning("audit events could not be sealed at shut-down: %s", exc)

    # ---- sealing ---------------------------------------------------------------------
    def _lock_head(self, session: Session) -> AuditHead | None:
        """The head row, locked for this transaction; None when another replica's sealer
        holds it (PostgreSQL)."""
        if session.get_bind().dialect.name == "postgresql":
            return session.scalars(
                select(AuditHead).where(AuditHead.id == 1).with_for_update(skip_locked=True)
            ).first()
        # SQLite: a write takes the database's write lock at once.
        session.execute(update(AuditHead).where(AuditHead.id == 1).values(id=1))
        return session.get(AuditHead, 1)

    def seal(self, limit: int = SEAL_BATCH) -> int:
        """Chain up to ``limit`` unsealed events; how many were sealed."""
        with self.engine.connect() as conn:  # most turns find none: no write, no lock
            if conn.execute(_UNSEALED).first() is None:
                return 0
        with Session(self.engine) as session, session.begin():
            head = self._lock_head(session)
            if head is None:
                return 0
            events = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.position.is_(None))
                .order_by(AuditEvent.id)
                .limit(limit)
            ).all()
            position, chain = head.position, head.chain
            for event in events:
                position += 1
                chain = link(chain, event, position)
                event.position, event.chain = position, chain
            head.position, head.chain = position, chain
            return len(events)

    # ---- checking --------------------------------------------------------------------
    def verify(self, *, expect: tuple[int, str] | None = None) -> Verdict:
        """Recompute the chain from the anchor (app/privacy/chain.py)."""
        return verify_chain(self.engine, expect=expect)

    # ---- reading ---------------------------------------------------------------------
    def query(
        self,
        *,
        collection: str | None = None,
        subject: str | None = None,
        key_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events matching every filter given, oldest first, from id ``after``."""
        stmt = _filtered(select(AuditEvent), collection, subject, key_id, action, since, until)
        stmt = stmt.where(AuditEvent.id > after).order_by(AuditEvent.id).limit(limit)
        with Session(self.engine) as session:
            return [public(e) for e in session.scalars(stmt)]

    def lifetime(
        self, *, collection: str, created_at: datetime, subject: str | None = None
    ) -> tuple[datetime, int]:
        """Where the current lifetime of ``collection`` (or of ``subject`` in it) starts
        in the trail, as a (since, after id) pair for :meth:`query`: an id used again
        after its deletion is another collection or person, so its export and a key
        bound to it see its own events only (issue 37). From LIFETIME_SKEW before its
        creation (replicas' clocks differ), after the last deletion (or purge) event
        of it in that window."""
        since = utc(created_at) - timedelta(seconds=LIFETIME_SKEW)
        ended = AuditEvent.action == "delete_collection"
        if subject is not None:
            ended = ended | (
                AuditEvent.action.in_(("delete_subject", "retention_purge"))
                & AuditEvent.subjects.contains(f"|{subject}|", autoescape=True)
            )
        stmt = select(func.max(AuditEvent.id)).where(
            AuditEvent.collection_id == collection,
            AuditEvent.at >= since,
            AuditEvent.code.is_(None),
            ended,
        )
        with Session(self.engine) as session:
            return since, int(session.scalar(stmt) or 0)

    def export(self, *, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every event (from ``since``), oldest first, read a chunk at a time."""
        after = 0
        while True:
            chunk = self.query(since=since, after=after, limit=READ_CHUNK)
            yield from chunk
            if len(chunk) < READ_CHUNK:
                return
            after = chunk[-1]["id"]

    def count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    # ---- pruning ---------------------------------------------------------------------
    def prune(self, *, before: datetime, draft: AuditDraft | None = None) -> int:
        """Remove the sealed events older than ``before`` (as a prefix of the chain; an
        older event after a newer one waits for it), move the anchor to the last one
        removed, and record the prune as an event. How many were removed."""
        self.seal()
        event = AuditEntry(draft or AuditDraft("audit_prune", request_id="retention"))
        # The gallery's unit of work, unversioned: an event it cannot write is
        # AuditUnavailable, as on every other write.
        with transaction(self.database, Sealing(), None, versioned=False) as tx:
            session = tx.session
            head = self._lock_head(session)
            if head is None:
                return 0
            first_kept = session.scalar(
                select(func.min(AuditEvent.position)).where(
                    AuditEvent.position > head.anchor_position, AuditEvent.at >= before
                )
            )
            through = head.position if first_kept is None else int(first_kept) - 1
            if through <= head.anchor_position:
                return 0
            chain = session.scalar(select(AuditEvent.chain).where(AuditEvent.position == through))
            removed = session.execute(
                delete(AuditEvent).where(AuditEvent.position <= through)
            ).rowcount  # type: ignore[attr-defined]
            head.anchor_position, head.anchor_chain, head.anchor_at = through, chain or "", now()
            # The event that backs the anchor move: verify refuses an anchor no prune
            # names (issue 37).
            event.about(
                collection=None,
                subjects=[],
                detail={
                    "through_position": through,
                    "through_chain": chain or "",
                    "before": utc(before).isoformat(),
                    "events": int(removed),
                },
            )
            event.write(tx.events)
        event.after_commit()
        return int(removed)


def _writer_engine(database: Database, fsync: bool) -> Engine:
    """The group commit's own connections: autocommit (no BEGIN and COMMIT round
    trips), no pre-ping, and without ``fsync`` commits that do not wait for the disk."""
    from sqlalchemy import create_engine

    if database.dialect == "sqlite":
        # A short wait for the lock: past it, events go to the spool (spool.py).
        writer = database.engine_for(fsync=fsync, busy_timeout=WRITER_BUSY_SECONDS)
    else:
        options = {} if fsync else {"options": "-c synchronous_commit=off"}
        writer = create_engine(database.url, connect_args=options)
    return writer.execution_options(isolation_level="AUTOCOMMIT")


def _filtered(
    stmt: Select[Any],
    collection: str | None,
    subject: str | None,
    key_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    if collection is not None:
        stmt = stmt.where(AuditEvent.collection_id == collection)
    if subject is not None:
        stmt = stmt.where(AuditEvent.subjects.contains(f"|{subject}|", autoescape=True))
    if key_id is not None:
        stmt = stmt.where(AuditEvent.key_id == key_id)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at < until)
    return stmt
