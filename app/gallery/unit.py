"""The unit of work: the caller opens one transaction and writes through its
repositories (``with gallery.transaction() as tx: tx.subjects...; tx.faces.add(...)``).

The transaction itself bumps the gallery version as its first statement (writers queue
there, so versions are handed out in commit order) and writes the change-log entries its
repositories collected when it commits. Anything else that must commit with the write
joins it explicitly as a :class:`Participant`: the audit event (passed in by the
caller), the vector backend's write side (:class:`Mirror`; it may write rows of its own
in the transaction, or apply the change to memory once it has committed). Database
errors are translated in one place (:func:`_translated`): an audit event that cannot be
written, a duplicate Idempotency-Key; a busy database is the engine's hook
(database.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.errors import AuditUnavailable
from app.gallery.changes import ChangeRows, bump_version
from app.gallery.collections import CollectionRows
from app.gallery.crypto import Sealing
from app.gallery.database import Database
from app.gallery.events import EventRows
from app.gallery.faces import FaceRows
from app.gallery.idempotency import IdempotencyRows
from app.gallery.records import Added, IdempotencyKeyTaken
from app.gallery.subjects import SubjectRows
from app.gallery.users import UserRows


class Participant(Protocol):
    """Something that commits with a transaction."""

    def before_commit(self, tx: Transaction) -> None:
        """Its own rows, in the transaction (an error rolls the whole write back)."""
        ...

    def after_commit(self, tx: Transaction) -> None:
        """The transaction committed."""
        ...


class Mirror(Participant, Protocol):
    """A vector backend's write side: told of every face stored, inside the
    transaction (it may write rows of its own there), and of the commit."""

    def stored(self, tx: Transaction, added: Added) -> None: ...


class Transaction:
    """One write: its session, the version it writes, and the repositories."""

    def __init__(self, session: Session, version: int, sealing: Sealing, mirror: Mirror | None):
        self.session = session
        self.version = version
        self.sealing = sealing
        self.log = ChangeRows(session, version)
        self.collections: CollectionRows = CollectionRows(self)
        self.subjects: SubjectRows = SubjectRows(self)
        self.faces: FaceRows = FaceRows(self)
        self.idempotency: IdempotencyRows = IdempotencyRows(self)
        self.users: UserRows = UserRows(self)
        self.events: EventRows = EventRows(session)
        self.added: list[Added] = []
        self._mirror = mirror
        self._participants: list[Participant] = [mirror] if mirror is not None else []

    @property
    def connection(self) -> Connection:
        return self.session.connection()

    @property
    def dialect(self) -> str:
        return str(self.session.get_bind().dialect.name)

    def join(self, participant: Participant | None) -> None:
        """``participant`` commits with this transaction (None: nothing joins)."""
        if participant is not None:
            self._participants.append(participant)

    def stored(self, added: Added) -> None:
        """The faces repository stored ``added``: the mirror keeps them in step."""
        self.added.append(added)
        if self._mirror is not None:
            self._mirror.stored(self, added)

    def finish(self) -> None:
        if self.version and not self.log.entries:
            # Every version has its change: a version without one makes every process
            # reload every index (issue 25). A write no index holds is unversioned.
            raise RuntimeError("a versioned write logged no change (use versioned=False)")
        self.log.write()
        for participant in self._participants:
            participant.before_commit(self)

    def committed(self) -> None:
        for participant in self._participants:
            participant.after_commit(self)


# ``lock_timeout`` default: the database's busy timeout.
BUSY = -1.0


@contextmanager
def transaction(
    database: Database,
    sealing: Sealing,
    mirror: Mirror | None,
    *,
    audit: Participant | None = None,
    lock_timeout: float | None = BUSY,
    versioned: bool = True,
) -> Iterator[Transaction]:
    """One write, all or nothing (see the module's docstring). ``lock_timeout``: how
    long a PostgreSQL writer waits for another's (None: as long as it takes);
    ``versioned=False``: a write no index holds (a subject's last use): no version, no
    change log, no mirror."""
    wait = database.busy_timeout if lock_timeout == BUSY else lock_timeout
    tx: Transaction | None = None
    with Session(database.engine) as session:
        try:
            with session.begin():
                version = bump_version(session, wait) if versioned else 0
                tx = Transaction(session, version, sealing, mirror if versioned else None)
                tx.join(audit)
                yield tx
                tx.finish()
        except DBAPIError as exc:
            translated = _translated(exc, tx)
            if translated is None:
                raise
            raise translated from exc
    assert tx is not None
    tx.committed()


def _translated(error: DBAPIError, tx: Transaction | None) -> Exception | None:
    """A database error as the domain names it: the one place writes translate them (a
    busy database is the engine's hook, app/gallery/database.py)."""
    if tx is not None and tx.events.writing:
        # The write rolls back with its event: 503, nothing stored.
        return AuditUnavailable(
            "The audit trail could not record this change, so nothing was stored. Retry shortly.",
            retry_after=5,
        )
    claim = tx.idempotency.claimed if tx is not None else None
    if isinstance(error, IntegrityError) and claim is not None:
        # Another request recorded this Idempotency-Key first; ours rolled back.
        return IdempotencyKeyTaken(claim.key)
    return None
