"""What the use cases answer with (the HTTP layer turns these into responses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.face.detect import DetectedFace
from app.face.quality import Assessment, FaceMeasures
from app.face.timing import Timings
from app.face.views import FAST
from app.gallery import FaceRecord, SubjectRecord
from app.scoring.openset import OpenSetDecision

FacePolicy = Literal["single", "largest"]
ProbeMode = Literal["fast", "thorough"]


@dataclass(frozen=True)
class ProbeFace:
    """The face a probe photo was compared by, how many the photo had, its measures
    (pose, size), quality, and the hard limits it fails (app/face/quality.py checks:
    it is compared all the same, and the answer says so)."""

    face: DetectedFace
    faces_detected: int
    quality: Assessment
    measures: FaceMeasures
    checks: tuple[str, ...] = ()


@dataclass
class DetectResult:
    """Every face of a photo with its measures, quality and the hard limits it fails
    (POST /detect)."""

    faces: list[tuple[DetectedFace, FaceMeasures, Assessment, tuple[str, ...]]]
    timings: Timings


@dataclass
class Match:
    distance: float
    score: float
    match: bool
    # Share of the calibration data's impostor pairs at or below this distance, with
    # the count and the total it rests on; None when the calibration has no FMR table.
    fmr: tuple[float, int, int] | None = None
    # The calibration curve that scored it (app/face/views.py CURVES) and its threshold.
    curve: str = FAST
    threshold: float = 0.6
    # The false match rate the request or its collection asked the threshold to keep.
    max_fmr: float | None = None
    # Scored as a probe face too small to enroll (app/scoring/calibration.py SmallProbe).
    small_probe: bool = False


@dataclass
class EnrollResult:
    subject: SubjectRecord
    faces: list[FaceRecord]
    timings: Timings
    # True when this is the stored answer to an earlier request with the same
    # Idempotency-Key (nothing new was stored).
    replayed: bool = False


@dataclass
class VerifyResult:
    subject_id: str
    probe: ProbeFace
    face_id: str
    result: Match
    timings: Timings
    mode: ProbeMode = "fast"


@dataclass
class CompareResult:
    probe_a: ProbeFace
    probe_b: ProbeFace
    result: Match
    timings: Timings
    mode: ProbeMode = "fast"


@dataclass
class Candidate:
    subject_id: str
    face_id: str
    result: Match


@dataclass
class IdentifyResult:
    # None for a search by a stored face.
    probe: ProbeFace | None
    candidates: list[Candidate]
    best: Candidate | None
    gallery_size: int
    timings: Timings = field(default_factory=Timings)
    mode: ProbeMode | None = None  # None for a search by a stored face
    # The curve a candidate would be scored with when there is none.
    curve: str = FAST
    # The open-set decision on the nearest subject (None: the collection is empty).
    open_set: OpenSetDecision | None = None
    # The false-positive identification rate the search was decided at.
    fpir: float = 0.01
    # A search by a stored face: whose face it is.
    probe_subject: str | None = None
    # The probe's face was scored as one too small to enroll (SmallProbe).
    small_probe: bool = False
