"""`make licenses`: write docs/LICENSES.md, the licences of what the image ships (issue 29).

Every package of requirements/run.txt that installs on Linux (the image's platform),
with the licence its metadata declares (pip-licenses), the native libraries its wheel
bundles (the `<package>.libs` folders auditwheel makes), and the model files of
models/manifest.json. Run it in an environment installed from the lock (`make test`
makes one); tests/test_lock.py renders it again and fails when docs/LICENSES.md differs,
so the list cannot go stale.

    python tools/licenses.py           # write docs/LICENSES.md
    python tools/licenses.py --check   # exit 1 if docs/LICENSES.md is stale
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock  # noqa: E402

ROOT = lock.ROOT
DOC = ROOT / "docs" / "LICENSES.md"

# What the Dockerfile's build stage uninstalls after installing the lock (tests check
# this against the Dockerfile): locked, used to build, not in the image.
NOT_IN_IMAGE = frozenset(
    {"onnx", "rich", "pygments", "markdown-it-py", "mdurl", "setuptools", "pip"}
)

# SPDX-ish words of licences that ask nothing of a redistributor but the notice.
PERMISSIVE = (
    "MIT",
    "BSD",
    "Apache",
    "ISC",
    "PSF",
    "Python Software Foundation",
    "Boost",
    "Zlib",
    "0BSD",
    "CC0",
    "HPND",
    "Unlicense",
    "PostgreSQL",
    "Public Domain",
)

# The native libraries wheels bundle (auditwheel's `<package>.libs`): their licences are
# in no metadata. A library missing here fails tests/test_lock.py: review it, add it.
BUNDLED = {
    "libgfortran": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libgomp": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libquadmath": "LGPL-2.1-or-later",
    "libopenblas": "BSD-3-Clause",
    "libscipy_openblas": "BSD-3-Clause",
    "libheif": "LGPL-3.0-or-later",
    "libde265": "LGPL-3.0-or-later",
    "libx265": "GPL-2.0-or-later",
    "libpq": "PostgreSQL",
    "libssl": "Apache-2.0",
    "libcrypto": "Apache-2.0",
    "libgssapi_krb5": "MIT (Kerberos)",
    "libkrb5": "MIT (Kerberos)",
    "libk5crypto": "MIT (Kerberos)",
    "libkrb5support": "MIT (Kerberos)",
    "libcom_err": "MIT (Kerberos)",
    "libkeyutils": "LGPL-2.1-or-later",
    "libcrypt": "LGPL-2.1-or-later (libxcrypt)",
    "libldap": "OLDAP-2.8",
    "liblber": "OLDAP-2.8",
    "libsasl2": "BSD-Attribution-HPND-disclaimer (Cyrus SASL)",
    "libXau": "MIT",
    "libxcb": "MIT",
    "libavif": "BSD-2-Clause",
    "libbrotlicommon": "MIT",
    "libbrotlidec": "MIT",
    "libfreetype": "FTL OR GPL-2.0-or-later (FreeType; FTL chosen)",
    "libharfbuzz": "MIT-Modern-Variant",
    "libjpeg": "IJG AND BSD-3-Clause (libjpeg-turbo)",
    "liblcms2": "MIT",
    "liblzma": "0BSD",
    "libopenjp2": "BSD-2-Clause",
    "libpng16": "Libpng-2.0",
    "libsharpyuv": "BSD-3-Clause",
    "libtiff": "libtiff",
    "libwebp": "BSD-3-Clause",
    "libwebpdemux": "BSD-3-Clause",
    "libwebpmux": "BSD-3-Clause",
    "libzstd": "BSD-3-Clause",
}
PERMISSIVE_BUNDLED = PERMISSIVE + ("OLDAP", "FTL", "IJG", "Libpng", "libtiff", "Kerberos")


def kind(licence: str, permissive: tuple[str, ...] = PERMISSIVE) -> str:
    """permissive, weak copyleft (LGPL, MPL, GPL with the GCC runtime exception), copyleft
    or review (nothing recognised)."""
    text = licence.replace("Lesser General Public", "LGPL").replace("Mozilla Public", "MPL")
    if "GCC-exception" in text or re.search(r"\bLGPL|MPL", text):
        return "weak copyleft"
    if re.search(r"GPL|General Public License", text) and "OR GPL" not in text:
        return "copyleft"
    if any(word.lower() in text.lower() for word in permissive):
        return "permissive"
    return "review"


def image_packages() -> dict[str, str]:
    """name -> version of run.txt's pins whose environment marker holds here (Linux)."""
    return {
        name: str(req.specifier).removeprefix("==")
        for name, (req, _) in lock.entries(ROOT / "requirements" / "run.txt").items()
        if req.marker is None or req.marker.evaluate()
    }


def _declared() -> dict[str, dict[str, str]]:
    names = list(image_packages())
    found = subprocess.run(
        [sys.executable, "-m", "piplicenses", "--from", "mixed", "--format", "json", "--with-urls"]
        + ["--with-system", "--packages", *names],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonicalize_name(p["Name"]): p for p in json.loads(found)}


def bundled_libraries(package: str) -> list[str]:
    """The library names in a distribution's `<name>.libs` folder, hashes cut off."""
    dist = importlib.metadata.distribution(package)
    folders = {
        str(f).split("/", 1)[0]
        for f in dist.files or []
        if str(f).split("/", 1)[0].endswith(".libs")
    }
    libs = set()
    for folder in folders:
        for path in (Path(str(dist.locate_file(folder)))).iterdir():
            # libfoo-1a2b3c4d.so.1.2 and libfoo-r0-1a2b3c4d.3.15.so: the name before the hash
            libs.add(re.sub(r"\.so.*$", "", re.split(r"-[0-9a-f]{8}", path.name)[0]))
    return sorted(libs)


