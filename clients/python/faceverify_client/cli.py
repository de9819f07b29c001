"""``faceverify-client enroll DIR``: a folder enrolled over HTTP, for a server whose
database the operator cannot reach (Kubernetes). The layout and the report are
``faceverify enroll DIR``'s: one sub-folder per subject (its name is the id), one face a
photo; refused photos are listed with their codes.

Concurrent (``--concurrency`` subjects at once, each subject's photos in order: the
first creates it, the rest add), resumable (a state file beside the folder records each
photo enrolled, by path and sha256, with the server and collection it went to: a re-run
to the same place skips them), and safe to interrupt: each enroll's Idempotency-Key is
derived from the collection, subject and photo, and the server keeps it per collection
(not per API key), so a photo stored just before a crash, or by a run with another key,
is answered again, not stored twice (for 24 h, the record's life).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from faceverify_client import Client, errors

PHOTO_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".gif", ".tif", ".tiff",
    ".ppm", ".pgm",
}  # fmt: skip
STATE = ".faceverify-client-state.jsonl"
# Answers that would be the same for every photo: the run stops with them.
FATAL = (
    errors.ConnectionFailed,
    errors.Unauthorized,
    errors.Forbidden,
    errors.CollectionNotFound,
)


@dataclass(frozen=True)
class Outcome:
    """One photo's outcome: the fields of `faceverify enroll DIR`'s report."""

    path: str
    subject_id: str
    status: str  # enrolled | skipped | refused
    code: str = ""
    detail: str = ""


def subjects_in(folder: Path) -> dict[str, list[Path]]:
    """Sub-folder name -> its photos (regular files, links not followed), sorted."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if stat.S_ISDIR(p.lstat().st_mode)):
        photos = sorted(
            p
            for p in sub.iterdir()
            if p.suffix.lower() in PHOTO_SUFFIXES and stat.S_ISREG(p.lstat().st_mode)
        )
        if photos:
            found[sub.name] = photos
    return found


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.lock = total, 0, threading.Lock()
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.tty or self.done == self.total or self.done % 100 == 0:
                end = "\n" if self.done == self.total else ""
                print(f"\renroll {self.done}/{self.total} photos", end=end, file=sys.stderr)


class State:
    """The photos enrolled so far (a JSON line each, appended as they are), each with the
    server and collection it went to: the same folder sent elsewhere is enrolled there
    too (issue 37: another collection was told "already there" and got nothing).

    A line that is not such an entry (torn by a crash, edited, or written by a version
    that recorded no server) is passed over and counted in ``unreadable``: its photo is
    sent again, and the server's idempotency record answers it if it was stored."""

    def __init__(self, path: Path, *, server: str, collection: str | None) -> None:
        self.path, self.lock = path, threading.Lock()
        self.target = {"server": _server(server), "collection": collection or ""}
        self.done: set[tuple[str, str]] = set()
        self.unreadable = 0
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    photo, digest = str(entry["photo"]), str(entry["sha256"])
                    target = {"server": entry["server"], "collection": entry["collection"]}
                except (ValueError, TypeError, KeyError):
                    self.unreadable += 1
                    continue
                if target == self.target:
                    self.done.add((photo, digest))

    def add(self, photo: str, digest: str, subject_id: str) -> None:
        entry = {"photo": photo, "sha256": digest, "subject": subject_id, **self.target}
        with self.lock, self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
            self.done.add((photo, digest))


def _server(url: str) -> str:
    """A server as the state file names it: scheme, host and port, lower case, no
    trailing slash."""
    return url.strip().rstrip("/").lower()


def enroll_folder(
    fv: Client,
    folder: Path,
    *,
    collection: str | None,
    concurrency: int,
    state: State,
    consent: dict[str, str] | None = None,
) -> list[Outcome]:
    subjects = subjects_in(folder)
    progress = Progress(sum(len(p) for p in subjects.values()))

    def one_subject(item: tuple[str, list[Path]]) -> list[Outcome]:
        subject_id, photos = item
        outcomes = []
        # Until one of its photos is stored, a photo creates the subject (as `faceverify
        # enroll DIR` does: a refused first photo leaves the next one to create it).
        created = False
        for path in photos:
            name = str(path.relative_to(folder))  # in the state file: the folder may move
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if (name, digest) in state.done:
                created = True
                outcomes.append(Outcome(str(path), subject_id, "skipped"))
                progress.step()
                continue
            key = hashlib.sha256(f"{collection}|{subject_id}|{digest}".encode()).hexdigest()
            try:
                _enroll_once(
                    fv, subject_id, data, collection, not created, f"fvc-bulk-{key}", consent
                )
                created = True
                state.add(name, digest, subject_id)
                outcomes.append(Outcome(str(path), subject_id, "enrolled"))
            except errors.FaceVerifyError as exc:
                if isinstance(exc, FATAL):  # the same for every photo: stop at once
                    raise
                outcomes.append(Outcome(str(path), subject_id, "refused", exc.code, exc.detail))
            progress.step()
        return outcomes

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return [o for batch in pool.map(one_subject, subjects.items()) for o in batch]


