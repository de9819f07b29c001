"""The SBOM the image build writes (app/sbom.py, `faceverify sbom`) and where faceverify
says it is (issue 29). The image's own SBOM is checked in tests/test_container.py."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

import app.sbom
from app.cli import cli

ROOT = Path(__file__).resolve().parent.parent
FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))
CYCLONEDX = str(Path(sys.executable).with_name("cyclonedx-py"))


def test_the_sbom_lists_every_package_every_model_and_the_wheels(tmp_path: Path) -> None:
    """What the Dockerfile runs, on this environment: cyclonedx-py, then
    `faceverify sbom --build` with pip's install report, after `models prepare`."""
    env = {**os.environ, "FACEVERIFY_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([FACEVERIFY, "models", "prepare"], check=True, env=env, timeout=120)
    env_bom = tmp_path / "env.cdx.json"
    subprocess.run(
        [CYCLONEDX, "environment", "--no-validate", "--output-reproducible"]
        + ["--pyproject", str(ROOT / "pyproject.toml"), "-o", str(env_bom), sys.executable],
        check=True,
        timeout=120,
        capture_output=True,
    )
    numpy = importlib.metadata.version("numpy")
    report = tmp_path / "report.json"
    wheel = {"url": "https://files.example/numpy.whl", "sha256": "ab" * 32}
    report.write_text(
        json.dumps(
            {
                "install": [
                    {
                        "metadata": {"name": "numpy", "version": numpy},
                        "download_info": {
                            "url": wheel["url"],
                            "archive_info": {"hashes": {"sha256": wheel["sha256"]}},
                        },
                    }
                ]
            }
        )
    )
    out = tmp_path / "sbom.cdx.json"
    built = subprocess.run(
        [FACEVERIFY, "sbom", "--build", str(env_bom), "--install-report", str(report)]
        + ["--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    bom = json.loads(out.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["metadata"]["component"]["name"] == "faceverify"
    libraries = {
        canonicalize_name(c["name"]): c for c in bom["components"] if c["type"] == "library"
    }
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in ("faceverify",):
            assert libraries[name]["version"] == dist.version, name
    numpy_refs = libraries["numpy"]["externalReferences"]
    assert {
        "type": "distribution",
        "url": wheel["url"],
        "comment": "the file pip installed, checked against requirements/run.txt",
        "hashes": [{"alg": "SHA-256", "content": wheel["sha256"]}],
    } in numpy_refs
    models = {c["bom-ref"]: c for c in bom["components"] if c["type"] == "machine-learning-model"}
    manifest = json.loads((ROOT / "models/manifest.json").read_text())["models"]
    for entry in manifest:
        model = models[f"model:{entry['name']}"]
        assert model["hashes"] == [{"alg": "SHA-256", "content": entry["sha256"]}]
        assert model["licenses"] == [{"license": {"name": entry["licence"]}}]
    # YuNet ships inside faceverify, from its own repository, not face_recognition_models.
    yunet = {r["type"]: r["url"] for r in models["model:yunet"]["externalReferences"]}
    assert yunet == {"vcs": next(m for m in manifest if m["name"] == "yunet")["source_url"]}
    shipped = {p["name"]: p["value"] for p in models["model:yunet"]["properties"]}
    assert shipped["faceverify:shipped"].endswith("yunet/yunet_n_dynamic.onnx")
    (onnx,) = (tmp_path / "cache").glob("*.onnx")
    converted = models["model:dlib_resnet_v1.onnx"]
    assert converted["hashes"][0]["content"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    (detector,) = (tmp_path / "cache").glob("dlib_frontal_face_detector-*.svm")
    saved = models["model:dlib_frontal_face_detector"]
    assert saved["hashes"][0]["content"] == hashlib.sha256(detector.read_bytes()).hexdigest()
    root = next(d for d in bom["dependencies"] if d["ref"] == "root-component")
    assert set(models) <= set(root["dependsOn"])
    refs = {d["ref"] for d in bom["dependencies"]}
    assert set(models) <= refs


def test_faceverify_sbom_says_where_the_files_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.sbom, "SHARE_DIR", tmp_path)
    missing = CliRunner().invoke(cli, ["sbom"])
    assert missing.exit_code == 1 and "none in" in missing.output
    (tmp_path / "sbom.cdx.json").write_text("{}")
    (tmp_path / "LICENSES.md").write_text("# Licences")
    found = CliRunner().invoke(cli, ["sbom"])
    assert found.exit_code == 0
    assert str(tmp_path / "sbom.cdx.json") in found.output
    assert str(tmp_path / "LICENSES.md") in found.output


def test_info_says_where_the_sbom_is(
    fake_client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.sbom, "SHARE_DIR", tmp_path)
    assert fake_client.get("/info").json()["build"] == {"sbom": None, "licenses": None}
    (tmp_path / "sbom.cdx.json").write_text("{}")
    (tmp_path / "LICENSES.md").write_text("# Licences")
    assert fake_client.get("/info").json()["build"] == {
        "sbom": str(tmp_path / "sbom.cdx.json"),
        "licenses": str(tmp_path / "LICENSES.md"),
    }
