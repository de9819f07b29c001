"""Where a read's audit event goes when SQLite's write lock is held (issue 27).

A `faceverify gallery import` holds SQLite's write lock for its whole transaction
(minutes for a million faces). Read events must still be committed before their answers,
so when the database is busy the group commit appends them to a spool file beside it
(``audit-spool-<pid>.jsonl``: written and flushed before the answer, fsynced too with
FACEVERIFY_AUDIT_FSYNC, so a kill -9 keeps them) and answers; the sealer's turn moves
spooled events into the database once the lock is free. A process's spool is drained by
that process, or, after it died, by any other.

Draining never holds up an answer (issue 37: one verify waited 30 s on it): the file
is first renamed, in a moment, to ``audit-spool-<drainer pid>-<n>.draining`` (appends go
on into a new file), and the rows are inserted from there without the append lock and
with a short busy timeout; a file still busy is tried again next turn.

A line that is not an event as the group commit writes it (torn by a crash, or carrying
fields it never writes, such as a position or a chain) is set aside, not inserted, in
``audit-spool-rejected.jsonl`` with the reason, logged, and reported by `faceverify audit
verify`; the rest of the file goes in, and sealing goes on (issue 37: one bad line
stopped both).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.errors import DatabaseBusy

log = logging.getLogger("faceverify.audit")

PREFIX = "audit-spool-"
# A spooled event dated later than this ahead of the clock is set aside.
FUTURE = timedelta(minutes=5)
# Each field of a spooled event: the types it may have, and its longest text.
_FIELDS: dict[str, tuple[tuple[type, ...], int]] = {
    "at": ((str,), 64),
    "request_id": ((str,), 64),
    "key_id": ((str, type(None)), 64),
    "collection_id": ((str, type(None)), 64),
    "action": ((str,), 32),
    "subjects": ((str,), 1 << 20),
    "status": ((int,), 0),
    "code": ((str, type(None)), 64),
    "match": ((bool, type(None)), 0),
    "score": ((float, int, type(None)), 0),
    "client": ((str, type(None)), 64),
    "detail": ((dict, type(None)), 0),
}
REJECTED = f"{PREFIX}rejected.jsonl"
DRAINING = ".draining"


@dataclass(frozen=True)
class SpoolStatus:
    """What waits beside the database: events spooled, not yet in it; lines set aside."""

    pending: int
    rejected: int
    rejected_file: Path


class AuditSpool:
    def __init__(self, folder: Path, *, fsync: bool, columns: Collection[str] = ()) -> None:
        """``columns``: the fields an event row has; a spooled line with other fields, or
        without one of them, is set aside."""
        self.folder = folder
        self.fsync = fsync
        self.columns = frozenset(columns)
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
        ``insert`` (one transaction a file; it should give up quickly when the
        database is busy: the file stays and is tried next turn); how many."""
        self._claim()
        moved = 0
        for path in sorted(self.folder.glob(f"{PREFIX}*{DRAINING}")):
            if _owner(path) == os.getpid():
                moved += self._drain_file(path, insert)
        return moved

    def _claim(self) -> None:
        """Rename this process's spool, and those of dead processes, to files this
        process drains (a rename is atomic: two processes never claim one file)."""
        for path in sorted(self.folder.glob(f"{PREFIX}*.jsonl")):
            if path.name == REJECTED:
                continue
            pid = _owner(path)
            if path != self.path and (pid is None or _alive(pid)):
                continue
            target = self.folder / f"{PREFIX}{os.getpid()}-{time.monotonic_ns()}{DRAINING}"
            with self._lock if path == self.path else nullcontext():
                try:
                    path.rename(target)
                except FileNotFoundError:
                    continue
        # .draining files of a drainer that died are this process's to finish.
        for path in sorted(self.folder.glob(f"{PREFIX}*{DRAINING}")):
            pid = _owner(path)
            if pid is not None and pid != os.getpid() and not _alive(pid):
                try:
                    path.rename(
                        self.folder / f"{PREFIX}{os.getpid()}-{time.monotonic_ns()}{DRAINING}"
                    )
                except FileNotFoundError:
                    continue

    def _drain_file(self, path: Path, insert: Callable[[list[dict[str, Any]]], None]) -> int:
        rows, good, bad = [], [], []
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    rows.append(self._restored(raw))
                    good.append(raw if raw.endswith(b"\n") else raw + b"\n")
                except (ValueError, TypeError, KeyError) as exc:
                    bad.append(
                        {
                            "file": path.name,
                            "line": number,
                            "why": str(exc)[:200],
                            "text": raw.decode("utf-8", "replace")[:4096],
                        }
                    )
        if bad:
            self._set_aside(bad)
            # The file keeps its good lines only: set aside once, however often the
            # insert must be tried again.
            kept = path.with_name(path.name + ".tmp")
            kept.write_bytes(b"".join(good))
            kept.replace(path)
        if rows:
            try:
                insert(rows)  # one transaction; busy: the file stays for the next turn
            except DatabaseBusy:
                raise
            except Exception as exc:  # noqa: BLE001 - a row the database refuses
                log.warning("spooled events go in one at a time (%s)", exc)
                rows = self._one_by_one(path, rows, insert)
        path.unlink(missing_ok=True)
        if rows:
            log.info("%d audit events moved from %s into the database", len(rows), path.name)
        return len(rows)

    def _restored(self, raw: bytes) -> dict[str, Any]:
        """A spooled line as the row the group commit wrote: every field, each of the
        type and size it has there (issue 37: a valid JSON line with a dict for its
        subjects failed the insert every turn and held up the file's other events);
        else ValueError, and the line is set aside."""
        row = json.loads(raw)
        if not isinstance(row, dict):
            raise ValueError("not a JSON object")
        if self.columns and set(row) != self.columns:
            extra, missing = sorted(set(row) - self.columns), sorted(self.columns - set(row))
            raise ValueError(f"not an event as spooled (extra {extra}, missing {missing})")
        for name, (kinds, longest) in _FIELDS.items():
            value = row.get(name)
            if type(value) not in kinds:
                raise ValueError(f"{name} is a {type(value).__name__}")
            if isinstance(value, str) and len(value) > longest:
                raise ValueError(f"{name} is longer than {longest}")
        if not 0 <= row["status"] < 1000:
            raise ValueError("status is not an HTTP status (or 0)")
        if row["score"] is not None and not math.isfinite(row["score"]):
            raise ValueError("score is not finite")
        at = datetime.fromisoformat(row["at"])
        if at.tzinfo is None:
            raise ValueError("a time without its offset")
        if at > datetime.now(UTC) + FUTURE:
            raise ValueError("dated in the future")
        return {**row, "at": at}

    def _one_by_one(
        self,
        path: Path,
        rows: list[dict[str, Any]],
        insert: Callable[[list[dict[str, Any]]], None],
    ) -> list[dict[str, Any]]:
        """Each row in a transaction of its own; those the database refuses set aside."""
        taken, bad = [], []
        for number, row in enumerate(rows, 1):
            try:
                insert([row])
                taken.append(row)
            except DatabaseBusy:
                raise
            except Exception as exc:  # noqa: BLE001
                text = json.dumps({**row, "at": row["at"].isoformat()})
                bad.append({"file": path.name, "line": number, "why": str(exc)[:200],
                            "text": text[:4096]})  # fmt: skip
        if bad:
            self._set_aside(bad)
        return taken

    def _set_aside(self, bad: list[dict[str, Any]]) -> None:
        target = self.folder / REJECTED
        with target.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("".join(json.dumps(b) + "\n" for b in bad))
            fh.flush()
            os.fsync(fh.fileno())
        log.error(
            "%d spooled audit lines could not be read as events and were set aside in %s "
            "(first: %s line %d: %s)",
            len(bad),
            target,
            bad[0]["file"],
            bad[0]["line"],
            bad[0]["why"],
        )

    def status(self) -> SpoolStatus:
        return spool_status(self.folder)


def spool_status(folder: Path) -> SpoolStatus:
    """Events spooled beside the database and not in it yet; lines set aside."""
    pending = sum(
        _lines(path)
        for path in folder.glob(f"{PREFIX}*")
        if path.name != REJECTED and path.suffix in (".jsonl", DRAINING)
    )
    return SpoolStatus(pending, _lines(folder / REJECTED), folder / REJECTED)


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


def _owner(path: Path) -> int | None:
    """The pid a spool file's name gives (the spooling or the draining process)."""
    stem = path.name[len(PREFIX) :].split(".")[0].split("-")[0]
    return int(stem) if stem.isdigit() else None


def _portable(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": row["at"].isoformat()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
