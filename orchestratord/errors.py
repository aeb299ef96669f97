"""The one error envelope (HOME-901) and the exception that carries it.

Every failure a client can see — validation, auth, backpressure, engine outage — is an
:class:`ApiError`, rendered by one Falcon error handler so that status, body and headers stay
consistent everywhere.
"""

from __future__ import annotations

import enum
import math
from typing import Any


class ErrorCode(enum.StrEnum):
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    INVALID_PARAMS = "INVALID_PARAMS"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    REPLICA_EXHAUSTED = "REPLICA_EXHAUSTED"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    INTERNAL = "INTERNAL"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    MODEL_DEPRECATED = "MODEL_DEPRECATED"
    UNTRUSTED_ARTIFACT = "UNTRUSTED_ARTIFACT"
    # The catalog names no codes for these statuses; the project adds them (see .specs).
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"


class ApiError(Exception):
    """An error with everything needed to render the envelope and its headers."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        engine: str | None = None,
        retriable: bool | None = None,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.engine = engine
        self.retriable = retriable
        self.retry_after_ms = retry_after_ms
        self.policy_label = policy_label

    def envelope(self, correlation_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.engine is not None:
            body["engine"] = self.engine
        if self.retriable is not None:
            body["retriable"] = self.retriable
        if self.retry_after_ms is not None:
            body["retry_after_ms"] = self.retry_after_ms
        if self.policy_label is not None:
            body["policy_label"] = self.policy_label
        body["correlation_id"] = correlation_id
        return body

    def headers(self) -> dict[str, str]:
        if self.retry_after_ms is None:
            return {}
        # Retry-After is whole seconds (RFC 9110); round up so a client never retries early.
        seconds = max(1, math.ceil(self.retry_after_ms / 1000))
        return {"Retry-After": str(seconds), "X-Backoff-Ms": str(self.retry_after_ms)}


def invalid_params(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_PARAMS, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, ErrorCode.CONFLICT, message)


# Falcon raises its own HTTPError for routing/method problems; map those statuses onto the
# envelope's codes so nothing escapes the contract.
_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_PARAMS,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_PARAMS,
    409: ErrorCode.CONFLICT,
    411: ErrorCode.INVALID_PARAMS,
    413: ErrorCode.INVALID_PARAMS,
    415: ErrorCode.INVALID_PARAMS,
    501: ErrorCode.NOT_IMPLEMENTED,
}


def code_for_status(status: int) -> ErrorCode:
    return _STATUS_CODES.get(status, ErrorCode.INTERNAL)
