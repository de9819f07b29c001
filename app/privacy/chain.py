"""Checking the audit trail's hash chain (split from trail.py): every link recomputed
from the anchor; an anchor no prune names, an --expect the chain no longer passes, and a
backdated event are refused (issue 37)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.gallery import utc
from app.gallery.models import AuditEvent, AuditHead
from app.privacy.events import link

# An event dated more than this before one chained ahead of it was backdated (issue
# 37). Events are chained in the order they are written, each dated as it is written;
# spooled events wait for a bulk import's lock (minutes), so this leaves an hour.
BACKDATE_SECONDS = 3600
# Rows read at a time.
READ_CHUNK = 5000


@dataclass(frozen=True)
class Verdict:
    """What :meth:`AuditTrail.verify` found."""

    ok: bool
    events: int  # sealed events checked
    first_position: int  # the anchor: positions after it were checked
    last_position: int
    head_chain: str
    unsealed: int
    problem: str | None = None
    event_id: int | None = None
    position: int | None = None
    # Facts that do not fail the check: e.g. an --expect position that was pruned.
    notes: tuple[str, ...] = ()


def verify_chain(engine: Engine, *, expect: tuple[int, str] | None = None) -> Verdict:
    """Recompute the chain from the anchor; the first event where it breaks.
    ``expect``: a (position, chain) pair recorded earlier (a printed head): the
    chain must still pass through it (at the anchor: the anchor's chain value).

    Also refused (issue 37): an anchor that no ``audit_prune`` event in the chain
    names (its position and chain value): removing a prefix and moving the anchor
    by hand is not a prune; and an event dated more than BACKDATE_SECONDS before an
    event chained ahead of it (a row slipped in with an old date)."""
    with Session(engine) as session:
        head = session.get(AuditHead, 1)
        if head is None:
            raise RuntimeError("the audit_head row is missing (run the migrations)")
        unsealed = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.position.is_(None))
        )
        start, chain = head.anchor_position, head.anchor_chain
        expected, checked = start + 1, 0
        notes: list[str] = []
        backing: AuditEvent | None = None
        latest: tuple[datetime, int] | None = None

        def verdict(problem: str | None = None, event: AuditEvent | None = None) -> Verdict:
            return Verdict(
                ok=problem is None,
                events=checked,
                first_position=start,
                last_position=expected - 1,
                head_chain=chain,
                unsealed=int(unsealed or 0),
                problem=problem,
                event_id=event.id if event is not None else None,
                position=event.position if event is not None else None,
                notes=tuple(notes),
            )

        problem = _expected_at_anchor(expect, head, notes)
        if problem is not None:
            return verdict(problem)
        for event in _by_position(session, start):
            assert event.position is not None
            if event.position != expected:
                return verdict(
                    f"events at positions {expected}..{event.position - 1} were removed "
                    f"(the chain resumes at event {event.id})",
                    event,
                )
            recomputed = link(chain, event, expected)
            if recomputed != event.chain:
                return verdict(
                    f"event {event.id} at position {expected} was changed, or moved "
                    "from another position",
                    event,
                )
            if expect is not None and expect[0] == expected and expect[1] != recomputed:
                return verdict(f"the chain no longer passes {expect[0]}:{expect[1]}", event)
            problem, latest = _dated_in_order(event, expected, latest)
            if problem is not None:
                return verdict(problem, event)
            backing = backing or _backs(event, start, head.anchor_chain)
            chain, expected, checked = recomputed, expected + 1, checked + 1
        if head.position != expected - 1 or head.chain != chain:
            return verdict(
                f"events after position {expected - 1} were removed (the head says {head.position})"
            )
        problem = _anchor_backed(start, backing, notes)
        if problem is not None:
            return verdict(problem)
        if expect is not None and expect[0] > expected - 1:
            return verdict(f"the chain ends before position {expect[0]}")
        return verdict()


def _dated_in_order(
    event: AuditEvent, position: int, latest: tuple[datetime, int] | None
) -> tuple[str | None, tuple[datetime, int] | None]:
    """A problem if ``event`` is dated more than BACKDATE_SECONDS before the latest
    event chained ahead of it; the latest (time, position) after it."""
    at = utc(event.at)
    if latest is not None and (latest[0] - at).total_seconds() > BACKDATE_SECONDS:
        return (
            f"event {event.id} at position {position} is dated {at.isoformat()}, before the "
            f"event at position {latest[1]} ({latest[0].isoformat()}) by more than "
            f"{BACKDATE_SECONDS // 60} minutes: it was backdated (or the one at position "
            f"{latest[1]} was dated ahead)",
            latest,
        )
    return None, latest if latest is not None and latest[0] >= at else (at, position)


def _expected_at_anchor(
    expect: tuple[int, str] | None, head: AuditHead, notes: list[str]
) -> str | None:
    """An ``--expect`` at or before the anchor: at it, the anchor's chain value must be
    the one expected; before it, it was pruned (noted: it cannot be compared)."""
    if expect is None or expect[0] > head.anchor_position:
        return None
    if expect[0] == head.anchor_position and expect[1] != head.anchor_chain:
        return (
            f"the chain no longer passes {expect[0]}:{expect[1]} (the anchor at "
            f"{head.anchor_position} says {head.anchor_chain or 'nothing'}): events were "
            "removed and the anchor rewritten"
        )
    if expect[0] < head.anchor_position:
        notes.append(
            f"position {expect[0]} was pruned (the chain is kept from {head.anchor_position}): "
            "it can no longer be compared"
        )
    return None


def _anchor_backed(start: int, backing: AuditEvent | None, notes: list[str]) -> str | None:
    """An anchor past 0 needs the audit_prune event that moved it."""
    if not start:
        return None
    if backing is None:
        return (
            f"the chain starts at position {start}, and no audit_prune event names that "
            f"anchor: events 1..{start} were removed without a prune"
        )
    detail = backing.detail if isinstance(backing.detail, dict) else {}
    notes.append(
        f"events 1..{start} were pruned by event {backing.id} at "
        f"{utc(backing.at).isoformat()} (events before {detail.get('before', '?')})"
    )
    return None


def _backs(event: AuditEvent, position: int, chain: str) -> AuditEvent | None:
    """``event`` if it is the prune that moved the anchor to ``position`` (past 0): an
    audit_prune naming that position and, from 0.5 on, that chain value."""
    detail = event.detail if isinstance(event.detail, dict) else {}
    if not position or event.action != "audit_prune":
        return None
    named = detail.get("through_chain")
    if detail.get("through_position") != position or named not in (None, chain):
        return None
    return event


def _by_position(session: Session, after: int) -> Iterator[AuditEvent]:
    while True:
        chunk = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.position > after)
            .order_by(AuditEvent.position)
            .limit(READ_CHUNK)
        ).all()
        yield from chunk
        if len(chunk) < READ_CHUNK:
            return
        after = int(chunk[-1].position or 0)
        session.expunge_all()
