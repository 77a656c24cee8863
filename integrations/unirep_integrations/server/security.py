"""API-key authentication and request limits.

With an API key set, every endpoint except ``/health`` and the two Weaviate probes
(``/.well-known/live``, ``/.well-known/ready``) needs ``Authorization: Bearer KEY``; the key is
compared in constant time (``hmac.compare_digest``) and never logged. The body size is checked
from ``Content-Length`` before anything is read, and counted while reading for chunked bodies.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

__all__ = ["Limits", "AuthMiddleware", "BodyLimitMiddleware", "PUBLIC_PATHS"]

PUBLIC_PATHS = frozenset({"/health", "/.well-known/live", "/.well-known/ready"})


@dataclass(frozen=True)
class Limits:
    """Per-request limits; ``None`` for text and pixels means the model config's own limit."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 2048  # OpenAI's limit on inputs per embeddings request
    max_text_chars: int | None = None
    max_images_per_item: int = 16
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_items", "max_images_per_item", "max_image_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        for name in ("max_text_chars", "max_image_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Limits.{name} must be a positive integer or None, got {value!r}")


class AuthMiddleware:
    """Bearer-key check in front of every non-public path."""

    def __init__(self, app: ASGIApp, api_key: str):
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._key = api_key.encode("utf-8")

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # compare_digest on equal-type bytes: time depends on length only, not content
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(scope.get("path", ""), 401,
                                  "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                                  code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: up front from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None = None) -> str:
        given = f" ({size} bytes)" if size is not None else ""
        return f"request body{given} exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    response = error_response(scope.get("path", ""), 400, "invalid Content-Length header")
                    await response(scope, receive, send)
                    return
                if size > self.max_bytes:
                    response = error_response(scope.get("path", ""), 413, self._message(size),
                                              code="request_too_large")
                    await response(scope, receive, send)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the endpoint's body read: FastAPI re-raises HTTPExceptions
                    raise ApiError(413, self._message(), code="request_too_large")
            return message

        await self.app(scope, counting_receive, send)
