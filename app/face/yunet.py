"""YuNet, a small ONNX face detector (models/yunet/SOURCE.md), on ONNX Runtime.

It finds faces dlib's HOG misses: small ones (down to ~20 px wide in a 640x480 frame)
and turned ones, in ~10 ms a 640x640 forward pass on one thread, where dlib's CNN
detector takes 0.3-0.9 s. The decoding is the one OpenCV's FaceDetectorYN uses for this
model: per stride (8, 16, 32) a prior at each cell, no anchors; the score is
sqrt(class x objectness); box centre and landmarks are offsets in strides from the cell,
width and height exp() of theirs; then non-maximum suppression.

Input: BGR, 0-255 floats (as OpenCV's blobFromImage hands it), padded at the right and
bottom to a multiple of 32.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once, so
one detector serves every thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.face.ahead import ahead, made

STRIDES = (8, 16, 32)
# What OpenCV's FaceDetectorYN samples use; below it the model's own ranking is noise.
SCORE_THRESHOLD = 0.6
NMS_IOU = 0.3
# The model's fixed multiple: its three strides and the padding OpenCV applies.
MULTIPLE = 32
# The half-size pass runs only when the first pass's best lies between this and the
# threshold: the blurred faces it recovers scored 0.31-0.57 at 640 px; photos without a
# face score under 0.15 (coffee.png 0.13, rocket.jpg 0.06), and skip it (~3 ms).
HALF_PASS_FROM = 0.2


@dataclass(frozen=True)
class YunetFace:
    """One detection in the coordinates of the image given: box corners (left, top,
    right, bottom, exclusive right/bottom), score 0-1, and five landmarks in YuNet's
    order: the right eye, the left eye (the person's: the right eye is on the image's
    left), the nose tip, the right and the left mouth corner."""

    left: float
    top: float
    right: float
    bottom: float
    score: float
    landmarks: tuple[tuple[float, float], ...]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class YunetDetector:
    """YuNet on ONNX Runtime, one intra-op thread (the server runs several requests at
    once; each detection is one small forward pass).

    Args:
        path: the .onnx file (the dynamic-input one: any multiple of 32).
        max_side: the longest side it looks at; a larger photo is shrunk to it first.
        score_threshold: the lowest score kept.
    """

    def __init__(
        self, path: Path, *, max_side: int = 640, score_threshold: float = SCORE_THRESHOLD
    ) -> None:
        self.session = made(("yunet", str(path)), lambda: _session(path))
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.max_side = max_side
        self.score_threshold = score_threshold

    @staticmethod
    def ahead(path: Path) -> None:
        """Start making the session on a thread (app/face/ahead.py)."""
        ahead(("yunet", str(path)), lambda: _session(path))

    def detect(self, rgb: np.ndarray, score_threshold: float | None = None) -> list[YunetFace]:
        """Every face in an ``(H, W, 3)`` uint8 RGB image, best first, in its coordinates
        (those scoring at least ``score_threshold``, by default the detector's).

        When a pass at ``max_side`` finds something, but nothing scoring the detector's
        own threshold (its best at HALF_PASS_FROM or more), a second at half that looks
        again, and the pass with the better best score is kept: YuNet scores a large
        blurred face low at 640 px and high at 320 (obama2.jpg blurred by 1/25 of its
        width: 0.31 against 0.89), at ~1/4 of the first pass's cost."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        low = min(threshold, self.score_threshold)
        faces = self._pass(rgb, self.max_side, min(low, HALF_PASS_FROM))
        best = max((f.score for f in faces), default=0.0)
        if (
            HALF_PASS_FROM <= best < self.score_threshold
            and max(rgb.shape[:2]) > self.max_side // 2 >= MULTIPLE
        ):
            again = self._pass(rgb, self.max_side // 2, low)
            if max((f.score for f in again), default=0.0) > best:
                faces = again
        return [f for f in faces if f.score >= threshold]

    def _pass(self, rgb: np.ndarray, max_side: int, threshold: float) -> list[YunetFace]:
        height, width = rgb.shape[:2]
        scale = min(1.0, max_side / max(height, width))
        image = rgb
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        blob = _blob(image)
        outputs = self.session.run(self.outputs, {self.input: blob})
        named = dict(zip(self.outputs, outputs, strict=True))
        faces = decode(named, blob.shape[2], blob.shape[3], threshold)
        if scale < 1.0:
            faces = [_scaled(f, 1.0 / scale) for f in faces]
        return faces


def _blob(rgb: np.ndarray) -> np.ndarray:
    """The network's input: BGR, float32, NCHW, padded to a multiple of MULTIPLE."""
    height, width = rgb.shape[:2]
    padded_h = -(-height // MULTIPLE) * MULTIPLE
    padded_w = -(-width // MULTIPLE) * MULTIPLE
    blob = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
    blob[0, :, :height, :width] = rgb[:, :, ::-1].transpose(2, 0, 1)
    return blob


def decode(
    outputs: dict[str, np.ndarray], height: int, width: int, score_threshold: float
) -> list[YunetFace]:
    """The detections in the network's outputs for a ``height`` x ``width`` input."""
    boxes, scores, marks = [], [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0.0, 1.0)
        assert rows * cols == len(cls), "the output does not match the input's size"
        score = np.sqrt(cls * obj)
        keep = np.nonzero(score >= score_threshold)[0]
        if not len(keep):
            continue
        row, col = np.divmod(keep, cols)
        bbox = outputs[f"bbox_{stride}"][0, keep].astype(np.float64)
        kps = outputs[f"kps_{stride}"][0, keep].astype(np.float64)
        cx, cy = (col + bbox[:, 0]) * stride, (row + bbox[:, 1]) * stride
        w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        scores.append(score[keep])
        points = kps.reshape(-1, 5, 2)
        points[:, :, 0] = (points[:, :, 0] + col[:, None]) * stride
        points[:, :, 1] = (points[:, :, 1] + row[:, None]) * stride
        marks.append(points)
    if not boxes:
        return []
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    all_marks = np.concatenate(marks)
    return [
        YunetFace(
            left=float(all_boxes[i, 0]),
            top=float(all_boxes[i, 1]),
            right=float(all_boxes[i, 2]),
            bottom=float(all_boxes[i, 3]),
            score=float(all_scores[i]),
            landmarks=tuple((float(x), float(y)) for x, y in all_marks[i]),
        )
        for i in nms(all_boxes, all_scores, NMS_IOU)
    ]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=np.int64)
        kept.append(int(best))
        if not len(rest):
            break
        left = np.maximum(boxes[best, 0], boxes[rest, 0])
        top = np.maximum(boxes[best, 1], boxes[rest, 1])
        right = np.minimum(boxes[best, 2], boxes[rest, 2])
        bottom = np.minimum(boxes[best, 3], boxes[rest, 3])
        inner = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
        overlap = inner / (area[best] + area[rest] - inner)
        order = list(rest[overlap <= iou])
    return kept


def _scaled(face: YunetFace, factor: float) -> YunetFace:
    return YunetFace(
        face.left * factor,
        face.top * factor,
        face.right * factor,
        face.bottom * factor,
        face.score,
        tuple((x * factor, y * factor) for x, y in face.landmarks),
    )
