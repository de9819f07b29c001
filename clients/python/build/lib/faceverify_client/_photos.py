"""A photo as the bytes the API takes, from whatever the caller holds: a path, bytes, a
binary file object, a PIL image or an RGB numpy array (PIL and numpy are optional)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, Union

Photo = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Any]


def photo_bytes(photo: Photo) -> tuple[str, bytes]:
    """(a file name, the encoded bytes) of ``photo``."""
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return "photo", bytes(photo)
    if isinstance(photo, (str, os.PathLike)):
        path = Path(photo)
        return path.name, path.read_bytes()
    if hasattr(photo, "read"):
        data = photo.read()
        if not isinstance(data, bytes):
            raise TypeError("a file object must be opened in binary mode ('rb')")
        return Path(getattr(photo, "name", "photo")).name, data
    if type(photo).__module__.startswith("PIL."):
        return "photo.png", _png(photo)
    if type(photo).__module__ == "numpy" and getattr(photo, "ndim", 0) in (2, 3):
        from PIL import Image

        array: Any = photo
        return "photo.png", _png(Image.fromarray(array))
    raise TypeError(
        f"a photo is a path, bytes, a binary file, a PIL image or an RGB numpy array, "
        f"not {type(photo).__name__}"
    )


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
