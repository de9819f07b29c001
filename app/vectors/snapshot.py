"""Index files shared by the worker processes of one machine (issue 12).

Without them every worker process reads the whole gallery from the database and builds
its own index: N copies of ~700 B a face, and N builds. With a snapshot folder, the
first process to load saves its index there (app/vectors/ann.py :meth:`AnnIndex.save`)
and every process, itself included, opens those files memory-mapped: the rows and IVF
lists are then one copy in the page cache, however many workers read them, and a
restart opens them in about a second instead of rebuilding.

A snapshot records the database it came from (``gallery_state.instance``), the gallery
version it reflects, the encoders and dimension. A process that opens one replays the
store's change log since that version, as it would after any reload; a snapshot the log
no longer reaches back to is not used (a new one is built and the old ones removed).
Builds are serialised by a file lock, so workers started together build once.

A snapshot must also prove it belongs to this database's history (issue 25): a backup
restored under a newer snapshot has the same instance id, and identify then served a
subject GET and DELETE could not see. Each snapshot gets a random token, and its
manifest (snapshot.json) lists every file's size and the sha256 of each 64 MB piece of
it (checked on every core at once); the database registers the token
with the version and the manifest's sha256 when the snapshot is saved
(``index_snapshots``). A snapshot the database does not hold so, or whose files do not
match their sums (a file rewritten in place at the same size made identify name the
wrong people), is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import mmap
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, overload

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.cpus import usable_cpus
from app.vectors.ann import AnnIndex
from app.vectors.index import VectorIndex

log = logging.getLogger("faceverify.gallery")

# 3: each file's size and the sha256 of each piece. 2 (one sha256 a file) is still read.
FORMAT = 3
READ_FORMATS = (2, 3)
HASH_CHUNK = 1 << 20
# The manifest lists a sha256 for each piece of this size of each file, so a start
# checks a large file on every core (an empty file has no piece).
PIECE_BYTES = 64 << 20


class SnapshotMismatch(ValueError):
    """A snapshot that is not this database's, or whose files changed since saved."""


@dataclass(frozen=True)
class Snapshot:
    folder: Path
    version: int
    token: str = ""
    digest: str = ""  # sha256 of snapshot.json
    # snapshot.json as read when the digest was taken: what open() trusts, not the file
    # again (which could be swapped between the database's check and the open).
    manifest: bytes = field(default=b"", repr=False, compare=False)


class Held:
    """The snapshots' lock, held until :meth:`release` (once)."""

    def __init__(self, fh: IO[str]) -> None:
        self._fh: IO[str] | None = fh

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()


