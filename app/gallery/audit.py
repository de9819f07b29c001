"""One audit event: its fields, the draft a request fills in as it runs, and the hash
that chains it to the event before it.

A request's draft lives in a context variable set by the HTTP layer (app/api/audit.py);
the route's thread sees the same object (the context is copied, the object shared). A
write records the draft inside its own transaction (:func:`stage`), so the change and its
event commit together; any other request's draft is written before its answer is sent.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.errors import AuditUnavailable
from app.gallery.models import AuditEvent

# The chain value before the first event.
GENESIS = "0" * 64

# What each audited route is called in the trail, and the status its success answers.
# Routes not listed (health, info, metrics, the web page, docs) touch no biometric data.
ACTIONS: dict[tuple[str, str], tuple[str, int]] = {
    ("POST", "/enroll"): ("enroll", 201),
    ("POST", "/verify"): ("verify", 200),
    ("POST", "/identify"): ("identify", 200),
    ("POST", "/compare"): ("compare", 200),
    ("POST", "/detect"): ("detect", 200),
    ("GET", "/subjects"): ("list_subjects", 200),
    ("GET", "/subjects/{subject_id}"): ("read_subject", 200),
    ("GET", "/subjects/{subject_id}/export"): ("export_subject", 200),
    ("DELETE", "/subjects/{subject_id}"): ("delete_subject", 200),
    ("DELETE", "/subjects/{subject_id}/faces/{face_id}"): ("delete_face", 200),
    ("POST", "/collections"): ("create_collection", 201),
    ("PATCH", "/collections/{collection_id}"): ("update_collection", 200),
    ("DELETE", "/collections/{collection_id}"): ("delete_collection", 200),
    ("POST", "/keys"): ("create_key", 201),
    ("DELETE", "/keys/{key_id}"): ("revoke_key", 200),
    ("GET", "/audit"): ("read_audit", 200),
}
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


def stage(
    session: Session,
    *,
    collection: str | None,
    subjects: list[str],
    detail: dict[str, Any] | None = None,
    draft: AuditDraft | None = None,
) -> AuditDraft | None:
    """Insert the event of a write in the write's own transaction: ``draft`` (a purge's,
    the command line's) or the current request's (none: no trail, nothing written).
    The draft counts as recorded once that transaction commits; if it rolls back, the
    request's event is written with its error answer instead."""
    draft = draft or current_audit.get()
    if draft is None or draft.recorded or not draft.action:
        return None
    draft.collection = collection if collection is not None else draft.collection
    draft.subjects = subjects
    if detail:
        draft.detail = {**(draft.detail or {}), **detail}
    try:
        session.execute(insert(AuditEvent), [draft.row(draft.success_status, None)])
    except DBAPIError as exc:  # the write rolls back with it: 503, nothing stored
        raise AuditUnavailable(
            "The audit trail could not record this change, so nothing was stored. Retry shortly.",
            retry_after=5,
        ) from exc
    session.info.setdefault(_STAGED, []).append(draft)
    return draft


_STAGED = "faceverify_audit_staged"


@event.listens_for(Session, "after_commit")
def _recorded_with_commit(session: Session) -> None:
    for draft in session.info.pop(_STAGED, []):
        draft.recorded = True


@event.listens_for(Session, "after_rollback")
def _dropped_with_rollback(session: Session) -> None:
    session.info.pop(_STAGED, None)


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
