"""HTTP routes, one router per resource:

    inference   /enroll /verify /identify /compare   (plain ``def``: run in the thread pool)
    subjects    /subjects...
    collections /collections...
    keys        /keys...
    operations  /healthz /readyz /info /metrics

They translate between HTTP schemas and the service, nothing more.
"""

from fastapi import APIRouter

from app.api.routes import collections, inference, keys, operations, subjects

router = APIRouter()
for module in (inference, subjects, collections, keys, operations):
    router.include_router(module.router)
