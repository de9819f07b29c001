"""Face quality: what a face's photo says about how well it will be recognised.

:func:`measure` reads a found face (its five landmarks, box, detector score and the
encoder's aligned chip) into :class:`FaceMeasures`: pose estimated from the landmark
geometry, size, and the sharpness, brightness and contrast of the face region.
:func:`assess` turns those into one ``quality`` score 0-100 and the reasons that lowered
it.

Each measure adds a penalty (a smooth, monotone function of it, so a worse photo always
scores lower); the weighted sum predicts how much further than an ideal face's this
face's distance to other photos of the same person will be, with non-negative weights
fitted on lfw-devtrain with people held out (``benchmarks/quality_erc.py``;
docs/QUALITY.md has the error-versus-reject characteristic that shows it predicts
errors). Pose angles from five points are
estimates: the eye corners and the nose base fix roll well, yaw and pitch only roughly.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from app.face.detect import DetectedFace
from app.face.hog import frontal_detector
from app.face.pool import InstancePool

# dlib's 5-point order: right eye outer, right eye inner, left eye outer, left eye inner,
# nose base (dlib shape_predictor_5_face_landmarks; the 68-point model is licensed for
# non-commercial use only, so pose comes from these five).
_RIGHT_EYE, _LEFT_EYE, _NOSE = (0, 1), (2, 3), 4
# Depth of the nose base in front of the eye corners, in inter-eye distances (~20 mm
# against ~63 mm between eye centres in adult anthropometry): sets the yaw estimate's
# scale, ``lateral offset = NOSE_DEPTH * tan(yaw)``.
NOSE_DEPTH = 0.32
# The nose base's drop below the eye line in a frontal face, in inter-eye distances
# (lfw-devtrain's median, whose faces are mostly frontal: with 0.82, its median pitch
# read -7.8 degrees). Pitching the head by p
# (chin down positive) makes it NOSE_DROP cos p + NOSE_DEPTH sin p, whose inverse on
# the branch through 0 is the pitch estimate (it cannot tell more than ~20 degrees down).
NOSE_DROP = 0.77
_DROP_RADIUS = math.hypot(NOSE_DROP, NOSE_DEPTH)
_DROP_ANGLE = math.atan2(NOSE_DEPTH, NOSE_DROP)


@dataclass(frozen=True)
class FaceMeasures:
    """What :func:`measure` reads off one face; angles in degrees, sizes in pixels of
    the photo as sent, intensities 0-255 over the face region of the aligned chip."""

    roll: float
    yaw: float
    pitch: float
    inter_eye: float
    box_side: int
    detector_score: float
    detector: str
    face_likeness: float
    sharpness: float
    brightness: float
    contrast: float

    def row(self) -> list[float]:
        """The measures as numbers in :data:`MEASURES` order."""
        values = [getattr(self, name) for name in MEASURES[:-1]]
        # "cnn": found only by a fallback detector (dlib's CNN or YuNet), whose score
        # is not HOG's margin.
        return [*values, float(self.detector != "hog")]


@dataclass(frozen=True)
class Assessment:
    """``quality`` 0-100 (higher is better) and the reasons that lowered it, worst first
    (stable codes: :data:`REASONS` has what each means and what to do)."""

    quality: float
    reasons: tuple[str, ...]

    @property
    def advice(self) -> list[str]:
        """What to do about each reason, in their order."""
        return [REASONS[r] for r in self.reasons]


def measure(face: DetectedFace) -> FaceMeasures:
    """Measure one face found by :meth:`app.face.pipeline.Pipeline.find_faces` (it
    needs the chip: sharpness, brightness and contrast are read from the aligned face,
    so they are comparable between photos of any size)."""
    points = np.asarray(face.landmarks, dtype=np.float64)
    # dlib's "right eye" (points 0, 1) is the one on the image's right: the eye line runs
    # from the image's left eye to its right one, so an upright face has roll 0.
    right = points[list(_RIGHT_EYE)].mean(axis=0)
    left = points[list(_LEFT_EYE)].mean(axis=0)
    eye_line = right - left
    inter_eye = float(np.hypot(*eye_line))
    unit = eye_line / max(inter_eye, 1e-6)
    normal = np.array([-unit[1], unit[0]])  # points down the face
    nose = points[_NOSE] - (left + right) / 2
    lateral = float(nose @ unit) / max(inter_eye, 1e-6)
    drop = float(nose @ normal) / max(inter_eye, 1e-6)
    roll = math.degrees(math.atan2(eye_line[1], eye_line[0]))
    yaw = math.degrees(math.atan(lateral / NOSE_DEPTH))
    pitch = math.degrees(_DROP_ANGLE - math.acos(min(1.0, max(-1.0, drop / _DROP_RADIUS))))
    sharpness, brightness, contrast = _chip_measures(face.chip)
    likeness = _hog_margin(_chip_grey(face.chip))
    return FaceMeasures(
        roll=round(roll, 1),
        yaw=round(yaw, 1),
        pitch=round(pitch, 1),
        inter_eye=round(inter_eye, 1),
        box_side=face.side,
        detector_score=round(face.score, 3),
        detector=face.detector,
        face_likeness=round(likeness, 3),
        sharpness=round(sharpness, 2),
        brightness=round(brightness, 1),
        contrast=round(contrast, 1),
    )


# HOG's margin over the aligned chip (face_likeness): the detector's own score jumps with
# the pyramid level a face happens to fall on (1.46 -> 1.93 -> 1.50 -> 2.22 as one photo
# is scaled down by 0.8 at a time); on the chip the face is always ~67 px and upright,
# so the margin says how face-like the face itself is (occlusion, pose, expression,
# lighting). The detector's score still carries what the ERC needs (both together:
# -34.5% FNMR at 5% discarded; either alone -28 to -32%). Below LIKENESS_FLOOR HOG
# reports nothing; that is the value then. dlib's detectors keep scratch state inside
# the object: one per thread at a time, from a pool.
LIKENESS_FLOOR = -1.5
_HOG: InstancePool[Any] | None = None
_POOL_LOCK = threading.Lock()


def _chip_grey(chip: np.ndarray | None) -> np.ndarray:
    """The aligned face, grey, at 2/3 scale (the face ~67 px, still inside HOG's 80 px
    window with its margin): HOG takes 0.55 ms on it against 1.4 at 150 px, with
    margins within ~0.2."""
    if chip is None:
        raise ValueError("quality needs the face's chip (Pipeline.find_faces makes it)")
    side = chip.shape[0] * 2 // 3
    grey = Image.fromarray(chip).convert("L").resize((side, side), Image.Resampling.BOX)
    return np.asarray(grey)


def warm(instances: int) -> None:
    """The quality score's HOG detectors (one per inference slot): one now, so start-up
    fails on a broken dlib; the rest (copies of it, ~2 ms each) when concurrent requests
    first need them (InstancePool.warm)."""
    _pool().warm(instances, later=True)


def _pool() -> InstancePool[Any]:
    global _HOG
    with _POOL_LOCK:
        if _HOG is None:
            import dlib

            _HOG = InstancePool(lambda: frontal_detector(dlib))
        return _HOG


def _hog_margin(grey: np.ndarray) -> float:
    """HOG's best margin on a grey image of one face (LIKENESS_FLOOR if it finds none)."""
    with _pool().borrow() as hog:
        _, scores, _ = hog.run(grey, 0, LIKENESS_FLOOR)
    return float(max(scores, default=LIKENESS_FLOOR))


