"""Rekognition's request fields read and checked, and its response shapes built from
faceverify's records (BoundingBox as ratios of the photo, Landmarks, Pose, Quality)."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from app.api.rekognition.errors import AwsError, invalid
from app.face.detect import DetectedFace
from app.face.quality import FaceMeasures
from app.geometry import Box

# Rekognition's own limits (its API reference): ids, names and list sizes.
COLLECTION_ID = re.compile(r"^[a-zA-Z0-9_.\-]+$")
EXTERNAL_IMAGE_ID = re.compile(r"^[a-zA-Z0-9_.\-:]+$")
USER_ID = re.compile(r"^[a-zA-Z0-9_.\-:]+$")
FACE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Rekognition's cap on an image passed as Bytes
QUALITY_FILTERS = ("NONE", "AUTO", "LOW", "MEDIUM", "HIGH")


class Params:
    """One request's fields, each read once with its type and limits checked
    (InvalidParameterException naming the field otherwise)."""

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise AwsError("SerializationException", "The request body must be a JSON object.")
        self.raw = raw

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        max_len: int = 255,
    ) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise invalid(f"1 validation error detected: '{name}' must not be null.")
            return None
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise invalid(f"'{name}' must be a string of 1 to {max_len} characters.")
        if pattern is not None and not pattern.fullmatch(value):
            raise invalid(f"'{name}' must satisfy the pattern {pattern.pattern}.")
        return value

    def required(self, name: str, **rules: Any) -> str:
        value = self.string(name, required=True, **rules)
        assert value is not None
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(name, default)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise invalid(f"'{name}' must be an integer from {low} to {high}.")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw.get(name, default)
        if value is None:
            return default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise invalid(f"'{name}' must be a number from {low:g} to {high:g}.")
        return float(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.raw.get(name, default)
        if value not in options:
            raise invalid(f"'{name}' must be one of {', '.join(options)}.")
        return str(value)

    def ids(self, name: str, pattern: re.Pattern[str], high: int, *, required: bool) -> list[str]:
        value = self.raw.get(name)
        if value is None and not required:
            return []
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= high
            or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value)
        ):
            raise invalid(f"'{name}' must be a list of 1 to {high} ids ({pattern.pattern}).")
        return list(value)

    def image(self, name: str) -> bytes:
        """An Image field's bytes: ``Bytes`` (base64 in JSON, as every SDK sends it). An
        S3Object is refused: this server reads no S3."""
        value = self.raw.get(name)
        if not isinstance(value, dict) or not value:
            raise invalid(f"1 validation error detected: '{name}' must not be null.")
        if "S3Object" in value:
            raise invalid(
                f"{name}.S3Object is not supported: faceverify reads no S3 bucket. Send the "
                f"photo's bytes as {name}.Bytes."
            )
        data = value.get("Bytes")
        if not isinstance(data, str) or not data:
            raise invalid(f"'{name}.Bytes' must be the photo's bytes.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise AwsError(
                "InvalidImageFormatException", f"{name}.Bytes is not valid base64."
            ) from None
        if len(raw) > MAX_IMAGE_BYTES:
            raise AwsError(
                "ImageTooLargeException",
                f"{name} is {len(raw):,} bytes; images sent as Bytes may be up to "
                f"{MAX_IMAGE_BYTES:,} bytes.",
            )
        return raw

    def token(self, pattern: re.Pattern[str]) -> str | None:
        """The page to start after (NextToken): the last id of the page before, as this
        server gave it (base64url of an id of the listing's kind); anything else is
        InvalidPaginationTokenException."""
        value = self.raw.get("NextToken")
        if value is None:
            return None
        try:
            if not isinstance(value, str) or len(value) > 255:
                raise ValueError
            last = base64.b64decode(value.encode(), altchars=b"-_", validate=True).decode()
        except (ValueError, UnicodeDecodeError, binascii.Error):
            last = ""
        if not pattern.fullmatch(last) or next_token(last) != value:
            raise AwsError("InvalidPaginationTokenException", "Invalid token")
        return last


def next_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def ratio(value: float, whole: int) -> float:
    return round(value / whole, 6) if whole else 0.0


def bounding_box(box: Box, frame: tuple[int, int]) -> dict[str, float]:
    """A box as ratios of the photo's width and height, Rekognition's BoundingBox."""
    width, height = frame
    return {
        "Width": ratio(box.width, width),
        "Height": ratio(box.height, height),
        "Left": ratio(box.left, width),
        "Top": ratio(box.top, height),
    }


def landmarks(face: DetectedFace) -> list[dict[str, Any]]:
    """dlib's five points as Rekognition's eyeLeft, eyeRight (the eye centres, left and
    right as the photo shows them) and nose, in ratios of the photo."""
    width, height = face.frame
    points = face.landmarks
    eyes = sorted(
        [
            ((points[0][0] + points[1][0]) / 2, (points[0][1] + points[1][1]) / 2),
            ((points[2][0] + points[3][0]) / 2, (points[2][1] + points[3][1]) / 2),
        ]
    )
    named = [("eyeLeft", eyes[0]), ("eyeRight", eyes[1]), ("nose", points[4])]
    return [{"Type": t, "X": ratio(x, width), "Y": ratio(y, height)} for t, (x, y) in named]


def pose(measures: FaceMeasures) -> dict[str, float]:
    return {"Roll": measures.roll, "Yaw": measures.yaw, "Pitch": measures.pitch}


def quality(measures: FaceMeasures) -> dict[str, float]:
    """Brightness: the face's mean intensity as a percent of 255. Sharpness:
    faceverify's own measure (variance of the Laplacian on the aligned chip; LFW's
    median is 13.5, under 4.5 fails the limit), capped at 100: not AWS's scale."""
    return {
        "Brightness": round(measures.brightness / 255 * 100, 3),
        "Sharpness": round(min(100.0, measures.sharpness), 3),
    }
