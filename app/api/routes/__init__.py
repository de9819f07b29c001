"""HTTP routes, one router per resource:

    inference   /enroll /verify /identify /compare   (plain ``def``: run in the thread pool)
    subjects    /subjects...
    collections /collections...
    keys        /keys...
    operations  /healthz /readyz /info /metrics
    privacy     /audit /subjects/{id}/export

They translate between HTTP schemas and the service, nothing more.
"""

from fastapi import APIRouter

from app.api.routes import collections, inference, keys, operations, privacy, subjects

router = APIRouter()
for module in (inference, subjects, privacy, collections, keys, operations):
    router.include_router(module.router)
