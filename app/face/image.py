"""Image decoding: bytes in, an upright 8-bit RGB numpy array out."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from pi_heif import register_heif_opener
from PIL import Image, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

# HEIC/HEIF (phone cameras) through pi-heif's Pillow plugin (pillow-heif's decoder).
register_heif_opener()

# Formats we promise to read; Pillow knows more (e.g. EPS), which we refuse rather than
# hand untrusted bytes to less-used decoders.
# Pillow's format name -> what people call it. The one list: the checks and the messages
# are made from it.
FORMAT_NAMES = {
    "JPEG": "JPEG",
    "MPO": "JPEG",  # multi-picture JPEG from some cameras
    "PNG": "PNG",
    "WEBP": "WebP",
    "HEIF": "HEIC/HEIF",
    "BMP": "BMP",
    "GIF": "GIF",
    "TIFF": "TIFF",
    "PPM": "PPM/PGM",
}
ALLOWED_FORMATS = frozenset(FORMAT_NAMES)
SUPPORTED_TEXT = ", ".join(dict.fromkeys(FORMAT_NAMES.values()))


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an uploaded photo at full resolution; see :func:`decode_image_scaled`."""
    return decode_image_scaled(data, max_pixels=max_pixels)[0]


def decode_image_scaled(
    data: bytes, *, max_pixels: int, min_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode an uploaded photo into an ``(H, W, 3)`` uint8 RGB array.

    With ``min_side``, a JPEG whose longest side is more than twice that is decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several times faster than decoding in
    full and resizing), the smallest whose longest side is still >= ``min_side``. Other
    formats are decoded in full, then reduced by the largest whole factor that keeps the
    longest side >= ``min_side`` (a box filter) before anything else is done to them, so
    a small file that decodes huge (an 88 KB 16-bit PNG of 40 MP) costs its decoded size
    once, never a wide float copy of it (issue 9: 1 GB peak per request before).

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
    img = _opened(data, max_pixels)
    width, height = img.size
    try:
        img.seek(0)
        scale = 1.0
        if min_side and img.format in ("JPEG", "MPO") and max(width, height) >= 2 * min_side:
            factor = min_side / max(width, height)
            img.draft(img.mode, (math.ceil(width * factor), math.ceil(height * factor)))
            scale = img.size[0] / width
        img.load()
        orientation = _orientation(img)
        picture: Image.Image = img
        if min_side and scale == 1.0 and max(width, height) >= 2 * min_side:
            picture, scale = _reduce(img, max(width, height) // min_side)
        return _to_rgb_array(_upright(picture, orientation)), scale
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"The image data is corrupt or truncated: {exc}") from exc


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The photo opened (its header read, no pixel decoded) and checked: a supported
    format, within the pixel cap, not empty."""
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
            f"The data is not an image in a supported format ({SUPPORTED_TEXT})."
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"The image could not be read: {exc}") from exc

    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(
            f"Image format {img.format!r} is not supported; send one of {SUPPORTED_TEXT}."
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
    return img


# Modes whose pixels Image.reduce cannot average; they are reduced in numpy instead.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _reduce(img: Image.Image, factor: int) -> tuple[Image.Image, float]:
    """``img`` box-filtered by ``factor`` (>= 2) in each direction, and the scale."""
    width = img.size[0]
    if img.mode in _WIDE_INT_MODES:
        # Block means straight from the 16-bit pixels, a band of rows at a time: no
        # full-size copy of any kind is made beside Pillow's own.
        w, h = (img.size[0] // factor) * factor, (img.size[1] // factor) * factor
        out = np.empty((h // factor, w // factor), dtype=np.float32)
        band = factor * 64
        for top in range(0, h, band):
            rows = np.asarray(img.crop((0, top, w, min(top + band, h))))
            blocks = rows.reshape(rows.shape[0] // factor, factor, w // factor, factor)
            out[top // factor : top // factor + blocks.shape[0]] = blocks.mean(
                axis=(1, 3), dtype=np.float32
            )
        small = Image.fromarray(out, mode="F")
        # Keep the 16-bit meaning for the conversion to 8 bits.
        small.info["faceverify_16bit"] = True
    elif img.mode in ("P", "1", "PA"):
        small = img.convert("RGBA" if "transparency" in img.info else "RGB").reduce(factor)
    else:
        small = img.reduce(factor)
    return small, small.size[0] / width


# EXIF Orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent), read before any reduction drops it."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value in _TRANSPOSE else 1
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        # A malformed EXIF block should not cost the user their photo: use it as stored.
        return 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    return img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # float32, scaled in place: one working copy of the (already reduced) image.
        arr = np.array(img, dtype=np.float32)
        if mode == "F" and not img.info.get("faceverify_16bit"):
            lo, hi = float(arr.min()), float(arr.max())
            arr -= lo
            arr *= 255.0 / (hi - lo or 1.0)
        else:
            # 16-bit data (PNG/PGM/TIFF) arrives as I or I;16; scale the 0..65535 range.
            wide = mode.startswith("I;16") or img.info.get("faceverify_16bit")
            top = 65535.0 if wide or arr.max() > 255 else 255.0
            arr *= 255.0 / top
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        gray = arr.astype(np.uint8)
        del arr
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
