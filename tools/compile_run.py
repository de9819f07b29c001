"""Byte-compile faceverify and the packages it runs on (requirements/run.txt).

Python compiles a module's source on import and caches the bytecode beside it, unless
PYTHONDONTWRITEBYTECODE is set (as on this project's machines and in its image) or the
folder is not writable: then every `faceverify serve` compiled ~0.3 s of sources
before it could answer (issue 41). `make test` installs the dev tools uncompiled (the
tests import a fraction of them), so this compiles only what the server imports.
Already compiled files are skipped: a second run takes a fraction of a second.

    python tools/compile_run.py
"""

from __future__ import annotations

import compileall
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sources() -> list[str]:
    wanted = []
    for line in (ROOT / "requirements" / "run.txt").read_text().splitlines():
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9_.-]*", line)
        if name is None:
            continue
        try:
            dist = metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:  # a marker's other platform
            continue
        wanted += [str(dist.locate_file(f)) for f in dist.files or () if f.suffix == ".py"]
    return wanted + [str(p) for p in sorted((ROOT / "app").rglob("*.py"))]


def compile_one(path: str) -> bool:
    return bool(compileall.compile_file(path, quiet=2))


def main() -> None:
    files = sources()
    with ProcessPoolExecutor() as pool:
        done = list(pool.map(compile_one, files, chunksize=64))
    if not all(done):  # a package's sources for another Python, never imported here
        print(f"{done.count(False)} of {len(files)} files did not compile", file=sys.stderr)


if __name__ == "__main__":
    main()