def _enroll_once(
    fv: Client,
    subject_id: str,
    data: bytes,
    collection: str | None,
    first: bool,
    key: str,
    consent: dict[str, str] | None = None,
) -> None:
    """The same request a fresh run sends (the first photo stored creates the subject,
    the rest add), so a re-run's identical request is answered from the server's idempotency
    record instead of stored again; a subject that existed before gets its first photo
    added (under a key of its own)."""
    if first:
        try:
            fv.enroll(subject_id, data, collection=collection, idempotency_key=key, consent=consent)
            return
        except errors.SubjectExists:
            key += "-add"
    fv.enroll(subject_id, data, collection=collection, add=True, idempotency_key=key)


def write_report(path: Path, outcomes: list[Outcome]) -> None:
    refused = [asdict(o) for o in outcomes if o.status == "refused"]
    with path.open("w", newline="") as fh:
        if path.suffix in (".jsonl", ".ndjson"):
            fh.writelines(json.dumps(row) + "\n" for row in refused)
        else:
            writer = csv.DictWriter(fh, ["path", "subject_id", "status", "code", "detail"])
            writer.writeheader()
            writer.writerows(refused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceverify-client")
    commands = parser.add_subparsers(dest="command", required=True)
    enroll = commands.add_parser("enroll", help="Enroll a folder of photos over HTTP.")
    enroll.add_argument("folder", type=Path, help="One sub-folder per subject.")
    enroll.add_argument("--url", required=True, help="The server, e.g. http://127.0.0.1:8000")
    enroll.add_argument(
        "--key",
        default=os.environ.get("FACEVERIFY_API_KEY"),
        help="An API key with the enroll scope (or FACEVERIFY_API_KEY).",
    )
    enroll.add_argument("--collection", default=None)
    enroll.add_argument("--concurrency", type=int, default=4, help="Subjects at once.")
    enroll.add_argument("--report", type=Path, help="Where to list refused photos (.csv, .jsonl).")
    enroll.add_argument("--state", type=Path, help=f"Resume file (default FOLDER/{STATE}).")
    enroll.add_argument(
        "--consent-reference",
        help="The consent every subject of the folder gave (your document id or version); "
        "a collection that requires consent needs it.",
    )
    enroll.add_argument(
        "--consent-given-at", help="When they gave it (ISO 8601 with its offset; default now)."
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    consent = None
    if args.consent_reference:
        given = args.consent_given_at or datetime.now(UTC).isoformat()
        consent = {"reference": args.consent_reference, "given_at": given}
    elif args.consent_given_at:
        parser.error("--consent-given-at needs --consent-reference")
    state = State(args.state or args.folder / STATE, server=args.url, collection=args.collection)
    if state.unreadable:
        print(
            f"faceverify-client: {state.unreadable} lines of {state.path} are not entries of "
            "this version (torn, edited, or naming no server): their photos are sent again; "
            "the server answers those it stored from its idempotency record",
            file=sys.stderr,
        )
    started = time.perf_counter()
    try:
        with Client(args.url, api_key=args.key) as fv:
            outcomes = enroll_folder(
                fv, args.folder, collection=args.collection,
                concurrency=args.concurrency, state=state, consent=consent,
            )  # fmt: skip
    except errors.FaceVerifyError as exc:
        print(f"faceverify-client: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    if args.report:
        write_report(args.report, outcomes)
    counts = Counter(o.status for o in outcomes)
    codes = Counter(o.code for o in outcomes if o.status == "refused")
    ranked = sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))  # most first, then by name
    by_code = ", ".join(f"{code} {n}" for code, n in ranked)
    print(
        f"{counts['enrolled']} enrolled, {counts['skipped']} already there, "
        f"{counts['refused']} refused{f' ({by_code})' if by_code else ''}"
        f"{f', listed in {args.report}' if args.report else ''}; {len(outcomes)} photos "
        f"in {elapsed:.1f} s ({len(outcomes) / max(elapsed, 1e-9):.1f}/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
