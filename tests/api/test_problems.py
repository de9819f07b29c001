"""Every domain error has its own status and code, typed extra fields, and a place in the
OpenAPI Problem schema (issue 10)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app import errors
from app.api.problems import ERROR_STATUS, ERROR_TABLE, problem_for
from app.geometry import Box


def subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *subclasses(sub)}
    return found


def test_every_error_class_has_its_own_table_entry() -> None:
    # A subclass missing from the table would silently take a 500; it must be listed.
    assert subclasses(errors.FaceVerifyError) | {errors.FaceVerifyError} == set(ERROR_TABLE)
    # ...in both halves: the codes (app/errors.py, shared with the bulk report) and the
    # statuses (app/api/problems.py).
    assert set(errors.ERROR_CODES) == set(ERROR_STATUS) == set(ERROR_TABLE)
    codes = [code for _, code in ERROR_TABLE.values()]
    assert len(codes) == len(set(codes))


def test_extra_fields_are_typed_attributes_and_members_of_the_body() -> None:
    exc = errors.MultipleFaces(
        "two faces", boxes=[Box(0, 0, 10, 10), Box(20, 0, 30, 10)], image_index=1
    )
    assert exc.boxes[1].left == 20 and str(exc) == "two faces"
    body = problem_for(exc, instance="/enroll").body
    assert b'"boxes":[{"left":0,"top":0,"right":10,"bottom":10}' in body
    assert b'"image_index":1' in body
    busy = problem_for(errors.ServiceBusy("busy", retry_after=3))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
    timeout = problem_for(errors.RequestCancelled("late"))
    assert timeout.status_code == 503 and timeout.headers["retry-after"] == "1"
    assert b'"code":"request_timeout"' in timeout.body


def test_the_openapi_problem_schema_lists_every_extra_field(fake_client: TestClient) -> None:
    schemas = fake_client.get("/openapi.json").json()["components"]["schemas"]
    problem = schemas["Problem"]["properties"]
    for cls, (_, code) in ERROR_TABLE.items():
        for name in cls.extra_fields():
            assert name in problem, (cls.__name__, name)
            assert code in problem[name]["description"]
    assert {"boxes", "required_scope", "retry_after", "max_bytes", "errors"} <= set(problem)
    # A multiple_faces answer's box has the schema of the one Box type.
    assert "Box" in schemas and set(schemas["Box"]["properties"]) == {
        "left",
        "top",
        "right",
        "bottom",
    }
