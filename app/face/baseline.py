"""face_recognition's way from photo to embedding, the baseline ``faceverify bench``
measures the service against: dlib's HOG with upsample 1 on the full image, then dlib's
own ``compute_face_descriptor`` (the only place outside the face pipeline that calls
dlib's Python API, and it is here, under app/face)."""

from __future__ import annotations

from typing import Any

from app.face.image import decode_image
from app.face.weights import WeightFile


class FaceRecognitionBaseline:
    """One photo -> the first face's embedding, as face_recognition computes it."""

    def __init__(self, weights: dict[str, WeightFile], max_pixels: int) -> None:
        import dlib

        self.max_pixels = max_pixels
        self.detector: Any = dlib.get_frontal_face_detector()
        self.predictor: Any = dlib.shape_predictor(str(weights["shape_predictor_5"].path))
        self.model: Any = dlib.face_recognition_model_v1(str(weights["dlib_resnet_v1"].path))

    def embed(self, data: bytes) -> Any:
        rgb = decode_image(data, max_pixels=self.max_pixels)
        rects = self.detector(rgb, 1)
        if not rects:
            return None
        return self.model.compute_face_descriptor(rgb, self.predictor(rgb, rects[0]))
