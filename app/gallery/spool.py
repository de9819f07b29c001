"""Where a read's audit event goes when SQLite's write lock is held (issue 27).

A `faceverify gallery import` holds SQLite's write lock for its whole transaction
(minutes for a million faces). Read events must still be committed before their answers,
so when the database is busy the group commit appends them to a spool file beside it
(``audit-spool-<pid>.jsonl``: written and flushed before the answer, fsynced too with
FACEVERIFY_AUDIT_FSYNC, so a kill -9 keeps them) and answers; the sealer's turn moves
spooled events into the database once the lock is free. A process's spool is drained by
that process, or, after it died, by any other (a lock on the file settles who).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("faceverify.audit")

PREFIX = "audit-spool-"


class AuditSpool:
    def __init__(self, folder: Path, *, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self.path = folder / f"{PREFIX}{os.getpid()}.jsonl"
        self._lock = threading.Lock()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Keep ``rows`` until the database takes them (raises OSError if it cannot)."""
        lines = "".join(json.dumps(_portable(row)) + "\n" for row in rows)
        with self._lock, self.path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(lines)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def drain(self, insert: Callable[[list[dict[str, Any]]], None]) -> int:
        """Move every spooled event this process may drain into the database with
        ``insert`` (one transaction a file); how many. A file stays when the insert
        fails (still busy) and is tried again next turn."""
        moved = 0
        for path in sorted(self.folder.glob(f"{PREFIX}*.jsonl")):
            pid = path.name[len(PREFIX) : -len(".jsonl")]
            if path != self.path and (not pid.isdigit() or _alive(int(pid))):
                continue
            moved += self._drain_file(path, insert)
        return moved

    def _drain_file(self, path: Path, insert: Callable[[list[dict[str, Any]]], None]) -> int:
        with self._lock:
            try:
                fh = path.open("r+")
            except FileNotFoundError:
                return 0
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return 0  # another process drains it
                rows = [_restored(json.loads(line)) for line in fh if line.strip()]
                if rows:
                    insert(rows)
                fh.truncate(0)
            if path != self.path:
                path.unlink(missing_ok=True)
        if rows:
            log.info("%d audit events moved from %s into the database", len(rows), path.name)
        return len(rows)


def _portable(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": row["at"].isoformat()}


def _restored(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": datetime.fromisoformat(row["at"])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