def _chip_measures(chip: np.ndarray | None) -> tuple[float, float, float]:
    """Sharpness, brightness and contrast of the face region of an aligned chip.

    The chip (dlib's 150 px, padding 0.25) holds the face in its central 100 px; the
    middle 80 px square is eyes, nose and mouth with little background. Sharpness is
    the mean absolute Laplacian relative to the region's contrast, so darkening alone
    does not read as blur; a face upscaled from few pixels reads as blurred, which it is
    for the encoder.
    """
    if chip is None:
        raise ValueError("quality needs the face's chip (Pipeline.find_faces makes it)")
    size = chip.shape[0]
    lo, hi = size * 35 // 150, size * 115 // 150
    region = chip[lo:hi, lo:hi].astype(np.float32)
    grey = region @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    contrast = float(grey.std())
    sharpness = float(np.abs(lap).mean()) / max(contrast, 1.0) * 100
    return sharpness, float(grey.mean()), contrast


# The measures as a row of numbers, in this order (benchmarks/quality_erc.py caches them).
MEASURES = tuple(f.name for f in fields(FaceMeasures) if f.name != "detector") + ("cnn",)


# Where each penalty starts to bite (its softplus knee).
SMALL_INTER_EYE = 45.0  # px between eye centres
SHARP = 20.0  # sharpness; lfw-devtrain: median 13.5, 1st percentile 6.7
DARK, BRIGHT = 80.0, 190.0  # mean grey of the face region, 0-255
FLAT = 25.0  # grey standard deviation of the face region
WEAK_SCORE = 1.0  # HOG's SVM margin on the chip; > 0 is a detection
# The detector's margin where it found the face in the photo. Its penalty has a sharper
# knee than the others: above ~1 the detector is sure, and the margin's jitter with the
# pyramid level says nothing (with the knee as soft as the others', a photo scaled down
# step by step scored higher at some steps: 94.8% of degradation steps lower, now 96.7%,
# at the same ERC).
WEAK_DETECTION = 0.5

