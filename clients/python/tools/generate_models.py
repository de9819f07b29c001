"""Write faceverify_client/models.py from the server's OpenAPI schema (a JSON file, or
the running app's when run inside the server's environment):

    python tools/generate_models.py openapi.json > faceverify_client/models.py

The client's tests regenerate it from the server in this repository and fail when the
committed file differs, so the client cannot drift from the server (issue 28)."""

from __future__ import annotations

import json
import keyword
import sys
import textwrap
from typing import Any

# Response schemas only: requests are built from keyword arguments.
SKIP = {"Problem", "HTTPValidationError", "ValidationError"}
SCALARS = {"null": "None", "integer": "int", "number": "float", "boolean": "bool"}


def annotation(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "anyOf" in schema:
        parts = [annotation(s) for s in schema["anyOf"]]
        return " | ".join(dict.fromkeys(parts))
    if "const" in schema:
        return f"Literal[{json.dumps(schema['const'])}]"
    if "enum" in schema:
        return "Literal[" + ", ".join(json.dumps(v) for v in schema["enum"]) + "]"
    kind = schema.get("type")
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "string":
        return "datetime" if schema.get("format") == "date-time" else "str"
    if kind == "array":
        items = schema.get("items", {})
        if "prefixItems" in schema:
            inner = ", ".join(annotation(s) for s in schema["prefixItems"])
            return f"tuple[{inner}]"
        return f"list[{annotation(items)}]" if items else "list[Any]"
    if kind == "object":
        extra = schema.get("additionalProperties")
        value = annotation(extra) if isinstance(extra, dict) and extra else "Any"
        return f"dict[str, {value}]"
    return "Any"


def model(name: str, schema: dict[str, Any]) -> str:
    lines = [f"class {name}(_Model):"]
    doc = schema.get("description")
    if doc:
        text = textwrap.wrap(" ".join(doc.split()).replace('"', "'"), 84)
        lines.append('    """' + "\n    ".join(text) + '"""')
        lines.append("")
    required = set(schema.get("required", []))
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        lines.append("    pass")
    for field, spec in props.items():
        kind = annotation(spec)
        attr = field + "_" if keyword.iskeyword(field) else field
        alias = f", alias={field!r}" if attr != field else ""
        if field in required:
            default = f" = Field({alias[2:]})" if alias else ""
        else:
            default = f" = Field(None{alias})" if alias else " = None"
            if "None" not in kind.split(" | "):
                kind += " | None"
        lines.append(f"    {attr}: {kind}{default}")
    return "\n".join(lines)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read()) if len(sys.argv) > 1 else _from_app()
    print(render(spec), end="")


def render(spec: dict[str, Any]) -> str:
    schemas = spec["components"]["schemas"]
    names = sorted(n for n in schemas if n not in SKIP)
    body = "\n\n\n".join(model(n, schemas[n]) for n in names)
    pydantic = "BaseModel, ConfigDict, Field" if "Field(" in body else "BaseModel, ConfigDict"
    head = [
        '"""Response models of the faceverify API, generated from its OpenAPI schema by',
        "tools/generate_models.py: do not edit by hand (the tests regenerate it and fail",
        'when it differs from the server\'s schema)."""',
        "",
        "from __future__ import annotations",
        "",
        "from datetime import datetime",
        "from typing import Any, Literal",
        "",
        f"from pydantic import {pydantic}",
        "",
        "",
        "class _Model(BaseModel):",
        "    # A newer server may add fields: they are kept, not refused.",
        '    model_config = ConfigDict(extra="allow", populate_by_name=True)',
        "",
        "",
    ]
    rebuild = "\n".join(f"{n}.model_rebuild()" for n in names)
    return "\n".join(head) + "\n" + body + "\n\n\n" + rebuild + "\n"


def _from_app() -> dict[str, Any]:
    from app.api.app import create_app
    from app.settings import Settings

    return create_app(Settings()).openapi()


if __name__ == "__main__":
    main()
