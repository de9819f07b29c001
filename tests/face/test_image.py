"""Decoding: formats, modes, EXIF orientation, and the errors bad bytes get."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.face.image import decode_image, decode_image_scaled
from tests.helpers import HOPPER_VARIANTS, data, png_header_only

CAP = 40_000_000


def decode(name: str) -> np.ndarray:
    return decode_image(data(name), max_pixels=CAP)


@pytest.mark.parametrize(
    "name",
    ["hopper.jpg", *HOPPER_VARIANTS],
)
def test_every_supported_format_decodes_to_the_same_rgb_picture(name: str) -> None:
    reference = decode("hopper.png").astype(np.float64)
    rgb = decode(name)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    # Tolerance: lossy JPEG/WebP and the GIF palette differ from the PNG by a few levels;
    # grayscale versions lose colour. 25 of 255 mean absolute difference catches a wrong
    # orientation, channel order or 16-bit scaling (those give 40+).
    assert np.abs(rgb.astype(np.float64).mean(axis=2) - reference.mean(axis=2)).mean() < 25


def test_16bit_grayscale_is_rescaled_not_clipped() -> None:
    rgb = decode("hopper_16bit.pgm")
    # Clipping 0..65535 to 255 would make almost every pixel white.
    assert 40 < rgb.mean() < 200
    assert (rgb == 255).mean() < 0.05


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = decode("hopper.jpg").astype(np.float64)
    rotated = decode(f"hopper_orientation_{orientation}.jpg").astype(np.float64)
    assert rotated.shape == upright.shape
    # Each file is a separately compressed JPEG: same picture within JPEG noise (< 12
    # mean levels); a missed rotation or mirror differs by 40+.
    assert np.abs(rotated - upright).mean() < 12


def test_rgba_is_composited_onto_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    rgb = decode_image(buf.getvalue(), max_pixels=CAP)
    assert (rgb == 255).all()


def test_cmyk_jpeg_becomes_rgb() -> None:
    rgb = decode("pil_sample_cmyk.jpg")
    assert rgb.shape == (100, 100, 3)
    # The picture is red text ("RED") on black: a wrong CMYK conversion (e.g. inverted
    # Adobe CMYK) makes it light, or the text not red.
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert 0.05 < red.mean() < 0.5
    assert rgb.mean() < 60


def test_32bit_png_decodes() -> None:
    assert decode("32bit.png").shape == (1200, 626, 3)


def test_truncated_jpeg_is_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        decode("truncated_jpeg.jpg")


def test_text_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"this is not an image, just some text\n", max_pixels=CAP)


def test_empty_bytes_are_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        decode_image(b"", max_pixels=CAP)


def test_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(50_000, 50_000), max_pixels=CAP)
    # Also under Pillow's own decompression-bomb limit: our cap still applies.
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(8000, 6000), max_pixels=CAP)


def test_a_configured_lower_cap_applies() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(data("hopper.png"), max_pixels=128 * 127)
    assert decode_image(data("hopper.png"), max_pixels=128 * 128).shape == (128, 128, 3)


def test_first_frame_of_an_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 0, 0), (255, 255, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), max_pixels=CAP).max() == 0


def test_unsupported_format_is_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PCX")
    with pytest.raises(UnsupportedMediaType):
        decode_image(buf.getvalue(), max_pixels=CAP)


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


def test_large_jpegs_decode_at_reduced_scale_but_no_smaller_than_asked() -> None:
    rgb, scale = decode_image_scaled(jpeg(3000, 2000), max_pixels=CAP, min_side=1280)
    # 1/2 gives 1500 >= 1280; 1/4 would give 750.
    assert scale == 0.5 and rgb.shape == (1000, 1500, 3)
    rgb, scale = decode_image_scaled(jpeg(2000, 1500), max_pixels=CAP, min_side=1280)
    assert scale == 1.0 and rgb.shape == (1500, 2000, 3)


def test_other_formats_are_reduced_by_a_whole_factor_after_decoding() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(buf, "PNG")
    rgb, scale = decode_image_scaled(buf.getvalue(), max_pixels=CAP, min_side=1280)
    assert scale == 0.5 and rgb.shape == (1000, 1500, 3)
    rgb, scale = decode_image_scaled(buf.getvalue(), max_pixels=CAP)
    assert scale == 1.0 and rgb.shape == (2000, 3000, 3)


_PEAK_SCRIPT = """
import resource, sys
from app.face.image import decode_image_scaled
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb, scale = decode_image_scaled(data, max_pixels=40_000_000, min_side=1000)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert rgb.shape == (1100, 1000, 3) and rgb[250, 250, 0] > 100, (rgb.shape, rgb[250, 250])
print((peak - before) // 1024)
"""


@pytest.mark.parametrize("kind", ["16bit", "float"])
def test_a_small_file_that_decodes_huge_costs_its_size_once(kind: str, tmp_path) -> None:
    """Issue 9: an 88 KB 16-bit PNG of 6000x6600 (or a float TIFF) peaked at ~1.06 GB
    (1.2 GB) while decoding; now at most its decoded size (79 MB / 158 MB) and a little.
    Measured in a fresh process that only reads and decodes the file."""
    import subprocess
    import sys

    dtype = np.uint16 if kind == "16bit" else np.float32
    pixels = np.zeros((6600, 6000), dtype=dtype)
    pixels[1000:2000, 1000:2000] = 40000 if kind == "16bit" else 3.5
    path = tmp_path / "huge"
    if kind == "16bit":
        Image.fromarray(pixels).save(path, "PNG", optimize=True)
    else:
        Image.fromarray(pixels).save(path, "TIFF", compression="tiff_adobe_deflate")
    del pixels
    assert path.stat().st_size < 300_000  # a small file...
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout)
    assert peak_mb < 200, f"decoding peaked {peak_mb} MB above the start"
