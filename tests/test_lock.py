"""The lock (requirements/*.txt), the installs that use it, and docs/LICENSES.md (issue 29)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import licenses  # noqa: E402
import lock  # noqa: E402

LOCKS = [ROOT / "requirements" / f"{name}.txt" for name in lock.NAMES]


def test_the_lock_matches_pyproject() -> None:
    assert lock.stale() == [], "pyproject.toml changed since the lock: run `make lock`"


def test_a_changed_dependency_makes_the_lock_stale(tmp_path: Path) -> None:
    """The check above can fail: a dependency added, or a range moved, without re-locking."""
    (tmp_path / "clients/python").mkdir(parents=True)
    shutil.copy(ROOT / "clients/python/pyproject.toml", tmp_path / "clients/python")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    pyproject = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert lock.stale(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text(
        pyproject.replace('"numpy>=1.26,<3",', '"numpy>=1.26,<3",\n    "requests>=2",')
    )
    assert lock.stale(tmp_path) == ["requirements/dev.txt", "requirements/run.txt"]
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('"tqdm>=4.66,<5"', '"tqdm>=4"'))
    assert "requirements/run.txt" in lock.stale(tmp_path)
    client = tmp_path / "clients/python/pyproject.toml"
    (tmp_path / "pyproject.toml").write_text(pyproject)
    client.write_text(client.read_text().replace('"httpx2>=2.0,<3"', '"httpx2>=2.1,<3"'))
    assert lock.stale(tmp_path) == ["requirements/dev.txt"]


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.name)
def test_every_pin_is_exact_hashed_and_single(path: Path) -> None:
    pinned = lock.entries(path)
    assert pinned, path
    for name, (req, hashes) in pinned.items():
        assert re.fullmatch(r"==[^,*]+", str(req.specifier)), f"{name} is not pinned exactly"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    lock.pins(path)  # raises on a package pinned twice (one version for every Python)


def test_run_and_sbom_take_the_dev_versions_and_hashes() -> None:
    dev = lock.entries(ROOT / "requirements/dev.txt")
    for name in ("run", "sbom"):
        for pkg, (req, hashes) in lock.entries(ROOT / f"requirements/{name}.txt").items():
            assert pkg in dev, f"{name}.txt pins {pkg}, dev.txt does not"
            assert req.specifier == dev[pkg][0].specifier, pkg
            assert hashes == dev[pkg][1], pkg


def test_every_direct_requirement_is_met_by_its_pin() -> None:
    for name, wanted in lock.inputs().items():
        pinned = lock.pins(ROOT / f"requirements/{name}.txt")
        for line in wanted:
            req = Requirement(line)
            version = pinned.get(canonicalize_name(req.name))
            assert version is not None, f"{name}.txt misses {req.name}"
            assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"


def test_this_environment_was_installed_from_the_lock() -> None:
    """`make test` installed requirements/dev.txt: every pin that applies here is what is
    installed (run.txt's pins are dev.txt's)."""
    differ = {}
    for name, (req, _) in lock.entries(ROOT / "requirements/dev.txt").items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "missing"
        if not req.specifier.contains(have, prereleases=True):
            differ[name] = f"{have} (lock {req.specifier})"
    assert not differ, f"not the lock: {differ}; `make test` reinstalls from it"


def test_every_install_goes_through_the_lock() -> None:
    """Make, CI and the Dockerfile install nothing that is not hash-checked, but the
    project's own packages from this checkout (with --no-deps)."""
    ci = sorted(p for p in (ROOT / ".ci").rglob("*") if p.is_file())
    files = [ROOT / "Makefile", ROOT / "Dockerfile", *ci]
    installs = []
    for path in files:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for cmd in re.findall(r"pip install[^&;]*", line):
                installs.append((path.name, cmd))
    assert len(installs) >= 6, installs
    for where, cmd in installs:
        hashed = "--require-hashes" in cmd and re.search(r"-r requirements/\w+\.txt", cmd)
        own = "--no-deps" in cmd and re.search(r"(^|\s)(-e )?\.(\s|$)", cmd + " ")
        assert hashed or own, f"{where}: an install outside the lock: {cmd}"
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements/run.txt" in makefile and "-r requirements/dev.txt" in makefile
    assert "-r requirements/run.txt" in (ROOT / "Dockerfile").read_text()
    assert "tools/lock.py" in makefile and "tools/licenses.py" in makefile


def test_what_the_image_uninstalls_is_what_the_licence_list_says() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    removed = set()
    for cmd in re.findall(r"pip uninstall ([^&]*)", dockerfile):
        removed |= {canonicalize_name(w) for w in cmd.split() if not w.startswith("-")}
    assert removed == licenses.NOT_IN_IMAGE


def test_the_licence_list_is_current() -> None:
    """docs/LICENSES.md is what `make licenses` writes from the installed lock now: a
    package, a version, a bundled library or a model changed makes this fail."""
    assert (ROOT / "docs/LICENSES.md").read_text() == licenses.render(), (
        "docs/LICENSES.md is stale: run `make licenses`"
    )


def test_the_licence_list_names_every_package_and_model() -> None:
    text = (ROOT / "docs/LICENSES.md").read_text()
    rows = dict(re.findall(r"^\| ([a-z0-9-]+) \| ([^ |]+) \|", text, re.MULTILINE))
    for name, version in licenses.image_packages().items():
        assert rows.get(name) == version, name
    manifest = (ROOT / "models/manifest.json").read_text()
    for sha in re.findall(r'"sha256": "([0-9a-f]{64})"', manifest):
        assert f"`{sha}`" in text


@pytest.mark.parametrize(
    ("licence", "kind"),
    [
        ("MIT", "permissive"),
        ("Apache-2.0 OR BSD-3-Clause", "permissive"),
        ("LGPL-3.0-only", "weak copyleft"),
        ("GNU Lesser General Public License v3 (LGPLv3)", "weak copyleft"),
        ("MPL-2.0 AND MIT", "weak copyleft"),
        ("GPL-3.0-or-later WITH GCC-exception-3.1", "weak copyleft"),
        ("GPL-2.0-or-later", "copyleft"),
        ("GNU General Public License v3 (GPLv3)", "copyleft"),
        ("AGPL-3.0", "copyleft"),
        ("Proprietary", "review"),
        ("UNKNOWN", "review"),
    ],
)
def test_licences_are_sorted_by_what_they_ask(licence: str, kind: str) -> None:
    assert licenses.kind(licence) == kind


def test_a_bundled_library_nobody_reviewed_stops_the_list() -> None:
    with pytest.raises(SystemExit, match="libnew"):
        licenses._bundled_licence("libnew")
