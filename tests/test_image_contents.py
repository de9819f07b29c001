"""What is inside the image (issue 29): exactly the lock's files, an SBOM that names every
package and model, the licence list; and a second build of the same commit installs the
same bytes. Marker ``container``, like tests/test_container.py (`make test-container`)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.containers import build_args, image, run

__all__ = ["image"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lock  # noqa: E402

SHARE = "/opt/venv/share/faceverify"
pytestmark = pytest.mark.container

INSTALLED = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted((d.metadata['Name'], d.version) for d in m.distributions())))"
)


def lock_hashes() -> dict[tuple[str, str], set[str]]:
    """(name, version) -> sha256 of every file requirements/run.txt allows."""
    return {
        (name, str(req.specifier).removeprefix("==")): hashes
        for name, (req, hashes) in lock.entries(ROOT / "requirements/run.txt").items()
    }


def test_the_image_carries_its_sbom_and_licence_list(image: str) -> None:
    where = run("docker", "run", "--rm", image, "faceverify", "sbom")
    assert f"{SHARE}/sbom.cdx.json" in where and f"{SHARE}/LICENSES.md" in where, where
    bom = json.loads(run("docker", "run", "--rm", image, "cat", f"{SHARE}/sbom.cdx.json"))
    licences = run("docker", "run", "--rm", image, "cat", f"{SHARE}/LICENSES.md")
    assert licences == (ROOT / "docs/LICENSES.md").read_text().strip()
    installed = {
        (canonicalize_name(n), v)
        for n, v in json.loads(run("docker", "run", "--rm", image, "python", "-c", INSTALLED))
    }
    # Every package in the image is a component, and nothing else is: the SBOM was made
    # after the build stage's cuts.
    libraries = [c for c in bom["components"] if c["type"] == "library"]
    listed = {(canonicalize_name(c["name"]), c["version"]) for c in libraries}
    assert listed == {(n, v) for n, v in installed if n != "faceverify"}
    assert bom["metadata"]["component"]["name"] == "faceverify"
    # Each came from a file the lock allows, and the SBOM says which.
    allowed = lock_hashes()
    for component in libraries:
        key = (canonicalize_name(component["name"]), component["version"])
        wheels = [
            h["content"]
            for ref in component.get("externalReferences", [])
            if ref["type"] == "distribution"
            for h in ref.get("hashes", [])
        ]
        assert len(wheels) == 1 and wheels[0] in allowed[key], key
    # The model files, by the manifest's sha256; the ONNX file by the one in the image.
    models = {c["bom-ref"]: c for c in bom["components"] if c["type"] == "machine-learning-model"}
    for entry in json.loads((ROOT / "models/manifest.json").read_text())["models"]:
        assert models[f"model:{entry['name']}"]["hashes"][0]["content"] == entry["sha256"]
    onnx = run("docker", "run", "--rm", image, "sh", "-c", "sha256sum /srv/faceverify/cache/*.onnx")
    assert models["model:dlib_resnet_v1.onnx"]["hashes"][0]["content"] == onnx.split()[0]
    svm = run("docker", "run", "--rm", image, "sh", "-c", "sha256sum /srv/faceverify/cache/*.svm")
    assert models["model:dlib_frontal_face_detector"]["hashes"][0]["content"] == svm.split()[0]


# What faceverify's build makes: the virtualenv (packages, SBOM, licence list) and the
# ONNX encoder. The rest is the base image and useradd's files (/etc/shadow records the
# day the user was made, so a build on another day differs there).
BUILT = ("opt/venv/", "srv/faceverify/")


def _files(tag: str) -> dict[str, str]:
    """Path -> sha256 of every file and symlink the build makes; for a .pyc, of what
    follows its 16-byte header (the header holds the source file's mtime)."""
    container = run("docker", "create", tag)
    try:
        export = subprocess.run(
            ["docker", "export", container], capture_output=True, check=True, timeout=600
        ).stdout
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=False)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        for member in tar:
            if not member.name.startswith(BUILT):
                continue
            if member.issym():
                out[member.name] = "-> " + member.linkname
            elif member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                body = data[16:] if member.name.endswith(".pyc") else data
                out[member.name] = ("pyc " if member.name.endswith(".pyc") else "") + (
                    hashlib.sha256(body).hexdigest()
                )
    return out


def test_a_second_build_installs_the_same_bytes(image: str) -> None:
    """The same commit built again without the layer cache (every package downloaded,
    the model converted, the SBOM made anew): the same packages from the same wheels,
    and every file identical but for the .pyc headers' timestamps (docs/DEPLOYMENT.md)."""
    again = f"faceverify:rebuild-{uuid.uuid4().hex[:8]}"
    run("docker", "build", "-q", "--no-cache", "--network=host", "-t", again, *build_args(), ".")
    docker_run = ("docker", "run", "--rm")
    try:
        # pip freeze, as the image has no pip: the same packages at the same versions.
        freezes = {run(*docker_run, tag, "python", "-c", INSTALLED) for tag in (image, again)}
        assert len(freezes) == 1, freezes
        # The files, the SBOM among them (with each wheel's sha256) and the ONNX model.
        first, second = _files(image), _files(again)
        assert f"{SHARE}/sbom.cdx.json".lstrip("/") in first
        assert set(first) == set(second), sorted(set(first) ^ set(second))[:20]
        differ = sorted(path for path in first if first[path] != second[path])
        assert not differ, differ[:20]
        assert sum(p.endswith(".pyc") for p in first) > 1000  # they were compared too
    finally:
        subprocess.run(["docker", "rmi", "-f", again], capture_output=True, check=False)
