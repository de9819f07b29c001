"""Request ids, structured JSON logs and Prometheus metrics.

Nothing biometric or secret is logged or exported: no image bytes, no embeddings, no
keys; subject ids appear in neither logs nor metric labels (labels are route templates).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_for
from app.api.rekognition import errors as rekognition_errors
from app.errors import RequestCancelled
from app.face.timing import Timings
from app.logs import request_id_var
from app.service import CommitGate, commit_gate

# Metric labels come from closed sets, so no request can add a time series: an unknown
# method is "other", an unmatched path is "unmatched" (issue 9: 5,000 made-up methods
# grew /metrics from 42 KB to 22.8 MB).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_log = logging.getLogger("faceverify.access")


class Metrics:
    """The app's own registry, so several apps in one process (tests) do not collide.
    With several worker processes each has its own numbers: scrape each worker, or run
    one worker per container (docs/SCALING.md)."""

    def __init__(
        self,
        gallery_size: Callable[[], dict[str, int]],
        collection_faces: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "faceverify_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "faceverify_request_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
            registry=self.registry,
        )
        self.stage = Histogram(
            "faceverify_stage_seconds",
            "Time per pipeline stage (decode, detect, encode, search) per request.",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.scores = Histogram(
            "faceverify_match_score_percent",
            "Match percent of verify and compare results (and identify's best candidate).",
            ["endpoint"],
            buckets=(1, 5, 10, 25, 50, 75, 90, 95, 99, 100),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "faceverify_requests_in_progress", "Requests being handled.", registry=self.registry
        )
        self.registry.register(_GalleryCollector(gallery_size, collection_faces))

    def observe_timings(self, timings: Timings) -> None:
        for stage in ("decode", "detect", "align", "encode", "search"):
            value = getattr(timings, f"{stage}_ms")
            if value:
                self.stage.labels(stage).observe(value / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _GalleryCollector:
    def __init__(
        self,
        gallery_size: Callable[[], dict[str, int]],
        collection_faces: Callable[[], dict[str, int]],
    ) -> None:
        self.gallery_size = gallery_size
        self.collection_faces = collection_faces

    def collect(self) -> Any:
        sizes = self.gallery_size()
        faces = GaugeMetricFamily("faceverify_gallery_faces", "Enrolled faces in the index.")
        faces.add_metric([], sizes["faces"])
        subjects = GaugeMetricFamily("faceverify_gallery_subjects", "Subjects with faces.")
        subjects.add_metric([], sizes["subjects"])
        per = GaugeMetricFamily(
            "faceverify_collection_faces",
            f"Enrolled faces per collection: the {METRIC_COLLECTIONS} largest, the rest "
            f"summed under {OTHER_COLLECTIONS!r} (a bounded label set).",
            labels=["collection"],
        )
        for name, count in bounded_labels(self.collection_faces(), METRIC_COLLECTIONS):
            per.add_metric([name], count)
        return [faces, subjects, per]


# Collections with a label of their own in the metrics; the others are summed.
METRIC_COLLECTIONS = 20
OTHER_COLLECTIONS = "_other"


def bounded_labels(counts: dict[str, int], limit: int) -> list[tuple[str, int]]:
    """The ``limit`` largest counts by name, and the rest summed as one."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    rest = sum(count for _, count in ranked[limit:])
    return ranked[:limit] + ([(OTHER_COLLECTIONS, rest)] if len(ranked) > limit else [])


# A request id: this process's random prefix and a counter (unique, no system call: a
# uuid4 per request read os.urandom, and re-taking the GIL after it cost the event loop
# ~13% of its samples under a flood of refused requests).
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def install(app: FastAPI) -> None:
    """Request id (X-Request-ID, echoed), one access-log line and metrics per request,
    and the request timeout."""
    app.add_middleware(Observe)


class Observe:
    """The middleware :func:`install` adds. Pure ASGI: Starlette's BaseHTTPMiddleware
    (``@app.middleware("http")``) streams every request and response through extra
    tasks and memory streams; measured on a 404 /verify, 4.4 ms a request with it
    against 2.6 ms without (docs/PERFORMANCE.md).

    The route runs in a task; after ``request_timeout_seconds`` without a response the
    request is answered 503 ``request_timeout`` unless its work is already committing
    (issue 9: then its answer is awaited, so a stored enrollment is never hidden behind a
    timeout). The inference thread cannot be stopped; it finishes and its answer is
    dropped, its slot taken until then, so the bound on work holds.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        rid = incoming if _SAFE_ID.match(incoming) else _new_request_id()
        token = request_id_var.set(rid)
        state = scope["app"].state
        metrics: Metrics | None = getattr(state, "metrics", None)
        start = time.perf_counter()
        status = 500
        started = False
        if metrics:
            metrics.inflight.inc()
        gate = CommitGate()
        gate_token = commit_gate.set(gate)  # seen by the route's thread (context is copied)

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", rid)
                # A rate-limited key's RateLimit fields (app/api/ratelimit.py), 429 or not.
                for name, value in scope.get("state", {}).get("rate_limit", {}).items():
                    headers[name] = value
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_with_id))
        try:
            done, _ = await asyncio.wait({task}, timeout=state.settings.request_timeout_seconds)
            if task in done:
                task.result()  # an error the app did not answer goes on to the outer layers
            elif started or not gate.expire():
                # The answer is on its way, or the work is already committing its writes:
                # answer with what it stored rather than a timeout that would make the
                # client retry (issue 9).
                await task
            else:
                # Nothing will be stored now (the work checks the gate before it writes).
                task.cancel()
                timeout = state.settings.request_timeout_seconds
                cancelled = RequestCancelled(
                    f"The request took longer than {timeout:g} s; retry later."
                )
                response = (
                    rekognition_errors.from_domain(cancelled).response()
                    if Headers(scope=scope).get("x-amz-target")  # in Rekognition's form
                    else problem_for(cancelled, instance=scope["path"])
                )
                await response(scope, receive, send_with_id)
        finally:
            if not task.done():
                task.cancel()  # this request itself was cancelled (the client went away)
            _account(scope, metrics, status, time.perf_counter() - start)
            request_id_var.reset(token)
            commit_gate.reset(gate_token)


def _account(scope: Scope, metrics: Metrics | None, status: int, elapsed: float) -> None:
    """One answered request in the metrics and the access log."""
    route = getattr(scope.get("route"), "path", "unmatched")
    method = method_label(scope["method"])
    if metrics:
        metrics.inflight.dec()
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.latency.labels(route, method).observe(elapsed)
    access_log.info(
        "%s %s %s %.1fms",
        method,
        route,
        status,
        elapsed * 1000,
        extra={
            "method": method,
            "route": route,
            "status": status,
            "ms": round(elapsed * 1000, 1),
        },  # fmt: skip
    )
