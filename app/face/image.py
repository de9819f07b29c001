"""Image decoding: bytes in, an upright 8-bit RGB numpy array out."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

# HEIC/HEIF (phone cameras) through pillow-heif's Pillow plugin.
register_heif_opener()

# Formats we promise to read; Pillow knows more (e.g. EPS), which we refuse rather than
# hand untrusted bytes to less-used decoders.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "MPO", "HEIF"})


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an uploaded photo at full resolution; see :func:`decode_image_scaled`."""
    return decode_image_scaled(data, max_pixels=max_pixels)[0]


def decode_image_scaled(
    data: bytes, *, max_pixels: int, min_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode an uploaded photo into an ``(H, W, 3)`` uint8 RGB array.

    With ``min_side``, a JPEG whose longest side is more than twice that is decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several times faster than decoding in
    full and resizing), the smallest whose longest side is still >= ``min_side``.
    Other formats are always decoded in full.

    Returns:
        The array and its scale relative to the photo's own pixels (1.0, 0.5, 0.25 or
        0.125): a coordinate in the array divided by the scale is one in the photo.

    - The EXIF Orientation tag is applied, so the array is the photo as a person sees it.
    - Every mode becomes RGB: grayscale is repeated into three channels, 16-bit and float
      modes are rescaled to 0..255 (not clipped), palettes are expanded, CMYK is
      converted, and transparency is composited onto white.
    - Animated GIF/WebP: the first frame.

    Raises:
        UnsupportedMediaType: the bytes are not an image in a format we read.
        ImageTooLarge: the header declares more than ``max_pixels`` pixels. Checked before
            any pixel is decoded, so a small file declaring 50000x50000 costs nothing.
        InvalidImage: a known format whose data does not decode (truncated, corrupt).
    """
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            # We apply our own, lower pixel cap below; Pillow's warning is redundant.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"The image declares more pixels than the cap of {max_pixels:,}.",
            max_pixels=max_pixels,
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaType(
            "The data is not an image in a supported format "
            "(JPEG, PNG, WebP, HEIC, BMP, GIF, TIFF, PPM/PGM)."
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"The image could not be read: {exc}") from exc

    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(
            f"Image format {img.format!r} is not supported; send JPEG, PNG, WebP, BMP, GIF, "
            "TIFF or PPM/PGM."
        )
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the cap is "
            f"{max_pixels:,}.",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )
    if width == 0 or height == 0:
        raise InvalidImage("The image has no pixels.")
    try:
        img.seek(0)
        scale = 1.0
        if min_side and img.format in ("JPEG", "MPO") and max(width, height) >= 2 * min_side:
            factor = min_side / max(width, height)
            img.draft(img.mode, (math.ceil(width * factor), math.ceil(height * factor)))
            scale = img.size[0] / width
        img.load()
        return _to_rgb_array(_upright(img)), scale
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"The image data is corrupt or truncated: {exc}") from exc


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        # A malformed EXIF block should not cost the user their photo: use it as stored.
        return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            # 16-bit data (PNG/PGM/TIFF) arrives as I or I;16; scale the 0..65535 range.
            top = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
            arr = arr / top * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
