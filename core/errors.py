"""The one error classifier: every exception becomes the OpenAI error envelope of API.md."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("universal_runtime.errors")


class APIError(Exception):
    """An error with a defined place in the API.md error table."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = "invalid_value"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(APIError):
    """400: malformed or missing field, bad value, undecodable media, input too long."""


class UnsupportedModelType(APIError):
    """400: the model cannot serve this endpoint."""

    code = "unsupported_model_type"

    def __init__(self, message: str, *, param: str | None = "model", **kw: Any) -> None:
        super().__init__(message, param=param, **kw)


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotAllowed(APIError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"

    def __init__(self, message: str, *, param: str | None = "model", **kw: Any) -> None:
        super().__init__(message, param=param, **kw)


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model", **kw: Any) -> None:
        super().__init__(message, param=param, **kw)


class NotFound(APIError):
    """404: a stored object (a response) that does not exist."""

    status = 404
    code = "not_found"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class ServerOverloaded(APIError):
    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


class InsufficientMemory(APIError):
    status = 503
    type = "server_error"
    code = "insufficient_memory"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


class Unavailable(APIError):
    status = 503
    type = "server_error"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_value"),  # e.g. a form or JSON body the framework could not parse
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    401: ("authentication_error", "invalid_api_key"),
}


NOT_JSON = "Request body is not valid JSON."
NOT_AN_OBJECT = "Request body must be a JSON object (send Content-Type: application/json)."
# FastAPI's own 400 for a JSON body its parser refused with anything but a JSONDecodeError (nesting too deep for
# the parser, bytes that are not UTF-8): reworded like every other unparseable body.
FRAMEWORK_PARSE_ERROR = "There was an error parsing the body"


def envelope(message: str, type_: str, code: str | None, param: str | None) -> dict[str, Any]:
    """The JSON body of an error: OpenAI's envelope plus a flat `detail`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}, "detail": message}


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    # pydantic adds union-branch / validator names like "str", "list[str]", "function-after[...]"
    parts = [p for p in parts if not (p.endswith("]") or p in ("str", "int", "float", "list", "dict", "bool"))]
    return ".".join(parts) or None


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = _loc_to_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return NOT_JSON, None
    if param is None and first.get("type") == "missing":
        return "Request body is empty: send a JSON object.", None
    if param is None and first.get("type") in ("dict_type", "model_attributes_type", "model_type"):
        return NOT_AN_OBJECT, None
    if first.get("type") == "missing" and param:
        return f"Missing required field '{param}'.", param
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


def is_out_of_memory(exc: BaseException) -> bool:
    """True for host or device out-of-memory errors (torch's CUDA/MPS OOM included)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "MPS backend out of memory" in text)


def classify(exc: BaseException, request_id: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to (status, JSON body, extra headers)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if isinstance(exc, APIError):
        return exc.status, envelope(exc.message, exc.type, exc.code, exc.param), dict(exc.headers)
    if isinstance(exc, RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return 400, envelope(message, "invalid_request_error", "invalid_value", param), {}
    if isinstance(exc, StarletteHTTPException):
        type_, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error" if exc.status_code < 500
                                                         else "server_error", None))
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and detail == "Not Found":
            detail = "Unknown route."
        if exc.status_code == 405:
            detail = "Method not allowed for this route."
        if exc.status_code == 400 and detail == FRAMEWORK_PARSE_ERROR:
            detail = NOT_JSON
        return exc.status_code, envelope(detail, type_, code, None), dict(exc.headers or {})
    if is_out_of_memory(exc):
        msg = "Not enough memory to run this request; try again later or a smaller model."
        return 503, envelope(msg, "server_error", "insufficient_memory", None), {"Retry-After": "5"}
    logger.error("unexpected error (request %s)", request_id, exc_info=exc)
    msg = f"Internal server error (request id {request_id})." if request_id else "Internal server error."
    return 500, envelope(msg, "server_error", None, None), {}
