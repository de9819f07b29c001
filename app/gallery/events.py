"""Audit event rows written in a write's own transaction (app/privacy/events.py drafts
them): the change and its event commit together, or neither does."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.gallery.models import AuditEvent


class EventRows:
    def __init__(self, session: Session) -> None:
        self.session = session
        # Set while an event is inserted: a database error then is the trail's
        # (app/gallery/unit.py translates it).
        self.writing = False

    def add(self, row: dict[str, Any]) -> None:
        """An audit_events row (unsealed: the trail's sealer chains it)."""
        self.writing = True
        self.session.execute(insert(AuditEvent), [row])
        self.writing = False
