"""Reading request bodies: multipart/form-data or JSON with base64 images, one shape.

Both forms use the same field names: ``image`` (repeat it, or send a JSON list
``images``, for several), ``image_a``/``image_b``, and plain fields such as
``subject_id``. The result is a :class:`RequestBody` the routes validate with their
request schemas.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from app.api.problems import validation_errors
from app.errors import (
    ClientDisconnected,
    InvalidBase64,
    InvalidRequest,
    UnsupportedContentType,
)

IMAGE_FIELDS = ("image", "images", "image_a", "image_b")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)
# Request bodies are flat objects; metadata may nest a little. Deeper is refused (issue 9:
# a body nested 100,000 deep was a RecursionError, a 500).
MAX_JSON_DEPTH = 32


@dataclass
class RequestBody:
    fields: dict[str, Any] = field(default_factory=dict)
    images: dict[str, list[bytes]] = field(default_factory=dict)

    def validate(self, model: type[BaseModelT]) -> BaseModelT:
        try:
            return model.model_validate(self.fields)
        except ValidationError as exc:
            raise InvalidRequest(
                "The request's fields are missing or invalid; see errors.",
                errors=validation_errors(exc.errors()),
            ) from exc

    def image(self, name: str = "image") -> bytes:
        found = self.images.get(name, [])
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise InvalidRequest(f"Send exactly one image in the field {name!r} ({what} sent).")
        return found[0]

    def image_list(self) -> list[bytes]:
        found = self.images.get("image", []) + self.images.get("images", [])
        if not found:
            raise InvalidRequest("Send at least one image in the field 'image' (or 'images').")
        return found


async def read_body(request: Request) -> RequestBody:
    """Read the whole body and parse it by its Content-Type. The byte cap and the
    minimum upload rate are enforced while it arrives, for every route alike
    (:class:`app.api.guards.BodyGuard`)."""
    try:
        # Request.body() keeps the bytes, so request.form() below parses them again
        # rather than the consumed stream.
        raw = await request.body()
    except ClientDisconnect as exc:
        raise ClientDisconnected("The client closed the connection mid-request.") from exc

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not raw:
        return RequestBody()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _from_json(raw)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _from_form(request)
    raise UnsupportedContentType(
        f"Send multipart/form-data or application/json, not {content_type or 'no content type'}."
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, what: str = "The body") -> Any:
    """Strict JSON: NaN and Infinity (which Python accepts) are refused, and so is
    nesting deeper than :data:`MAX_JSON_DEPTH` (which would otherwise surface as a
    RecursionError, a 500)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidRequest(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH}).") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH}).")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _from_json(raw: bytes) -> RequestBody:
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("The JSON body must be an object.")
    body = RequestBody()
    for key, value in data.items():
        if key not in IMAGE_FIELDS:
            body.fields[key] = value
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise InvalidRequest(f"{key!r} must be a base64 string (or a list of them).")
        body.images[key] = [decode_base64(v, key) for v in values]
    return body


async def _from_form(request: Request) -> RequestBody:
    body = RequestBody()
    form = await request.form()
    try:
        for key in form.keys():
            values = form.getlist(key)
            if key in IMAGE_FIELDS:
                images = []
                for value in values:
                    if isinstance(value, UploadFile):
                        images.append(await value.read())
                    else:
                        images.append(decode_base64(value, key))
                body.images[key] = images
            else:
                texts = [v for v in values if isinstance(v, str)]
                body.fields[key] = texts[0] if len(texts) == 1 else texts
    finally:
        await form.close()
    return body


def decode_base64(text: str, field_name: str) -> bytes:
    """Standard or URL-safe base64, padding optional, ``data:...;base64,`` prefix and
    whitespace allowed."""
    cleaned = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64(
            f"Field {field_name!r} is not valid base64: {exc}", field=field_name
        ) from exc
