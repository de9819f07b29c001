"""Locating and checking the model weight files named in models/manifest.json."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelFileError


@dataclass(frozen=True)
class WeightFile:
    name: str
    path: Path
    sha256: str
    licence: str
    source: str
    # The file itself is absent; its prepared form (checked) is used instead.
    prepared_only: bool = False


def installed_weights_dir() -> Path | None:
    """The models/ folder of the installed face_recognition_models package.

    Found without importing the package: its ``__init__`` imports ``pkg_resources``,
    which recent setuptools no longer ship.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: Path, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so a replaced file is hashed again.
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(
    manifest_path: Path,
    weights_dir: Path | None,
    *,
    prepared: Callable[[str, str], bool] | None = None,
) -> dict[str, WeightFile]:
    """Find every file of the manifest and check its sha256.

    Args:
        manifest_path: models/manifest.json.
        weights_dir: where the .dat files are; None means the installed
            face_recognition_models package.
        prepared: ``(name, sha256) -> bool``: whether a missing file's prepared form
            (the encoder's checked ONNX conversion of exactly that file) stands in for
            it. The container image ships only the conversion.

    Returns:
        The files by manifest name.

    Raises:
        ModelFileError: the manifest, the folder or a file is missing, or a file's
            sha256 differs from the manifest's, with what to do about it.
    """
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"Cannot read the model manifest {manifest_path}: {exc}") from exc
    folder = weights_dir or installed_weights_dir()
    if folder is None:
        raise ModelFileError(
            "The model weights were not found: the Python package face_recognition_models is "
            "not installed. Install it (pip install face_recognition_models) or set "
            "FACEVERIFY_WEIGHTS_DIR to a folder holding the .dat files."
        )
    return {
        entry["name"]: _checked_file(
            manifest_path.parent if entry.get("bundled") else folder, entry, prepared
        )
        for entry in manifest["models"]
    }


def _checked_file(
    folder: Path, entry: dict[str, str], prepared: Callable[[str, str], bool] | None
) -> WeightFile:
    """One manifest entry's file, its sha256 checked (or its prepared form standing in)."""
    path = folder / entry["file"]
    if not path.is_file() and prepared is not None and prepared(entry["name"], entry["sha256"]):
        return WeightFile(
            name=entry["name"],
            path=path,
            sha256=entry["sha256"],
            licence=entry["licence"],
            source=entry["source"],
            prepared_only=True,
        )
    if not path.is_file():
        raise ModelFileError(
            f"Model file {entry['file']} is missing from {folder}. "
            + (
                "It ships inside faceverify: reinstall faceverify."
                if entry.get("bundled")
                else "Reinstall face_recognition_models or point FACEVERIFY_WEIGHTS_DIR at "
                "a folder with it."
            )
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelFileError(
            f"Model file {path} has sha256 {actual}, but the manifest expects "
            f"{entry['sha256']}: the file is corrupt or a different model. Reinstall "
            "face_recognition_models."
        )
    return WeightFile(
        name=entry["name"],
        path=path,
        sha256=actual,
        licence=entry["licence"],
        source=entry["source"],
    )
