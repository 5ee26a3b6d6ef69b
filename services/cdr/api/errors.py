"""The API's error model: ``{"error": {"code", "message", "param"?}}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from cdr.api.responses import OrjsonResponse


class ApiError(Exception):
    status = 400
    code = "invalid_parameter"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


class InvalidParameter(ApiError):
    status = 400
    code = "invalid_parameter"


class InvalidScrollId(ApiError):
    status = 400
    code = "invalid_scroll_id"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="cdr"'})


class NotFound(ApiError):
    status = 404
    code = "not_found"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class QueryBudgetExceeded(ApiError):
    status = 503
    code = "query_budget_exceeded"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class UriTooLong(ApiError):
    status = 414
    code = "uri_too_long"


class HeadersTooLarge(ApiError):
    status = 431
    code = "headers_too_large"


class Internal(ApiError):
    status = 500
    code = "internal"


def _error_classes() -> list[type[ApiError]]:
    found: list[type[ApiError]] = []
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def error_codes() -> list[str]:
    """Every code the API can send: one per error class (the OpenAPI enum is built from it)."""
    return sorted({cls.code for cls in _error_classes()})


def error_statuses() -> list[int]:
    """Every HTTP status an error of the API is sent with."""
    return sorted({cls.status for cls in _error_classes()})


def error_response(error: ApiError) -> Response:
    return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)