# Penalty weights, in distance units: the rise of a photo's mean distance to the other
# photos of its person per unit of penalty, by least squares with non-negative weights
# on lfw-devtrain's 6,671 photos of people with several (benchmarks/quality_erc.py
# --fit; 10 folds by person, each fold scored by weights fitted on the other nine gives
# the ERC in docs/QUALITY.md). Three are priors, not fitted (PRIORS): lfw-devtrain's
# faces are all 30-50 px between the eyes, nearly all lit well and upright, so it cannot
# show what a small, dark or rolled face costs; their weights make a 40-60 px face, a
# face region darker than ~65 of 255, or a roll past ~20 degrees each a reason.
PRIORS = frozenset({"small", "dark", "roll"})
WEIGHTS = np.array(
    [0.0, 0.0036, 0.0200, 0.0600, 0.0256, 0.0200, 0.0093, 0.0, 0.0471, 0.0887, 0.0144]
)
# quality = 100 exp(-penalty / SCALE): a face at 37 is expected to lie 0.1 further from
# its person's other photos than an ideal one (the threshold is 0.6; genuine pairs
# average ~0.38 on lfw-devtrain).
SCALE = 0.1
# A penalty of at least this (quality down by ~14% or more) is a reason.
REASON_PENALTY = 0.015


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def penalties_of(row: np.ndarray | list[float]) -> np.ndarray:
    """Each measure's penalty: 0 for an ideal face, growing smoothly and monotonically
    as the measure gets worse (so every step of a degradation lowers the score)."""
    m = dict(zip(MEASURES, (float(v) for v in row), strict=True))
    return np.array(
        [
            (m["yaw"] / 20) ** 2,
            (m["pitch"] / 20) ** 2,
            (m["roll"] / 20) ** 2,
            _softplus(4 * math.log(SMALL_INTER_EYE / max(m["inter_eye"], 1.0))) / 4,
            _softplus(4 * math.log(SHARP / max(m["sharpness"], 0.1))) / 4,
            _softplus((DARK - m["brightness"]) / 15),
            _softplus((m["brightness"] - BRIGHT) / 15),
            _softplus(4 * math.log(FLAT / max(m["contrast"], 0.1))) / 4,
            _softplus(2 * (WEAK_SCORE - m["face_likeness"])) / 2,
            _softplus(4 * (WEAK_DETECTION - m["detector_score"])) / 4 * (1 - m["cnn"]),
            m["cnn"],
        ]
    )


PENALTIES = (
    "yaw", "pitch", "roll", "small", "blur", "dark", "bright", "flat", "weak", "unsure",
    "cnn",
)  # fmt: skip

