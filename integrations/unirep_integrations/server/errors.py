"""Errors in the shape each facade's clients expect, and the last-resort 500 guard.

* OpenAI paths (``/v1/...`` and everything else): ``{"error": {"message", "type", "param", "code"}}``
* TEI (``/embed``, ``/rerank``, ``/info``): ``{"error": "...", "error_type": "Validation"}``
* Weaviate module API (``/vectorize``, ``/vectors``, ``/meta``, ``/.well-known/*``): ``{"error": "..."}``

Every 4xx comes from :class:`ApiError`, a request validation error or a routing miss; an
unexpected exception is logged with its traceback (method and path only: never headers, so
never an API key) and answered ``500`` with JSON, and the server keeps serving.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiError", "facade_of", "error_response", "install_error_handlers", "GuardMiddleware",
           "validation_message"]

logger = logging.getLogger("unirep_integrations.server")

TEI_PATHS = frozenset({"/embed", "/rerank", "/info"})
WEAVIATE_PATHS = frozenset({"/vectorize", "/vectors", "/vectors/", "/meta", "/.well-known/live",
                            "/.well-known/ready"})
_TEI_TYPES = {401: "Unauthorized", 404: "NotFound", 413: "Validation", 422: "Validation", 500: "Backend",
              503: "Unhealthy"}


class ApiError(HTTPException):
    """A client-facing error: status, one clear message, and the OpenAI ``param`` / ``code``."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=dict(headers) if headers else None)
        self.message = message
        self.param = param
        self.code = code


def facade_of(path: str) -> str:
    if path in TEI_PATHS:
        return "tei"
    if path in WEAVIATE_PATHS:
        return "weaviate"
    return "openai"


def _openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(path: str, status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    facade = facade_of(path)
    if facade == "tei":
        body: dict[str, Any] = {"error": message,
                                "error_type": _TEI_TYPES.get(status, "Validation" if status < 500 else "Backend")}
    elif facade == "weaviate":
        body = {"error": message}
    else:
        body = {"error": {"message": message, "type": _openai_type(status), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _loc(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """(status, message, param) for pydantic/FastAPI request validation errors."""
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return 400, f"request body is not valid JSON ({detail})" if detail else "request body is not valid JSON", None
    parts, param = [], None
    for e in list(errors)[:5]:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        # union branches add a type tag such as 'str' or 'list[...]'; they only add noise
        loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")))]
        where = _loc(loc)
        msg = str(e.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e.get("type") == "missing":
            msg = "field required" if where else "a JSON request body is required"
        elif e.get("type") in ("model_attributes_type", "dict_type") and not where:
            msg = "the request body must be a JSON object (send Content-Type: application/json)"
        param = param or (where or None)
        parts.append(f"{where}: {msg}" if where else msg)
    return 422, "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, exc.message, param=exc.param, code=exc.code,
                              headers=exc.headers)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = validation_message(exc.errors())
        return error_response(request.url.path, status, message, param=param)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(request.url.path, exc.status_code, message, headers=exc.headers)

    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]


class GuardMiddleware:
    """Turns an exception that escaped every handler into a logged JSON 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # the response is half sent: nothing valid can follow
                raise
            response = error_response(scope.get("path", ""), 500,
                                      "internal server error; the server logged the details and keeps serving",
                                      code="internal_error")
            await response(scope, receive, send)
