"""dlib's HOG face detector with its image pyramid split between two cores.

dlib's frontal face detector scans an image pyramid (each level 5/6 the side of the one
before, down to its 80 px window), scores every window with its five filters and keeps
the best boxes by its overlap rule. Scanning levels 0-1 and levels 2 onwards cost about
the same (2.6 and 2.4 ms at 320x240 here), so with a spare core
(:mod:`app.face.cores`) they run at once:

- levels 0-1: a copy of the detector whose saved form says ``max_pyramid_levels = 2``;
- levels 2 on: a copy told to stop after one level, on each level's image made by
  dlib's own ``pyramid_down(6)`` (the very images its scan makes), its boxes mapped
  back with ``rect_up`` from that level, as dlib maps them (mapping through an
  intermediate level rounds twice: boxes 1 px off);
- the two lists merged by the detector's own rule (its ``test_box_overlap`` thresholds,
  read from the same saved form): best score first, a box dropped when it overlaps one
  already kept.

Same boxes and scores as one scan: on 4,500 lfw-devtrain images at three sizes, grey and
colour, and on the test photos (tests/face/test_hog.py). One case could differ in
principle: each part drops the boxes it finds overlapping a better one of its own before
the merge, so a box whose better neighbour is itself dropped by a box of the other part
would survive one scan but not the split (a chain of three boxes across the parts; not
seen once). Without a spare core, or when the saved
form is not the layout read here (another dlib), it is one scan, as before.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.face.cores import SpareCores

# Levels scanned by the first part; the rest by the second.
SPLIT_LEVELS = 2
# Below this shorter side the pyramid has too few levels to be worth splitting.
SPLIT_MIN_SIDE = 160


@dataclass(frozen=True)
class HogLayout:
    """What the split needs from the detector's saved form."""

    first_levels: bytes  # the saved form with max_pyramid_levels = SPLIT_LEVELS
    one_level: bytes  # ... with max_pyramid_levels = 1
    min_layer: tuple[int, int]  # the smallest level dlib scans (width, height)
    iou: float  # test_box_overlap: boxes overlap past this intersection/bounding box
    covered: float  # ... or when this fraction of either box is covered


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    """One integer in dlib's serialisation: a byte with the length (low 4 bits) and the
    sign (bit 7), then the magnitude's bytes, least significant first."""
    head = data[pos]
    size = head & 0x0F
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def _read_float(data: bytes, pos: int) -> tuple[float, int]:
    """A double in dlib's serialisation: mantissa and exponent, two integers."""
    mantissa, pos = _read_int(data, pos)
    exponent, pos = _read_int(data, pos)
    return mantissa * 2.0**exponent, pos