def _bundled_licence(lib: str) -> str:
    for stem, licence in BUNDLED.items():
        if lib == stem or lib.startswith(stem + "_") or lib.startswith(stem):
            return licence
    raise SystemExit(f"{lib}: a bundled library with no licence in tools/licenses.py BUNDLED")


def _package_rows(pins: dict[str, str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    declared = _declared()
    rows, flagged = [], []
    for name, version in sorted(pins.items()):
        meta = declared.get(name)
        if meta is None or meta["Version"] != version:
            have = meta["Version"] if meta else "not installed"
            raise SystemExit(f"{name}: the lock pins {version}, this environment has {have}")
        licence = meta["License"].replace("|", "/")
        k = kind(licence)
        libs = bundled_libraries(meta["Name"])
        bundled = "; ".join(f"{lib} ({_bundled_licence(lib)})" for lib in libs)
        for lib in libs:
            lib_kind = kind(_bundled_licence(lib), PERMISSIVE_BUNDLED)
            if lib_kind != "permissive":
                flagged.append((f"{name} bundles {lib}", _bundled_licence(lib), lib_kind))
        if k != "permissive":
            flagged.append((name, licence, k))
        shipped = "no (build only)" if name in NOT_IN_IMAGE else "yes"
        rows.append(f"| {name} | {version} | {licence} | {k} | {shipped} | {bundled or '-'} |")
    return rows, flagged


def render() -> str:
    pins = image_packages()
    rows, flagged = _package_rows(pins)
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    models = [
        f"| {m['name']} | `{m['file']}` | `{m['sha256']}` | {m['licence']} |"
        for m in manifest["models"]
    ]
    flags = [f"| {what} | {licence} | {k} |" for what, licence, k in flagged]
    return "\n".join(
        [
            "# Licences of what faceverify ships",
            "",
            "Generated by `make licenses` (tools/licenses.py) from requirements/run.txt and",
            "models/manifest.json; tests/test_lock.py fails when it is stale. Do not edit by hand:",
            "change tools/licenses.py. The image carries this file at",
            "`/opt/venv/share/faceverify/LICENSES.md`, beside its SBOM (docs/DEPLOYMENT.md).",
            "",
            "faceverify itself is MIT. This is an inventory, not legal advice.",
            "",
            "## What is not permissive, and what it means for someone shipping the image",
            "",
            "| what | licence | kind |",
            "|---|---|---|",
            *flags,
            "",
            "Nothing in the image is under a strong copyleft licence that would reach",
            "faceverify's own code. What the flags ask of whoever distributes the image",
            "(or a product built on it):",
            "",
            "- **LGPL (psycopg, psycopg-binary, pi-heif with libheif and libde265; libquadmath,",
            "  libkeyutils, libcrypt inside psycopg-binary and the BLAS wheels).** faceverify",
            "  uses them unmodified and loads them dynamically (a Python import, a shared",
            "  library), which the LGPL allows in software under any licence. Ship their licence",
            "  texts (each wheel's `*.dist-info/licenses` folder, which the image keeps), say",
            "  that they are used, let the user replace them (they are ordinary files in",
            "  `/opt/venv`) and give their source on request: the sources are the PyPI sdists",
            "  of the exact versions in the SBOM and the libraries' upstream releases. If you",
            "  modify one of them, your changes to it are LGPL too.",
            "- **MPL-2.0 (tqdm, with MIT).** File-level copyleft: changes to tqdm's own files",
            "  must be published under the MPL; using it is unrestricted.",
            "- **GPL-3.0 with the GCC Runtime Library Exception (libgfortran, libgomp in the",
            "  numpy and faiss wheels).** The exception lets these runtime libraries ship with",
            "  software under any licence; keep their notices.",
            "- **The Debian base image** holds GPL programs (bash, coreutils, ...) outside the",
            "  Python environment, which this list and the SBOM do not cover. Their licences are",
            "  in the image's `/usr/share/doc/*/copyright` (kept by .ci/base-image.sh); their",
            "  sources are Debian's. `dpkg -l` lists them.",
            "",
            "## Python packages (requirements/run.txt, on Linux)",
            "",
            "Licence as the package's metadata declares it (pip-licenses). `in image`: no for",
            "what the build stage uses and then uninstalls. `bundles`: native libraries inside",
            "the wheel, with their upstream licences.",
            "",
            "| package | version | licence | kind | in image | bundles |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Pinned for other platforms only, so not in the image: "
            + ", ".join(
                sorted(
                    f"{n} {v}"
                    for n, v in lock.pins(ROOT / "requirements" / "run.txt").items()
                    if n not in pins
                )
            )
            + ".",
            "",
            "## Model files (models/manifest.json)",
            "",
            "The image ships `shape_predictor_5` and `mmod_cnn_detector` as they are, and",
            "`dlib_resnet_v1` as its ONNX conversion (the .dat is removed after converting).",
            "The 68-point landmark model in face_recognition_models is licensed for",
            "non-commercial use only: faceverify never loads it and the image removes it.",
            "`yunet` ships inside the faceverify package (app/models/yunet/, with its",
            "Apache-2.0 LICENSE and SOURCE.md). Caveat: YuNet was trained on WIDER FACE,",
            "whose terms describe the images as for research and non-commercial use; whether",
            "that reaches trained weights is not settled. It runs only with",
            "FACEVERIFY_DETECT_FALLBACK=yunet; dlib's HOG and mmod detectors need no such",
            "caveat.",
            "",
            "| model | file | sha256 | licence |",
            "|---|---|---|---|",
            *models,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print("docs/LICENSES.md is stale: run `make licenses`")
            raise SystemExit(1)
        print("docs/LICENSES.md is current")
        return
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