class SnapshotDir:
    """Snapshots of one database's indexes under ``root``.

    Args:
        root: the folder (made if missing).
        min_faces: galleries smaller than this are not saved (they load in under a
            second from the database anyway).
        exact_below, nprobe: passed to the opened :class:`AnnIndex` objects.
    """

    def __init__(
        self,
        root: Path,
        *,
        min_faces: int,
        exact_below: int,
        nprobe: int | None = None,
    ) -> None:
        self.root = root
        self.min_faces = min_faces
        self.exact_below = exact_below
        self.nprobe = nprobe

    def _key(self, instance: str, encoders: Collection[str], dim: int) -> Path:
        tag = hashlib.sha256(json.dumps([sorted(encoders), dim]).encode()).hexdigest()[:12]
        return self.root / f"{instance}-{tag}"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held while a process finds, builds or removes snapshots."""
        held = self.hold()
        try:
            yield
        finally:
            held.release()

    @overload
    def hold(self) -> Held: ...

    @overload
    def hold(self, *, wait: bool) -> Held | None: ...

    def hold(self, *, wait: bool = True) -> Held | None:
        """:meth:`locked` as an object, for a lock handed on to the thread that saves a
        snapshot in the background (and releases it then). ``wait=False``: None when
        another holds it. Whoever takes it first erases what a save that a crash cut
        short left (its files hold embeddings no erasure looks for)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - closed by Held.release
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        except BaseException:
            fh.close()
            raise
        held = Held(fh)
        try:  # no save can be under way now: one left unfinished by a crash goes
            _wipe_unfinished(self.root)
        except BaseException:
            held.release()
            raise
        return held

    def discard(self, snapshot: Snapshot) -> None:
        """A snapshot overwritten with zeros and removed: it may hold a face deleted while
        it was written (the deletion's erasure had nothing to find yet: issue 27)."""
        _wipe(snapshot.folder)
        shutil.rmtree(snapshot.folder, ignore_errors=True)

    def latest(self, instance: str, encoders: Collection[str], dim: int) -> Snapshot | None:
        base = self._key(instance, encoders, dim)
        if not base.is_dir():
            return None
        found = []
        for folder in base.iterdir():
            meta = folder / "snapshot.json"
            if folder.name.startswith("v") and meta.is_file():
                raw = meta.read_bytes()
                data = json.loads(raw)
                if data.get("format") in READ_FORMATS:
                    found.append(
                        Snapshot(
                            folder,
                            int(data["version"]),
                            str(data.get("token", "")),
                            hashlib.sha256(raw).hexdigest(),
                            raw,
                        )
                    )
        return max(found, key=lambda s: s.version, default=None)

    def open(self, snapshot: Snapshot) -> dict[str, VectorIndex]:
        """The snapshot's indexes, once every file matches its sha256 in the manifest
        (else SnapshotMismatch)."""
        raw = snapshot.manifest or (snapshot.folder / "snapshot.json").read_bytes()
        if snapshot.digest and hashlib.sha256(raw).hexdigest() != snapshot.digest:
            raise SnapshotMismatch("snapshot.json changed since it was checked")
        # FAISS (~0.2 s to import, for AnnIndex.open) loads while the files hash: a
        # restart's identify waits for both (issue 41).
        if "faiss" not in sys.modules:
            threading.Thread(target=importlib.import_module, args=("faiss",), daemon=True).start()
        try:
            meta = json.loads(raw)
            changed = _changed_file(snapshot.folder, meta["files"])
            collections = [str(c) for c in meta["collections"]]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SnapshotMismatch(f"snapshot.json is not a manifest ({exc!r})") from exc
        if changed is not None:
            raise SnapshotMismatch(f"{changed} changed since the snapshot was saved")
        kwargs = {"exact_below": self.exact_below}
        if self.nprobe is not None:
            kwargs["nprobe"] = self.nprobe
        return {
            collection: AnnIndex.open(snapshot.folder / f"c{i}", **kwargs)
            for i, collection in enumerate(collections)
        }

    def save(
        self,
        indexes: dict[str, VectorIndex],
        *,
        instance: str,
        encoders: Collection[str],
        dim: int,
        version: int,
        register: Callable[[Snapshot], None] = lambda snapshot: None,
    ) -> Snapshot | None:
        """Write ``indexes`` (AnnIndex objects only; otherwise nothing is saved) as the
        snapshot of ``version``, ``register`` it with the database, then remove older
        ones. Written under a temporary name and renamed, so a reader never sees half a
        snapshot."""
        if not all(isinstance(i, AnnIndex) for i in indexes.values()):
            return None
        for index in indexes.values():
            assert isinstance(index, AnnIndex)
            index.wait_trained()  # the IVF lists are saved too, shared by every process
        if sum(len(i) for i in indexes.values()) < self.min_faces:
            return None
        base = self._key(instance, encoders, dim)
        base.mkdir(parents=True, exist_ok=True)
        temporary = base / f"tmp-{os.getpid()}-{time.monotonic_ns()}"
        final = base / f"v{version}"
        try:
            temporary.mkdir()
            token = str(uuid.uuid4())
            manifest = _write_collections(
                temporary, indexes, version, instance, token, encoders, dim
            )
            (temporary / "snapshot.json").write_bytes(manifest)
            digest = hashlib.sha256(manifest).hexdigest()
            register(Snapshot(final, version, token, digest, manifest))
            if final.exists():
                shutil.rmtree(final)
            temporary.rename(final)
        except (OSError, SQLAlchemyError) as exc:
            shutil.rmtree(temporary, ignore_errors=True)
            log.warning("could not save the index snapshot in %s (%s)", base, exc)
            return None
        # Older snapshots: processes that opened them keep their mappings (the files
        # live on until unmapped); new processes open the new one.
        for other in base.iterdir():
            if other != final and other.name != ".lock":
                shutil.rmtree(other, ignore_errors=True)
        return Snapshot(final, version, token, digest, manifest)


