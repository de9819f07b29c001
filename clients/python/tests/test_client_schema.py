"""The client cannot drift from the server (issue 28): its models are the server's
OpenAPI schema, regenerated here and compared; its error table is the server's codes
and fields. Runs in this repository's environment, where the server is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faceverify_client import errors

pytest.importorskip("app", reason="the server's package is needed to compare with")

HERE = Path(__file__).resolve().parent.parent
# Codes the HTTP layer answers itself (app/api/problems.py), besides the domain errors.
HTTP_CODES = {"validation_error", "not_found", "method_not_allowed", "http_error"}


def test_the_models_are_the_servers_schema() -> None:
    sys.path.insert(0, str(HERE / "tools"))
    from generate_models import render  # type: ignore[import-not-found]

    from app.api.app import create_app
    from app.settings import Settings

    fresh = render(create_app(Settings()).openapi())
    ruff = Path(sys.executable).with_name("ruff")
    formatted = subprocess.run(
        [str(ruff), "format", "--stdin-filename", "models.py", "-"],
        input=fresh,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (HERE / "faceverify_client" / "models.py").read_text()
    assert formatted == committed, (
        "the server's schema changed: run `python clients/python/tools/generate_models.py "
        "> clients/python/faceverify_client/models.py` and `ruff format` it"
    )


def test_every_error_code_has_its_class_with_the_servers_fields() -> None:
    from app.errors import ERROR_CODES

    server = {code: cls.extra_fields() for cls, code in ERROR_CODES.items()}
    client = {code: cls.fields for code, cls in errors.BY_CODE.items()}
    assert set(client) == set(server) | HTTP_CODES
    for code, fields in server.items():
        assert set(client[code]) == set(fields), code
    for code in client:
        assert errors.BY_CODE[code].code == code


def test_the_client_imports_none_of_the_servers_dependencies() -> None:
    """`pip install ./clients/python` needs httpx2 and pydantic only: importing it loads
    no dlib, ONNX Runtime, SQLAlchemy, FastAPI or the server's own package."""
    code = (
        "import sys, faceverify_client\n"
        "bad = {'dlib', 'onnxruntime', 'sqlalchemy', 'fastapi', 'app', 'numpy', 'PIL'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert done.stdout.strip() == "[]"
    project = (HERE / "pyproject.toml").read_text()
    dependencies = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = {line.strip().strip('",').split(">")[0] for line in dependencies.splitlines()}
    assert names - {""} == {"httpx2", "pydantic"}


def test_every_error_class_is_raised_with_its_typed_fields() -> None:
    """A problem body of each code the server answers, with that code's fields, becomes
    that code's exception, its fields set (boxes as Box models) and its request id."""
    import dataclasses
    import typing

    from app.errors import ERROR_CODES

    samples: dict[str, object] = {"int": 3, "float": 0.75, "str": "x"}
    for cls, code in ERROR_CODES.items():
        body: dict[str, object] = {"status": 400, "code": code, "detail": f"{code} here"}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "detail":
                continue
            kind = str(hints[f.name])
            if "Box" in kind:
                box = {"left": 1, "top": 2, "right": 30, "bottom": 40}
                body[f.name] = [box, box] if "list" in kind else box
            elif "list" in kind:
                body[f.name] = [{"loc": ["x"]}] if f.name == "errors" else ["a", "b"]
            else:
                body[f.name] = next(v for k, v in samples.items() if k in kind)
        error = errors.error_from(400, body, "req-1")
        assert type(error) is errors.BY_CODE[code], code
        assert (error.code, error.detail, error.request_id) == (code, f"{code} here", "req-1")
        for name in error.fields:
            value = getattr(error, name)
            if name == "boxes":
                assert [b.right for b in value] == [30, 30]
            elif name == "box":
                assert value.bottom == 40
            else:
                assert value == body[name], (code, name)
    unknown = errors.error_from(503, {"code": "something_new", "detail": "later"}, None)
    assert isinstance(unknown, errors.ServiceBusy)
