"""A request-body size limit enforced while the body streams in, before it is read whole.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading a byte of the
body; a body without one (chunked transfer) is counted as it arrives and refused as soon as the
count passes the limit. Either way no more than the limit (plus one network chunk) is ever held.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAYLOAD_TOO_LARGE = 413


class BodyTooLarge(HTTPException):
    """A request body larger than the server's limit (rendered as 413 ``{"detail": ...}``)."""

    def __init__(self, limit_bytes: int, declared: int | None = None) -> None:
        size = f" of {declared:,} bytes" if declared is not None else ""
        super().__init__(PAYLOAD_TOO_LARGE, f"request body{size} is over the limit of {limit_bytes:,} bytes "
                                            f"(--max_upload_mb {limit_bytes / 2**20:g})")


class BodySizeLimit:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_error(send, BodyTooLarge(self.max_bytes, declared))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:  # raised outside the routes' exception handling (e.g. by a middleware)
            if started:
                raise
            await _send_error(send, err)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, err: HTTPException) -> None:
    body = json.dumps({"detail": err.detail}).encode()
    await send({"type": "http.response.start", "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
