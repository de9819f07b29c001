"""Validate a CycloneDX JSON SBOM against its schema (cyclonedx-python-lib, strict).

    python tools/validate_sbom.py sbom.cdx.json

Run by the image build on the SBOM it ships, and by tests/test_sbom.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def validate(path: Path) -> str | None:
    """None if the file is a valid CycloneDX BOM of its spec version, else the error."""
    text = path.read_text()
    version = SchemaVersion.from_version(json.loads(text)["specVersion"])
    error = JsonStrictValidator(version).validate_str(text)
    return None if error is None else str(error)


if __name__ == "__main__":
    problem = validate(Path(sys.argv[1]))
    if problem is not None:
        sys.exit(f"{sys.argv[1]}: not a valid CycloneDX BOM: {problem}")
    print(f"{sys.argv[1]}: valid CycloneDX")