def erase_rows(root: Path, face_ids: Collection[str] = (), *, collection: str | None = None) -> int:
    """Deleted faces (``face_ids``, or every face of a deleted ``collection``) out of
    every snapshot under ``root`` (issue 27): their rows of ``vec.npy`` are overwritten
    with zeros in place, then the snapshot is removed (its IVF file holds quantised
    copies, and its sums no longer match); the next full load saves a new one.
    Processes that have it mapped keep working: the rows they see zeroed are rows they
    drop when they replay the delete. How many rows were zeroed."""
    if (not face_ids and collection is None) or not root.exists():
        return 0
    held = SnapshotDir(root, min_faces=0, exact_below=0).hold(wait=False)
    if held is not None:  # no save under way: taking the lock erased any a crash left
        held.release()
    wanted = np.asarray(sorted({f.encode() for f in face_ids}), dtype=bytes)
    zeroed = 0
    for manifest in sorted(root.glob("*/v*/snapshot.json")):
        folder = manifest.parent
        names = json.loads(manifest.read_text())["collections"]
        hit = False
        for i, name in enumerate(names):
            part = folder / f"c{i}"
            n = int(json.loads((part / "index.json").read_text())["rows"])
            if name == collection:
                rows = np.arange(n)
            else:
                fid = np.load(part / "fid.npy", mmap_mode="r")
                rows = np.flatnonzero(np.isin(fid[:n], wanted))
            if not len(rows):
                continue
            vec = np.load(part / "vec.npy", mmap_mode="r+")
            vec[rows] = 0
            vec.flush()
            del vec
            zeroed, hit = zeroed + len(rows), True
        if hit:
            # Not under the build lock (a build can take minutes): a process opening it
            # meanwhile finds files missing and loads a private index instead.
            shutil.rmtree(folder, ignore_errors=True)
            log.info("index snapshot %s removed: it held deleted faces", folder)
    return zeroed


def erase_all(root: Path) -> int:
    """Every snapshot under ``root`` overwritten with zeros and removed (a start with
    encryption at rest: issue 37); how many. Under the build lock, so no process of
    this machine is saving one meanwhile."""
    if not root.is_dir():
        return 0
    removed = 0
    with SnapshotDir(root, min_faces=0, exact_below=0).locked():
        for base in sorted(p for p in root.iterdir() if p.is_dir()):
            _wipe(base)
            removed += sum(1 for p in base.glob("v*/snapshot.json"))
            shutil.rmtree(base, ignore_errors=True)
    return removed


