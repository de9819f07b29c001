"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.inputs import RequestBody, read_body
from app.service import FaceService
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> FaceService:
    return request.app.state.service


async def get_body(request: Request) -> RequestBody:
    # Async, so the body is read on the event loop; the routes themselves are plain
    # `def` and run in the thread pool, where dlib may block.
    return await read_body(request, request.app.state.settings.max_upload_bytes)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[FaceService, Depends(get_service)]
BodyDep = Annotated[RequestBody, Depends(get_body)]
