"""Labelled pairs for evaluation and calibration: LFW pairs files or identity folders."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}
FOLDS = 10


@dataclass(frozen=True)
class Pair:
    same: bool
    a: Path
    b: Path
    fold: int
    identity_a: str
    identity_b: str


def read_lfw_pairs(pairs_file: Path, images: Path) -> list[Pair]:
    """Read an LFW pairs file: View 1 (first line N: N same pairs ``name i j`` then N
    different pairs ``name1 i name2 j``) or View 2 (first line ``folds n``: per fold, n
    same then n different). View 1 has no folds; its pairs, which the file lists in name
    order, are cut into 10 contiguous folds per class, so a fold holds few of another
    fold's people."""
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    header = [int(x) for x in lines[0]]
    body = lines[1:]
    if len(header) == 1:
        folds, per_fold = 1, header[0]
    elif len(header) == 2:
        folds, per_fold = header
    else:
        raise ValueError(f"{pairs_file}: first line must be 'N' or 'folds N'")
    if len(body) != folds * 2 * per_fold:
        raise ValueError(f"{pairs_file}: expected {folds * 2 * per_fold} pairs, found {len(body)}")

    def path(name: str, number: str) -> Path:
        return images / name / f"{name}_{int(number):04d}.jpg"

    pairs = []
    for f in range(folds):
        block = body[f * 2 * per_fold : (f + 1) * 2 * per_fold]
        for i, row in enumerate(block):
            same = i < per_fold
            if same and len(row) == 3:
                a, b, names = path(row[0], row[1]), path(row[0], row[2]), (row[0], row[0])
            elif not same and len(row) == 4:
                a, b, names = path(row[0], row[1]), path(row[2], row[3]), (row[0], row[2])
            else:
                raise ValueError(f"{pairs_file}: bad pair line {' '.join(row)!r}")
            fold = f if folds > 1 else (i % per_fold) * FOLDS // per_fold
            pairs.append(Pair(same, a, b, fold, *names))
    return pairs


def identity_fold(identity: str, folds: int = FOLDS) -> int:
    """A stable fold for an identity (same on every machine and run)."""
    return int(hashlib.sha256(identity.encode()).hexdigest(), 16) % folds


def identity_pairs(
    root: Path,
    *,
    max_same_per_identity: int = 30,
    different: int = 50_000,
    seed: int = 0,
) -> list[Pair]:
    """Pairs from a folder with one sub-folder of photos per identity.

    Identities are split into 10 folds (fewer for under 20 identities: one per two
    identities, at least 2) by a hash of their name. Same-identity pairs: all
    pairs of each identity's photos, at most ``max_same_per_identity`` per identity
    (a random sample, so a few much-photographed people do not dominate). Different-
    identity pairs: ``different`` random pairs of photos of two identities of the *same*
    fold, so held-out folds share no one with training folds.
    """
    rng = random.Random(seed)
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            people[folder.name] = photos
    if len(people) < 3:
        raise ValueError(f"{root}: need at least three identity folders with photos")
    folds = min(FOLDS, max(2, len(people) // 2))
    fold_of = {name: identity_fold(name, folds) for name in people}
    pairs = []
    for name, photos in people.items():
        same = list(combinations(photos, 2))
        if len(same) > max_same_per_identity:
            same = rng.sample(same, max_same_per_identity)
        pairs += [Pair(True, a, b, fold_of[name], name, name) for a, b in same]
    by_fold: dict[int, list[str]] = {}
    for name in people:
        by_fold.setdefault(fold_of[name], []).append(name)
    usable = [f for f, names in by_fold.items() if len(names) >= 2]
    if not usable:
        raise ValueError(f"{root}: too few identities to pair within folds")
    weights = [len(by_fold[f]) for f in usable]
    seen: set[tuple[Path, Path]] = set()
    attempts = 0
    while len(seen) < different and attempts < 20 * different:
        attempts += 1
        fold = rng.choices(usable, weights)[0]
        x, y = rng.sample(by_fold[fold], 2)
        a, b = rng.choice(people[x]), rng.choice(people[y])
        key = (a, b) if a < b else (b, a)
        if key in seen:
            continue
        seen.add(key)
        pairs.append(Pair(False, a, b, fold, x, y))
    return pairs


def pair_list_hash(pairs: list[Pair], root: Path) -> str:
    """sha256 of the pair list (labels and paths relative to ``root``), to record which
    pairs a calibration came from."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{int(p.same)}\t{_rel(p.a, root)}\t{_rel(p.b, root)}\n".encode())
    return digest.hexdigest()


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