def _wipe_unfinished(root: Path) -> None:
    """Every snapshot folder a save left unfinished (a crash, a kill) overwritten with
    zeros and removed: its files hold embeddings no erasure looks for. Only as the
    snapshots' lock is taken, so no save is writing one."""
    for folder in sorted(root.glob("*/tmp-*")):
        _wipe(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _wipe(folder: Path) -> None:
    """Every file under ``folder`` overwritten with zeros, on disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            with path.open("r+b") as fh:
                for start in range(0, size, HASH_CHUNK):
                    fh.write(bytes(min(HASH_CHUNK, size - start)))
                fh.flush()
                os.fsync(fh.fileno())


def _write_collections(
    folder: Path,
    indexes: dict[str, VectorIndex],
    version: int,
    instance: str,
    token: str,
    encoders: Collection[str],
    dim: int,
) -> bytes:
    """Each collection's index into ``folder`` (c0, c1, ... in name order), and the
    manifest naming every file with its sha256."""
    names = sorted(indexes)
    for i, collection in enumerate(names):
        index = indexes[collection]
        assert isinstance(index, AnnIndex)
        index.save(folder / f"c{i}")
    files = _file_sums(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
    return json.dumps(
        {
            "format": FORMAT,
            "version": version,
            "instance": instance,
            "token": token,
            "encoders": sorted(encoders),
            "dim": dim,
            "collections": names,
            "files": files,
        }
    ).encode()


def _file_sums(folder: Path, paths: list[Path]) -> dict[str, dict[str, object]]:
    """Each file's size and the sha256 of each PIECE_BYTES of it, for the manifest."""
    sizes = {path: path.stat().st_size for path in paths}
    sums = _piece_sums([(path, size) for path, size in sizes.items()])
    return {
        str(path.relative_to(folder)): {"bytes": size, "sha256": sums[path]}
        for path, size in sizes.items()
    }


def _changed_file(folder: Path, files: dict[str, object]) -> str | None:
    """The first file of the manifest whose content is not what it lists, or None.

    A file's pieces are hashed on every core at once (hashlib lets go of the GIL): a
    restart's wait for identify at 10M faces was ~15 s of one core hashing the 5 GB of
    vectors (issue 41). A manifest of format 2's first form lists one sha256 of the
    whole file: still read, so a snapshot saved before is not rebuilt."""
    _await_prehash(folder)
    try:
        return _check_files(folder, files)
    finally:
        _forget_prehash()


def _check_files(folder: Path, files: dict[str, object]) -> str | None:
    wanted: dict[Path, tuple[str, object]] = {}
    sizes: list[tuple[Path, int]] = []
    for name, want in files.items():
        path = folder / name
        if isinstance(want, str):
            if _sha256(path) != want:
                return name
        elif not isinstance(want, dict) or not path.is_file():
            return name
        elif (size := path.stat().st_size) != want.get("bytes"):
            return name
        else:
            wanted[path] = (name, want.get("sha256"))
            sizes.append((path, size))
    sums = _piece_sums(sizes)
    for path, (name, pieces) in wanted.items():
        if sums[path] != pieces:
            return name
    return None


def _piece_sums(files: list[tuple[Path, int]]) -> dict[Path, list[str]]:
    pieces = [(path, start) for path, size in files for start in range(0, size, PIECE_BYTES)]
    with ThreadPoolExecutor(max_workers=min(usable_cpus(), max(1, len(pieces)))) as pool:
        digests = list(pool.map(lambda piece: _piece_sha256(*piece), pieces))
    sums: dict[Path, list[str]] = {path: [] for path, _ in files}
    for (path, _), digest in zip(pieces, digests, strict=True):
        sums[path].append(digest)
    return sums


def _piece_sha256(path: Path, start: int, *, remember: bool = False, checking: bool = False) -> str:
    """The sha256 of PIECE_BYTES of ``path`` from ``start``.

    A piece :func:`prehash` hashed (``remember``) is not hashed again, for at most
    PREHASH_MAX_AGE_SECONDS, while its file's status is the one it had then: device,
    inode, size, mtime and ctime (a write() changes the ctime, which no one can set
    back). A file whose ctime was within PREHASH_SETTLED_SECONDS of the clock when its
    status was read is not remembered: the kernel stamps ctimes with a coarse clock (a
    tick; a second on some file systems), so a second write could keep the ctime.
    Hashed while the open checks (``checking``), it is remembered: the open reads the
    file after its check anyway. (Writes through a shared mapping change no time until
    written back, so this check, like the open's, is of the content as it was when
    hashed; a writer of the snapshot's folder could change it after the open too.)"""
    with path.open("rb") as fh:
        status = os.fstat(fh.fileno())
        now = time.time_ns()
        key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
               status.st_ctime_ns, start)  # fmt: skip
        with _PREHASHED_LOCK:
            known = _PREHASHED.get(key)
        if known is not None and now - known[1] <= PREHASH_MAX_AGE_SECONDS * 1e9:
            return known[0]
        digest = _hash_piece(fh.fileno(), start, min(PIECE_BYTES, status.st_size - start))
    settled = status.st_ctime_ns < now - int(PREHASH_SETTLED_SECONDS * 1e9)
    if remember and (checking or settled):
        with _PREHASHED_LOCK:
            _PREHASHED[key] = (digest, now)
    return digest


def _hash_piece(fd: int, start: int, length: int) -> str:
    """Hashed from a mapping in one call, which holds no GIL: reading 1 MB at a time
    took the GIL back 64 times a piece, and a start's other threads (the models
    loading) kept it waiting."""
    if length <= 0:
        return hashlib.sha256().hexdigest()
    with mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=start) as mapped:
        return hashlib.sha256(mapped).hexdigest()


# Pieces hashed ahead of the open by :func:`prehash`: by file status and offset, the
# digest and when the status was read.
_PREHASHED: dict[tuple[int, ...], tuple[str, int]] = {}
_PREHASHED_LOCK = threading.Lock()
PREHASH_SETTLED_SECONDS = 1.0
# A digest hashed ahead is not used past this: an open that comes much later checks
# the files as they are then (a start's open comes in seconds).
PREHASH_MAX_AGE_SECONDS = 60.0