def read_layout(saved: bytes) -> HogLayout | None:
    """The split's pieces from ``object_detector<scan_fhog_pyramid<pyramid_down<6>>>``'s
    saved form (dlib 19-20: object_detector version 2, scan_fhog_pyramid version 1), or
    None when the bytes are not laid out that way."""
    try:
        pos, ints = 0, []
        for _ in range(8):  # versions, extractor, feats, cell, padding, window w/h
            value, pos = _read_int(saved, pos)
            ints.append(value)
        levels_at = pos
        max_levels, pos = _read_int(saved, pos)
        min_width, pos = _read_int(saved, pos)
        min_height, pos = _read_int(saved, pos)
        _, pos = _read_float(saved, pos)  # nuclear norm regularisation
        dims, pos = _read_int(saved, pos)
        iou, pos = _read_float(saved, pos)
        covered, pos = _read_float(saved, pos)
    except IndexError:
        return None
    version, scanner_version, cell, width, height = ints[0], ints[1], ints[4], ints[6], ints[7]
    if (
        (version, scanner_version) != (2, 1)
        or max_levels <= SPLIT_LEVELS
        or dims != 31 * (width // cell) * (height // cell)
        or not (0 < iou <= 1 and 0 < covered <= 1)
    ):
        return None
    end = _read_int(saved, levels_at)[1]
    return HogLayout(
        first_levels=saved[:levels_at] + bytes([1, SPLIT_LEVELS]) + saved[end:],
        one_level=saved[:levels_at] + bytes([1, 1]) + saved[end:],
        min_layer=(min_width, min_height),
        iou=iou,
        covered=covered,
    )


def saved_form(detector: Any) -> bytes:
    """A dlib detector's saved form (dlib writes it only to a file)."""
    fd, path = tempfile.mkstemp(suffix=".svm")
    os.close(fd)
    try:
        detector.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def load_saved(dlib: Any, saved: bytes) -> Any:
    fd, path = tempfile.mkstemp(suffix=".svm")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(saved)
        return dlib.fhog_object_detector(path)
    finally:
        os.unlink(path)


_FRONTAL: dict[int, Any] = {}
_FRONTAL_LOCK = threading.Lock()


def frontal_detector(dlib: Any) -> Any:
    """A detector of its own: a copy of dlib's frontal face detector. dlib builds one
    from its text form in ~0.25 s, holding the GIL; a copy of one already built takes
    ~2 ms. Start-up built three (issue 41), and each inference slot's set one more. The
    template is never run, so no thread shares its scratch state."""
    with _FRONTAL_LOCK:
        template = _FRONTAL.get(id(dlib))
        if template is None:
            template = _FRONTAL[id(dlib)] = dlib.get_frontal_face_detector()
        return copy.deepcopy(template)


def frontal_cache_files(dlib: Any, cache_dir: Path) -> tuple[Path, Path]:
    """Where the cache keeps the frontal detector's saved form, and its record (the
    sha256 of those bytes). The name carries dlib's version: another dlib, another file."""
    stem = f"dlib_frontal_face_detector-{dlib.__version__}"
    return cache_dir / f"{stem}.svm", cache_dir / f"{stem}.json"


# The saved form's sha256 for the dlib releases it was checked on (20.0.1: dlib-bin's
# wheel here). For these the cache's record is not trusted: only these bytes load.
KNOWN_FRONTAL_SHA256 = {
    "20.0.1": "f3f7aa833fb4a14a46fc48689f45b98d85ef72d6dfaf8bdc012b7d3c522a5426",
}


def cached_frontal_form(dlib: Any, cache_dir: Path) -> tuple[bytes, str] | None:
    """The frontal detector's saved form from the cache and its sha256, if the cache
    holds one whose bytes have the hash its record gives, and, for a dlib release of
    KNOWN_FRONTAL_SHA256, the hash listed there (None otherwise: missing, truncated,
    edited, or written by another dlib)."""
    saved, record = frontal_cache_files(dlib, cache_dir)
    try:
        data = saved.read_bytes()
        meta = json.loads(record.read_text())
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    known = KNOWN_FRONTAL_SHA256.get(dlib.__version__, digest)
    if meta.get("dlib") != dlib.__version__ or digest != expected or digest != known:
        return None
    return data, digest


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` in ``path``, whole or not at all, readable by all (an image's server
    runs as another user than the build that wrote it; the form is dlib's public data)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def prime_frontal(dlib: Any, cache_dir: Path, *, save: bool = True) -> str:
    """Make this process's frontal detector template from the cache's saved form (~2 ms)
    rather than from dlib's text form (0.25-0.3 s holding the GIL: at start-up the index
    load's threads wait for it; issue 41). Without a good cached form, the template is
    built from the text and, with ``save``, its form written to the cache for the next
    start (`faceverify models prepare` writes it into the image; a read-only cache is
    left alone). Returns how the template came: "loaded", "built" or "present"."""
    with _FRONTAL_LOCK:
        if id(dlib) in _FRONTAL:
            return "present"
        cached = cached_frontal_form(dlib, cache_dir)
        if cached is not None:
            try:
                _FRONTAL[id(dlib)] = load_saved(dlib, cached[0])
                return "loaded"
            except Exception:  # no temporary file, or dlib refused it (bad_alloc too)
                pass
        template = _FRONTAL[id(dlib)] = dlib.get_frontal_face_detector()
    if save:
        try:
            data = saved_form(template)
            saved, record = frontal_cache_files(dlib, cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(saved, data)
            meta = {
                "dlib": dlib.__version__,
                "source": "dlib.get_frontal_face_detector()",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            _write_atomically(record, json.dumps(meta, indent=2).encode())
        except OSError:
            pass  # a read-only cache (an image built before this): built each start
    return "built"


def frontal_layout(dlib: Any) -> HogLayout | None:
    """The split's pieces for dlib's frontal face detector (None: no split, also when no
    temporary file can be written: dlib saves and loads detectors only through files)."""
    try:
        return read_layout(saved_form(frontal_detector(dlib)))
    except OSError:
        return None


class SplitHog:
    """One thread's HOG face detector, split as the module says when a core is spare.

    Holds three dlib detectors (the whole scan, levels 0-1, one level) and a pyramid,
    none of them shared with another thread: a pool lends each set to one thread at a
    time (app/face/pool.py)."""

    def __init__(self, dlib: Any, layout: HogLayout | None, cores: SpareCores) -> None:
        self.whole = frontal_detector(dlib)
        try:
            self._first = load_saved(dlib, layout.first_levels) if layout else None
            self._one = load_saved(dlib, layout.one_level) if layout else None
        except OSError:  # no writable temporary directory: one scan, as before
            layout, self._first, self._one = None, None, None
        self._layout = layout
        self._dlib = dlib
        self._pyramid = dlib.pyramid_down(6)
        self._cores = cores

    def run(self, image: np.ndarray) -> tuple[list[Any], list[float]]:
        """Faces in ``image`` (2-D grey or RGB uint8) at no upsampling and threshold 0:
        dlib rectangles and scores, best first."""
        first, layout = self._first, self._layout
        if (
            first is None
            or layout is None
            or min(image.shape[:2]) < SPLIT_MIN_SIDE
            or not self._cores.spare()
        ):
            rects, scores, _ = self.whole.run(image, 0, 0.0)
            return list(rects), list(scores)
        # The caller scans levels 0-1 (one call that releases the GIL); the helper the
        # rest (a Python loop over the levels): 2.6 ms against 2.9 the other way round.
        # (Should the core be taken meanwhile, both run here: the same answer.)
        rest, (rects, scores, _) = self._cores.beside(
            lambda: self._rest(image), lambda: first.run(image, 0, 0.0)
        )
        return _merge(list(zip(scores, rects, strict=True)) + rest, layout.iou, layout.covered)

    def _rest(self, image: np.ndarray) -> list[tuple[float, Any]]:
        """Levels SPLIT_LEVELS on, each scanned alone and mapped up from its own level;
        as many levels as dlib's scan has (while a level is at least min_layer)."""
        assert self._one is not None and self._layout is not None
        pyramid, (min_width, min_height) = self._pyramid, self._layout.min_layer
        height, width = image.shape[:2]
        frame = self._dlib.rectangle(0, 0, width - 1, height - 1)
        found: list[tuple[float, Any]] = []
        level, small = 0, image
        while True:
            frame = pyramid.rect_down(frame)
            level += 1
            if frame.width() < min_width or frame.height() < min_height:
                return found
            small = pyramid(small)
            if level >= SPLIT_LEVELS:
                rects, scores, _ = self._one.run(small, 0, 0.0)
                found += [
                    (score, pyramid.rect_up(rect, level))
                    for rect, score in zip(rects, scores, strict=True)
                ]


def _merge(
    found: list[tuple[float, Any]], iou: float, covered: float
) -> tuple[list[Any], list[float]]:
    """dlib's object_detector rule: best score first, dropping a box that overlaps one
    already kept (test_box_overlap)."""
    kept: list[tuple[float, Any]] = []
    for score, rect in sorted(found, key=lambda f: f[0], reverse=True):
        if not any(_overlaps(rect, other, iou, covered) for _, other in kept):
            kept.append((score, rect))
    return [r for _, r in kept], [s for s, _ in kept]


def _overlaps(a: Any, b: Any, iou: float, covered: float) -> bool:
    """dlib's test_box_overlap: intersection over the bounding box of both (dlib's
    ``(a+b).area()``) above ``iou``, or either box covered by more than ``covered``."""
    inner = a.intersect(b).area()
    if inner == 0:
        return False
    return bool(
        inner / (a + b).area() > iou or inner / a.area() > covered or inner / b.area() > covered
    )