# Each penalty's reason code and advice, as responses and the web page show them.
REASONS = {
    "turned_sideways": "The head is turned to the side; look straight at the camera.",
    "head_tilted_up_or_down": "The head is tilted up or down; look straight at the camera.",
    "head_tilted_sideways": "The head is tilted sideways; hold it upright.",
    "face_too_small": "The face is small in the photo; move closer or crop less.",
    "blurred": "The face is blurred; hold the camera still and focus on the face.",
    "too_dark": "The face is too dark; add light in front of the face.",
    "overexposed": "The face is overexposed; reduce direct light or the flash.",
    "low_contrast": "The face has little contrast; avoid haze, glare and backlight.",
    "weak_detection": "The face is hard to make out (partly hidden, turned or unusual "
    "lighting); use a clear, frontal, unobstructed photo.",
    "found_only_by_fallback_detector": "Only the slower fallback detector found the "
    "face (it is turned, small or partly hidden); use a clear, frontal photo.",
}
_REASON_OF = {
    "yaw": "turned_sideways",
    "pitch": "head_tilted_up_or_down",
    "roll": "head_tilted_sideways",
    "small": "face_too_small",
    "blur": "blurred",
    "dark": "too_dark",
    "bright": "overexposed",
    "flat": "low_contrast",
    "weak": "weak_detection",
    "unsure": "weak_detection",
    "cnn": "found_only_by_fallback_detector",
}


# Hard limits, as AWS Rekognition filters faces (its reasons in brackets): a face past
# one is not enrolled (/enroll refuses it with the codes) and a probe past one is still
# compared but flagged (``checks`` in every probe answer). Unlike the reasons above
# (what lowered a smooth score), each is a yes or no on one measure.
CHECKS = {
    "face_too_small": "SMALL_BOUNDING_BOX",
    "extreme_pose": "EXTREME_POSE",
    "low_sharpness": "LOW_SHARPNESS",
    "low_brightness": "LOW_BRIGHTNESS",
}
CHECK_ADVICE = {
    "face_too_small": REASONS["face_too_small"],
    "extreme_pose": "The head is turned or tilted far from the camera; look straight at it.",
    "low_sharpness": REASONS["blurred"],
    "low_brightness": REASONS["too_dark"],
}
# |yaw| past 45 degrees (the estimate reads a profile as ~60-90) or |pitch| past 30.
EXTREME_YAW, EXTREME_PITCH = 45.0, 30.0
# Sharpness under a third of lfw-devtrain's median (13.5; its 1st percentile is 6.7).
MIN_SHARPNESS = 4.5
# A face region darker than 40 of 255 on average.
MIN_BRIGHTNESS = 40.0


def checks(measures: FaceMeasures, min_inter_eye: float) -> tuple[str, ...]:
    """The hard limits (:data:`CHECKS`) ``measures`` fails, in that order; the face is
    too small under ``min_inter_eye`` px between the eye centres (0: never)."""
    failed = {
        "face_too_small": measures.inter_eye < min_inter_eye,
        "extreme_pose": abs(measures.yaw) > EXTREME_YAW or abs(measures.pitch) > EXTREME_PITCH,
        "low_sharpness": measures.sharpness < MIN_SHARPNESS,
        "low_brightness": measures.brightness < MIN_BRIGHTNESS,
    }
    return tuple(code for code, fails in failed.items() if fails)


def assess(measures: FaceMeasures) -> Assessment:
    """The quality score of one face and the reasons that lowered it."""
    return assess_penalties(penalties_of(measures.row()))


def assess_penalties(penalties: np.ndarray) -> Assessment:
    """:func:`assess` from :func:`penalties_of`'s row."""
    costs = penalties * WEIGHTS
    quality = 100.0 * math.exp(-float(costs.sum()) / SCALE)
    worst = np.argsort(-costs, kind="stable")
    reasons = dict.fromkeys(_REASON_OF[PENALTIES[i]] for i in worst if costs[i] >= REASON_PENALTY)
    return Assessment(quality=round(quality, 1), reasons=tuple(reasons))