class _Pieces:
    """The pieces a pre-hash is to hash, handed out one at a time to whoever works:
    its own thread, and the open's when it comes before the end."""

    def __init__(self, folder: Path, pieces: list[tuple[Path, int]]) -> None:
        self.folder = folder
        self._pieces = pieces
        self._next = 0
        self._lock = threading.Lock()
        self.checking = threading.Event()  # the open has come

    def ahead(self, settled_at: int) -> None:
        """The pre-hash's thread: once the files' last change has settled (a snapshot an
        import saved a moment ago: up to PREHASH_SETTLED_SECONDS), or the open came."""
        self.checking.wait(max(0.0, (settled_at - time.time_ns()) / 1e9))
        self.work()

    def stop(self) -> None:
        """Hand out no more pieces (the open is of another snapshot)."""
        with self._lock:
            self._next = len(self._pieces)

    def work(self) -> None:
        while True:
            with self._lock:
                if self._next >= len(self._pieces):
                    return
                path, start = self._pieces[self._next]
                self._next += 1
            try:
                _piece_sha256(path, start, remember=True, checking=self.checking.is_set())
            except (OSError, ValueError):
                pass  # the open hashes whatever this could not


def _inside(folder: Path, names: Collection[str]) -> list[Path]:
    """The manifest's names that are files inside ``folder``, once each: a manifest no
    database has vouched for yet reads nothing else (an absolute name, ``..``, a
    symbolic link out)."""
    root = folder.resolve()
    out: list[Path] = []
    for name in dict.fromkeys(names):
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            continue
        path = folder / relative
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root):
            continue
        out.append(path)
    return out


_PREHASH: tuple[_Pieces, threading.Thread] | None = None


def prehash(root: Path) -> threading.Thread | None:
    """Hash the pieces of the newest snapshot under ``root`` on a thread, while the
    server still imports its modules and loads its models (issue 41): a restart's
    identify waited ~0.6 s for the hashing after the models, on cores the models used.
    Nothing is trusted here: the open still compares every piece with the manifest the
    database vouches for, and only pieces whose file is unchanged since are not hashed
    again.

    One thread: the imports hold another core (two made a restart at 1M 7% slower). An
    open that comes before the end hashes the pieces left beside it, on the other cores
    (a 10M snapshot is ~6 GB). None when there is no snapshot to hash."""
    global _PREHASH
    try:
        manifests = [m for m in root.glob("*/v*/snapshot.json") if m.is_file()]
        newest = max(manifests, key=lambda m: m.stat().st_mtime_ns, default=None)
        if newest is None:
            return None
        files = json.loads(newest.read_bytes())["files"]
        names = [str(name) for name, want in files.items() if isinstance(want, dict)]
        statuses = [(path, path.stat()) for path in _inside(newest.parent, names)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    pieces = _Pieces(
        newest.parent,
        [(p, start) for p, st in statuses for start in range(0, st.st_size, PIECE_BYTES)],
    )
    last_change = max((st.st_ctime_ns for _, st in statuses), default=0)
    settled_at = last_change + int(PREHASH_SETTLED_SECONDS * 1e9) + 1
    thread = threading.Thread(
        target=pieces.ahead, args=(settled_at,), name="snapshot-prehash", daemon=True
    )
    _PREHASH = (pieces, thread)
    thread.start()
    return thread


def _await_prehash(folder: Path) -> None:
    """Finish :func:`prehash`'s hashing if it runs and is of ``folder``: the pieces left
    on every core but the one its thread uses, then wait for that thread (it reads that
    snapshot's files once). Of another folder: it stops after the piece in hand."""
    running = _PREHASH
    if running is None:
        return
    pieces, thread = running
    if pieces.folder.resolve() != folder.resolve():
        pieces.stop()
        pieces.checking.set()
        thread.join()
        return
    pieces.checking.set()
    helpers = [threading.Thread(target=pieces.work) for _ in range(usable_cpus() - 2)]
    for helper in helpers:
        helper.start()
    if usable_cpus() > 1:  # this thread is one more
        pieces.work()
    for helper in [*helpers, thread]:
        helper.join()


def _forget_prehash() -> None:
    """After an open: the pre-hashed digests were for it alone."""
    global _PREHASH
    with _PREHASHED_LOCK:
        _PREHASHED.clear()
    _PREHASH = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
