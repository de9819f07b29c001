"""Optional per-key rate limits (app/api/ratelimit.py, issue 25)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.ratelimit import RateLimiter
from app.settings import Settings
from tests.helpers import TEST_KEY, assert_problem
from tests.helpers import fake_service as make_fake_service

OTHER_KEY = "other-admin-key-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_refills_at_its_rate_and_holds_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, burst=3, clock=clock)
    assert [limiter.take("k").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("k")
    assert refused.retry_after == pytest.approx(0.5)
    assert limiter.take("other").allowed  # each key its own bucket
    clock.now += 0.5
    assert limiter.take("k").allowed and not limiter.take("k").allowed
    clock.now += 100  # never more than the burst
    assert [limiter.take("k").allowed for _ in range(4)] == [True, True, True, False]


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        api_keys=f"{TEST_KEY}:admin,{OTHER_KEY}:admin",
        rate_limit_per_second=0.01,  # no refill within the test
        rate_limit_burst=2,
    )
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_key_past_its_rate_gets_429_with_retry_after_and_ratelimit_fields(
    limited: TestClient,
) -> None:
    mine, theirs = {"X-API-Key": TEST_KEY}, {"X-API-Key": OTHER_KEY}
    first = limited.get("/subjects", headers=mine)
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == '"per-key";q=2;w=200'
    assert first.headers["RateLimit"].startswith('"per-key";r=1;t=')
    assert limited.get("/subjects", headers=mine).status_code == 200
    refused = limited.get("/subjects", headers=mine)
    assert_problem(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit"].startswith('"per-key";r=0;t=')
    # Another key is not limited by this one's use.
    assert limited.get("/subjects", headers=theirs).status_code == 200


def test_without_a_rate_limit_no_ratelimit_fields_are_sent(fake_client: TestClient) -> None:
    answer = fake_client.get("/subjects")
    assert answer.status_code == 200 and "RateLimit" not in answer.headers
