"""The image's software bill of materials and licence list (issue 29).

The image build runs cyclonedx-py on the finished virtualenv (every Python package as
a CycloneDX component), then ``faceverify sbom --build`` adds what cyclonedx-py cannot
see: the model files of models/manifest.json (with their sha256) and the ONNX conversion
the image ships instead of the ResNet's .dat, and the sha256 of each wheel pip installed
(from pip's ``--report``). The result lives beside the environment it describes, at
``<venv>/share/faceverify/sbom.cdx.json`` (``/opt/venv/...`` in the image), with
docs/LICENSES.md beside it; ``faceverify sbom`` and ``/info`` say where.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from app.face.weights import WeightFile
    from app.settings import Settings

SHARE_DIR = Path(sys.prefix) / "share" / "faceverify"
SBOM_NAME = "sbom.cdx.json"
LICENSES_NAME = "LICENSES.md"
MODEL_SOURCE = "https://github.com/davisking/dlib-models"
MODEL_PACKAGE = "https://pypi.org/project/face-recognition-models/0.3.0/"


def shipped_file(name: str) -> Path | None:
    """``share/<name>`` if this environment has one (an image's), else None."""
    path = SHARE_DIR / name
    return path if path.is_file() else None


def model_components(
    manifest: dict[str, Any],
    weights: dict[str, WeightFile],
    onnx: tuple[str, Path, str] | None,
    detector: tuple[Path, str, str] | None = None,
) -> list[dict[str, Any]]:
    """A CycloneDX component for each manifest model, marked with whether its file is in
    this environment, one for an ONNX conversion that stands in for a model (``onnx``:
    the model's manifest name, the converted file, its sha256), and one for dlib's
    frontal face detector saved in the cache (``detector``: the file, its sha256, the
    dlib version it came from)."""
    out = []
    for entry in manifest["models"]:
        weight = weights[entry["name"]]
        shipped = not weight.prepared_only and weight.path.is_file()
        out.append(
            {
                "type": "machine-learning-model",
                "bom-ref": f"model:{entry['name']}",
                "name": entry["name"],
                "description": entry["role"],
                "hashes": [{"alg": "SHA-256", "content": entry["sha256"]}],
                "licenses": [{"license": {"name": entry["licence"]}}],
                # A bundled model ships in faceverify's own package; the others in
                # face_recognition_models.
                "externalReferences": [
                    {"type": "vcs", "url": entry.get("source_url", MODEL_SOURCE)},
                    *(
                        []
                        if entry.get("bundled")
                        else [{"type": "distribution", "url": MODEL_PACKAGE}]
                    ),
                ],
                "properties": [
                    {"name": "faceverify:file", "value": entry["file"]},
                    {"name": "faceverify:source", "value": entry["source"]},
                    {
                        "name": "faceverify:shipped",
                        "value": str(weight.path) if shipped else "no (its conversion is)",
                    },
                ],
            }
        )
    if onnx is not None:
        name, path, sha256 = onnx
        source = next(m for m in manifest["models"] if m["name"] == name)
        out.append(
            {
                "type": "machine-learning-model",
                "bom-ref": f"model:{name}.onnx",
                "name": f"{name} (ONNX)",
                "description": f"{name} converted to ONNX at build time "
                "(app/face/onnx_convert.py); the encoder ONNX Runtime runs",
                "hashes": [{"alg": "SHA-256", "content": sha256}],
                "licenses": [{"license": {"name": source["licence"]}}],
                "pedigree": {"notes": f"converted from {source['file']} ({source['sha256']})"},
                "properties": [
                    {"name": "faceverify:file", "value": path.name},
                    {"name": "faceverify:shipped", "value": str(path)},
                ],
            }
        )
    if detector is not None:
        path, sha256, version = detector
        out.append(
            {
                "type": "machine-learning-model",
                "bom-ref": "model:dlib_frontal_face_detector",
                "name": "dlib frontal face detector (HOG)",
                "description": "dlib's HOG frontal face detector, saved at build time so a "
                "start loads it rather than building it from dlib's text (app/face/hog.py)",
                "hashes": [{"alg": "SHA-256", "content": sha256}],
                "licenses": [{"license": {"name": "BSL-1.0 (part of dlib)"}}],
                "pedigree": {"notes": f"saved from dlib {version}'s get_frontal_face_detector()"},
                "properties": [
                    {"name": "faceverify:file", "value": path.name},
                    {"name": "faceverify:shipped", "value": str(path)},
                ],
            }
        )
    return out


def wheel_hashes(report: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (url, sha256) of every archive in a pip ``--report``."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for item in report.get("install", []):
        info = item.get("download_info", {})
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if sha:
            meta = item["metadata"]
            out[(canonicalize_name(meta["name"]), meta["version"])] = (info["url"], sha)
    return out


def build(
    env_bom: dict[str, Any], report: dict[str, Any] | None, models: list[dict[str, Any]]
) -> dict[str, Any]:
    """cyclonedx-py's BOM of the environment (changed in place) with the models and the
    wheels' hashes added."""
    bom = env_bom
    wheels = wheel_hashes(report or {})
    for component in bom.get("components", []):
        wheel = wheels.get((canonicalize_name(component["name"]), component.get("version", "")))
        if wheel is not None:
            url, sha = wheel
            component.setdefault("externalReferences", []).append(
                {
                    "type": "distribution",
                    "url": url,
                    "comment": "the file pip installed, checked against requirements/run.txt",
                    "hashes": [{"alg": "SHA-256", "content": sha}],
                }
            )
    bom["components"] = [*bom.get("components", []), *models]
    dependencies = bom.setdefault("dependencies", [])
    for entry in dependencies:
        if entry.get("ref") == "root-component":
            entry.setdefault("dependsOn", []).extend(m["bom-ref"] for m in models)
    dependencies.extend({"ref": m["bom-ref"]} for m in models)
    return bom


def build_for(settings: Settings, env_bom: Path, report: Path | None, out: Path) -> dict[str, Any]:
    """Write ``out``: the environment's BOM with this installation's models added."""
    from app.face.dlib_resnet import MODEL, prepared_onnx_file
    from app.face.registry import load_checked_weights

    weights = load_checked_weights(settings)
    manifest = json.loads(settings.manifest_file().read_text())
    converted = prepared_onnx_file(weights[MODEL].sha256, settings.resolved_cache_dir())
    onnx = (MODEL, *converted) if converted is not None else None
    models = model_components(manifest, weights, onnx, _cached_detector(settings))
    bom = build(
        json.loads(env_bom.read_text()),
        json.loads(report.read_text()) if report is not None else None,
        models,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    return bom


def _cached_detector(settings: Settings) -> tuple[Path, str, str] | None:
    """The frontal detector's checked saved form in the cache, if `models prepare` made
    one: its file, sha256 and dlib's version."""
    import dlib

    from app.face.hog import cached_frontal_form, frontal_cache_files

    cached = cached_frontal_form(dlib, settings.resolved_cache_dir())
    if cached is None:
        return None
    return frontal_cache_files(dlib, settings.resolved_cache_dir())[0], cached[1], dlib.__version__
