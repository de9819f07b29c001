"""``faceverify-client enroll DIR``: a folder enrolled over HTTP, for a server whose
database the operator cannot reach (Kubernetes). The layout and the report are
``faceverify enroll DIR``'s: one sub-folder per subject (its name is the id), one face a
photo; refused photos are listed with their codes.

Concurrent (``--concurrency`` subjects at once, each subject's photos in order: the
first creates it, the rest add), resumable (a state file beside the folder records each
photo enrolled, by path and sha256: a re-run skips them), and safe to interrupt: each
enroll's Idempotency-Key is derived from the collection, subject and photo, so a photo
stored just before a crash is answered again, not stored twice.
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
    """The photos enrolled so far (a JSON line each, appended as they are)."""

    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()
        self.done: set[tuple[str, str]] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                self.done.add((entry["photo"], entry["sha256"]))

    def add(self, photo: str, digest: str, subject_id: str) -> None:
        with self.lock, self.path.open("a") as fh:
            fh.write(json.dumps({"photo": photo, "sha256": digest, "subject": subject_id}) + "\n")
            self.done.add((photo, digest))


def enroll_folder(
    fv: Client, folder: Path, *, collection: str | None, concurrency: int, state: State
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
                _enroll_once(fv, subject_id, data, collection, not created, f"fvc-bulk-{key}")
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
    fv: Client, subject_id: str, data: bytes, collection: str | None, first: bool, key: str
) -> None:
    """The same request a fresh run sends (the first photo stored creates the subject,
    the rest add), so a re-run's identical request is answered from the server's idempotency
    record instead of stored again; a subject that existed before gets its first photo
    added (under a key of its own)."""
    if first:
        try:
            fv.enroll(subject_id, data, collection=collection, idempotency_key=key)
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
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    state = State(args.state or args.folder / STATE)
    started = time.perf_counter()
    try:
        with Client(args.url, api_key=args.key) as fv:
            outcomes = enroll_folder(
                fv, args.folder, collection=args.collection,
                concurrency=args.concurrency, state=state,
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
