"""`make lock`: pin every package faceverify installs, with hashes (issue 29).

The lock is three requirements files in pip-tools' format, compiled by uv
(`uv pip compile --universal --generate-hashes`) and installed by plain pip with
`--require-hashes`, so nothing but pip is needed to install from them:

- requirements/run.txt: the service (pyproject's dependencies), with the build backend
  and pip itself. `make run` and the Dockerfile install it.
- requirements/dev.txt: run.txt's pins plus the eval and dev extras and
  faceverify-client's dependencies. `make test` installs it.
- requirements/sbom.txt: cyclonedx-bom, which the image build runs in a venv of its own.

dev.txt is resolved first; run.txt and sbom.txt are resolved under its pins, so a
package has one version and one set of hashes in all three. Each file's header holds
the sha256 of the requirements it was compiled from; tests/test_lock.py recomputes it
from the pyproject files and fails when they have moved on without a `make lock`.

    python tools/lock.py           # re-lock: keeps every pin that still fits
    python tools/lock.py --upgrade # re-lock on the newest releases the ranges allow
    python tools/lock.py --check   # exit 1 if a pyproject changed since the last lock
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PYTHON_VERSION = "3.11"  # the oldest Python faceverify supports, and the image's
HEADER = "# inputs-sha256: "
NAMES = ("dev", "run", "sbom")


def _requirement_name(line: str) -> str:
    return canonicalize_name(Requirement(line).name)


def inputs(root: Path = ROOT) -> dict[str, list[str]]:
    """What each lock file is compiled from, read from the pyproject files.

    The project's own packages (faceverify, faceverify-client) are not locked: they are
    installed from this checkout with --no-deps after the lock.
    """
    server = tomllib.loads((root / "pyproject.toml").read_text())
    client = tomllib.loads((root / "clients/python/pyproject.toml").read_text())
    project = server["project"]
    extras = project["optional-dependencies"]
    own = {canonicalize_name(project["name"]), canonicalize_name(client["project"]["name"])}
    # setuptools builds the two local packages (--no-build-isolation); pip is the
    # installer. Both are pinned so a build does not depend on the base image's.
    tools = [*server["build-system"]["requires"], *client["build-system"]["requires"], "pip"]
    run = [*project["dependencies"], *tools]
    dev = [
        *run,
        *extras["eval"],
        *extras["dev"],
        *client["project"]["dependencies"],
        *client["project"]["optional-dependencies"]["images"],
    ]
    sbom = [r for r in extras["dev"] if _requirement_name(r) == "cyclonedx-bom"]
    if not sbom:
        raise SystemExit("pyproject.toml's dev extra must name cyclonedx-bom (the image's SBOM)")
    return {
        name: sorted({r for r in reqs if _requirement_name(r) not in own})
        for name, reqs in (("dev", dev), ("run", run), ("sbom", sbom))
    }


def digest(requirements: list[str]) -> str:
    text = "\n".join([f"python>={PYTHON_VERSION}", *requirements])
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(HEADER):
            return line[len(HEADER) :].strip()
    return None


def stale(root: Path = ROOT) -> list[str]:
    """The lock files whose inputs no longer match the pyproject files."""
    out = []
    for name, reqs in inputs(root).items():
        path = root / "requirements" / f"{name}.txt"
        if not path.is_file() or recorded_digest(path) != digest(reqs):
            out.append(str(path.relative_to(root)))
    return out


def entries(path: Path) -> dict[str, tuple[Requirement, set[str]]]:
    """Canonical name -> (the pinned requirement, with its marker; its sha256 hashes) of
    every package in a lock file. A package pinned twice is an error: one version of a
    package for every Python."""
    out: dict[str, tuple[Requirement, set[str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            req = Requirement(line.rstrip(" \\"))
            current = canonicalize_name(req.name)
            if current in out:
                raise ValueError(f"{path.name} pins {current} twice")
            out[current] = (req, set())
        elif (found := re.search(r"--hash=sha256:([^\s\\]+)", line)) and current:
            out[current][1].add(found.group(1))
    return out


def pins(path: Path) -> dict[str, str]:
    """Canonical name -> version of every package pinned in a lock file."""
    return {name: str(req.specifier).removeprefix("==") for name, (req, _) in entries(path).items()}


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not installed: `make test` installs it (the dev extra)")
    return uv


def _compile(
    name: str, reqs: list[str], constraints: Path | None, tmp: Path, *, upgrade: bool
) -> None:
    source = tmp / f"{name}.in"
    source.write_text("\n".join(reqs) + "\n")
    out = LOCK_DIR / f"{name}.txt"
    command = [
        _uv(),
        "pip",
        "compile",
        "--quiet",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--generate-hashes",
        # One version of each package for every Python the project supports (not a
        # newer numpy for 3.12 and an older one for 3.11): what the image runs is what
        # the tests ran.
        "--fork-strategy",
        "fewest",
        "--no-header",
        str(source),
        "-o",
        str(tmp / f"{name}.txt"),
    ]
    if constraints is not None:
        command += ["--constraint", str(constraints)]
    if upgrade:
        command.append("--upgrade")
    elif out.is_file():
        # The current pins are uv's preferences: a re-lock moves only what must move.
        (tmp / f"{name}.txt").write_text(out.read_text())
    # uv reads no pip.conf; a machine's proxy CA comes through SSL_CERT_FILE.
    env = {**os.environ}
    if "SSL_CERT_FILE" not in env and os.environ.get("PIP_CERT"):
        env["SSL_CERT_FILE"] = os.environ["PIP_CERT"]
    subprocess.run(command, check=True, env=env)
    body = (tmp / f"{name}.txt").read_text()
    # The annotations name the temporary input; say where the requirement really is.
    body = body.replace(f"-r {source}", "pyproject.toml").replace(f"-c {constraints}", "dev.txt")
    out.write_text(
        f"# requirements/{name}.txt: generated by `make lock` (tools/lock.py) from\n"
        "# pyproject.toml and clients/python/pyproject.toml. Do not edit; re-lock.\n"
        f"# Install: pip install --require-hashes --no-deps -r requirements/{name}.txt\n"
        f"{HEADER}{digest(reqs)}\n" + body
    )


def lock(*, upgrade: bool = False) -> None:
    LOCK_DIR.mkdir(exist_ok=True)
    wanted = inputs()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        _compile("dev", wanted["dev"], None, tmp, upgrade=upgrade)
        # run and sbom take dev's versions: one version of a package everywhere.
        constraints = tmp / "dev-pins.txt"
        constraints.write_text(
            "".join(f"{n}=={v}\n" for n, v in sorted(pins(LOCK_DIR / "dev.txt").items()))
        )
        _compile("run", wanted["run"], constraints, tmp, upgrade=upgrade)
        _compile("sbom", wanted["sbom"], constraints, tmp, upgrade=upgrade)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    parser.add_argument(
        "--upgrade", action="store_true", help="take the newest releases the ranges allow"
    )
    args = parser.parse_args()
    if args.check:
        old = stale()
        if old:
            print(f"stale: {', '.join(old)}: pyproject.toml changed; run `make lock`")
            raise SystemExit(1)
        print("the lock matches pyproject.toml")
        return
    lock(upgrade=args.upgrade)
    print(f"locked: {', '.join(f'requirements/{n}.txt' for n in NAMES)}")


if __name__ == "__main__":
    main()
