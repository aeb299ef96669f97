"""Reading request bodies: a size limit (413) and a strict model (400), the same everywhere."""

from __future__ import annotations

from typing import TypeVar

import falcon.asgi
from pydantic import BaseModel, ValidationError

from orchestratord.errors import ApiError, ErrorCode, invalid_params

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    length = req.content_length
    if length is not None and length > limit:
        raise ApiError(413, ErrorCode.INVALID_PARAMS, f"body exceeds {limit} bytes")
    body = await req.bounded_stream.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, ErrorCode.INVALID_PARAMS, f"body exceeds {limit} bytes")
    return body


async def parse_body(req: falcon.asgi.Request, model: type[M], limit: int) -> M:
    body = await read_body(req, limit)
    if not body.strip():
        raise invalid_params("request body is empty")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_params(describe_validation_error(exc)) from exc
