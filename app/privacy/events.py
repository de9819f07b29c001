"""One audit event: its fields, the draft a request fills in as it runs, and the hash
that chains it to the event before it.

A request's draft lives in a context variable set by the HTTP layer (app/api/audit.py;
which routes are audited is declared on each route there); the route's thread sees the
same object (the context is copied, the object shared). A write passes its event to its
own transaction (:func:`entry`, a participant of app/gallery/unit.py), so the change and
its event commit together; any other request's draft is written before its answer is
sent.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.gallery.events import EventRows
from app.gallery.models import AuditEvent
from app.gallery.unit import Transaction

# The chain value before the first event.
GENESIS = "0" * 64

# Actions of the service itself and of the command line.
SERVICE_ACTIONS = (
    "retention_purge",
    "audit_prune",
    "import",
    "export",
    "rotate_encryption",
)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AuditDraft:
    """One event being filled in. ``recorded``: a write already stored it with its
    change; nothing is written again."""

    action: str
    request_id: str = "-"
    success_status: int = 200
    key_id: str | None = None
    collection: str | None = None
    subjects: list[str] = field(default_factory=list)
    match: bool | None = None
    score: float | None = None
    client: str | None = None
    detail: dict[str, Any] | None = None
    recorded: bool = False

    def row(self, status: int, code: str | None, at: datetime | None = None) -> dict[str, Any]:
        """The audit_events row of this draft with its outcome."""
        return {
            "at": at or now(),
            "request_id": self.request_id[:64],
            "key_id": self.key_id,
            "collection_id": self.collection,
            "action": self.action,
            "subjects": pack_subjects(self.subjects),
            "status": status,
            "code": code,
            "match": self.match,
            "score": self.score,
            "client": (self.client or None) and self.client[:64],
            "detail": self.detail,
        }


current_audit: ContextVar[AuditDraft | None] = ContextVar("current_audit", default=None)


def note(**fields: Any) -> None:
    """Set fields of the current request's event (no-op when the trail is off)."""
    draft = current_audit.get()
    if draft is None:
        return
    for name, value in fields.items():
        setattr(draft, name, value)


class AuditEntry:
    """The event a write records in its own transaction (a participant of the gallery's
    unit of work): inserted before the commit, counted as recorded once the commit is
    done; if the write rolls back, the request's event is written with its error answer
    instead. Inert when there is no draft (no trail)."""

    def __init__(self, draft: AuditDraft | None) -> None:
        usable = draft is not None and not draft.recorded and draft.action
        self.draft = draft if usable else None

    def about(
        self,
        *,
        collection: str | None,
        subjects: list[str],
        detail: dict[str, Any] | None = None,
    ) -> None:
        """What the write touched (``collection`` None: the draft's own)."""
        draft = self.draft
        if draft is None:
            return
        draft.collection = collection if collection is not None else draft.collection
        draft.subjects = subjects
        if detail:
            draft.detail = {**(draft.detail or {}), **detail}

    def write(self, rows: EventRows) -> None:
        if self.draft is not None:
            rows.add(self.draft.row(self.draft.success_status, None))

    def before_commit(self, tx: Transaction) -> None:
        self.write(tx.events)

    def after_commit(self, tx: Transaction | None = None) -> None:
        if self.draft is not None:
            self.draft.recorded = True


def entry(draft: AuditDraft | None = None) -> AuditEntry:
    """The event of a write: ``draft`` (a purge's, the command line's) or the current
    request's (none: no trail, nothing written)."""
    return AuditEntry(draft or current_audit.get())


def cli_draft(action: str, **fields: Any) -> AuditDraft:
    """The draft of a command-line write, made the current one."""
    draft = AuditDraft(action, request_id="cli", client="cli", **fields)
    current_audit.set(draft)
    return draft


def pack_subjects(subjects: list[str]) -> str:
    return "|" + "|".join(subjects) + "|" if subjects else ""


def unpack_subjects(packed: str) -> list[str]:
    return [s for s in packed.split("|") if s]


def _utc_text(at: datetime) -> str:
    """A time as the chain hashes it: UTC, microseconds (SQLite hands times back naive,
    PostgreSQL aware; both are UTC here)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def public(event: AuditEvent) -> dict[str, Any]:
    """An event as the API and the export show it."""
    return {
        "id": event.id,
        "position": event.position,
        "at": _utc_text(event.at),
        "request_id": event.request_id,
        "key_id": event.key_id,
        "collection": event.collection_id,
        "action": event.action,
        "subjects": unpack_subjects(event.subjects),
        "status": event.status,
        "code": event.code,
        "match": event.match,
        "score": event.score,
        "client": event.client,
        "detail": event.detail,
        "chain": event.chain,
    }


def canonical(event: AuditEvent, position: int) -> bytes:
    """The bytes the chain hashes for ``event`` at ``position``: every field, in a fixed
    order and form, so any change to a stored event changes its hash."""
    fields = public(event)
    fields["position"] = position
    fields["subjects"] = event.subjects
    del fields["chain"]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()


def link(previous: str, event: AuditEvent, position: int) -> str:
    """The chain value after ``event``: sha256(previous value || its canonical bytes)."""
    return hashlib.sha256(bytes.fromhex(previous) + canonical(event, position)).hexdigest()
