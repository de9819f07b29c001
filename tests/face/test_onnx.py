"""The ONNX conversion of dlib's ResNet against dlib itself, on real face chips."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.face.dlib_resnet import DlibEncoder, OnnxEncoder, prepared_onnx_model
from app.face.onnx_convert import DlibFormatError, read_dlib_resnet
from app.face.timing import Timings
from app.face.weights import WeightFile, installed_weights_dir, sha256_file
from app.service import FaceService
from app.settings import Settings
from tests.helpers import DATA, parts

pytestmark = pytest.mark.model

# The parity bar: every embedding and every pairwise distance within 1e-4 of
# dlib's. Seen here: 2.6e-7 worst embedding difference (float32 summation order).
TOLERANCE = 1e-4
PHOTOS = [
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "obama_small.jpg",
    "biden.jpg",
    "two_people.jpg",
    "hopper.jpg",
    "curie_upright.jpg",
    "astronaut.png",
    "32bit.png",
]


def variants(img: Image.Image) -> list[Image.Image]:
    rgb = img.convert("RGB")
    half = rgb.resize((rgb.width // 2, rgb.height // 2), Image.Resampling.BILINEAR)
    return [
        rgb,
        ImageOps.mirror(rgb),
        ImageOps.grayscale(rgb).convert("RGB"),
        half,
        ImageOps.mirror(half),
        rgb.rotate(8, expand=True, fillcolor=(128, 128, 128)),
    ]


def resnet_dat() -> Path:
    folder = installed_weights_dir()
    assert folder is not None
    return folder / "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def chips(real_service: FaceService) -> np.ndarray:
    detector = parts(real_service).pipeline.detector  # type: ignore[attr-defined]
    encoder = parts(real_service).pipeline.encoder  # type: ignore[attr-defined]
    found = []
    for name in PHOTOS:
        with Image.open(DATA / name) as img:
            for variant in variants(ImageOps.exif_transpose(img)):
                rgb = np.asarray(variant)
                found += [encoder.align(rgb, f) for f in detector.detect(rgb)]
    return np.stack(found)


@pytest.mark.slow
def test_onnx_embeddings_match_dlib(chips: np.ndarray, real_service: FaceService) -> None:
    assert len(chips) >= 50
    resnet = parts(real_service).pipeline.encoder  # type: ignore[attr-defined]
    assert isinstance(resnet, OnnxEncoder)
    reference = DlibEncoder(resnet_dat()).encode(chips)
    one_batch = resnet.encode(chips)
    one_by_one = np.concatenate([resnet.encode(chips[i : i + 1]) for i in range(len(chips))])
    for got in (one_batch, one_by_one):
        assert np.abs(got - reference).max() < TOLERANCE
    pairs = np.array(list(itertools.combinations(range(len(chips)), 2)))
    d_ref = np.linalg.norm(reference[pairs[:, 0]] - reference[pairs[:, 1]], axis=1)
    d_onnx = np.linalg.norm(one_batch[pairs[:, 0]] - one_batch[pairs[:, 1]], axis=1)
    assert np.abs(d_ref - d_onnx).max() < TOLERANCE


def test_conversion_is_cached_and_checked_by_sha256(tmp_path: Path) -> None:
    dat = resnet_dat()
    resnet = WeightFile("dlib_resnet_v1", dat, sha256_file(dat), "", "")
    first = prepared_onnx_model(resnet, tmp_path)
    good = sha256_file(first)
    stamp = first.stat().st_mtime_ns
    assert prepared_onnx_model(resnet, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not converted again
    first.write_bytes(first.read_bytes()[:-10])  # corrupt the cached file
    again = prepared_onnx_model(resnet, tmp_path)
    assert sha256_file(again) == good  # converted again, byte for byte the same
    assert OnnxEncoder(again).encode(np.zeros((1, 150, 150, 3), np.uint8)).shape == (1, 128)


def test_a_file_of_another_network_is_refused() -> None:
    data = Settings().manifest_file().read_bytes()
    with pytest.raises(DlibFormatError):
        read_dlib_resnet(data)


def test_the_onnx_conversion_stands_in_for_a_missing_resnet_file(tmp_path: Path) -> None:
    """The container image ships the ONNX conversion, not the 22 MB .dat it came from:
    the weights check accepts that only while the cached conversion is the checked one
    of exactly the manifest's file, and says what to do otherwise."""
    from app.errors import ModelFileError
    from app.face.registry import build_pipeline, load_checked_weights

    folder, cache = tmp_path / "weights", tmp_path / "cache"
    folder.mkdir()
    installed = installed_weights_dir()
    assert installed is not None
    for name in ("shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat"):
        (folder / name).symlink_to(installed / name)
    settings = Settings(weights_dir=folder, cache_dir=cache, data_dir=tmp_path)
    with pytest.raises(
        ModelFileError, match="dlib_face_recognition_resnet_model_v1.dat is missing"
    ):
        load_checked_weights(settings)  # no conversion yet: the .dat is needed
    dat = resnet_dat()
    prepared_onnx_model(WeightFile("dlib_resnet_v1", dat, sha256_file(dat), "", ""), cache)
    weights = load_checked_weights(settings)
    assert weights["dlib_resnet_v1"].prepared_only
    assert not weights["shape_predictor_5"].prepared_only
    pipeline = build_pipeline(settings, weights)
    faces = pipeline.find_faces((DATA / "obama.jpg").read_bytes(), Timings())
    assert pipeline.embed(faces, Timings()).shape == (1, 128)
    with pytest.raises(ModelFileError, match="FACEVERIFY_ENCODER=dlib"):
        build_pipeline(settings.model_copy(update={"encoder": "dlib"}), weights)
    (onnx,) = cache.glob("*.onnx")
    onnx.write_bytes(onnx.read_bytes()[:-10])  # damaged: no longer stands in
    with pytest.raises(ModelFileError, match="is missing"):
        load_checked_weights(settings)
