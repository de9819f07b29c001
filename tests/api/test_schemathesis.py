"""schemathesis against the service's own OpenAPI schema, on a real server: generated
requests for every operation; no 5xx, and every error is problem+json.

Driven through schemathesis' Python API with Hypothesis directly (its pytest plugin
does not run under pytest 9 here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers import AUTH
from tests.server import serving

pytestmark = pytest.mark.model
# More with FACEVERIFY_SCHEMATHESIS_EXAMPLES=200 for a longer hunt.
EXAMPLES_PER_OPERATION = int(os.environ.get("FACEVERIFY_SCHEMATHESIS_EXAMPLES", "20"))


def check_response(response: schemathesis.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), content_type
        assert {"type", "title", "status", "code", "detail"} <= set(response.json())


@pytest.mark.slow
def test_generated_requests_get_no_5xx_and_problem_json(tmp_path: Path) -> None:
    with serving({"FACEVERIFY_DATA_DIR": str(tmp_path)}) as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                check_response(case.call(base_url=url, headers=AUTH))

            run()
