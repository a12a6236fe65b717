"""Request body limit with a clear JSON 413 that clients actually receive."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Past this many bytes an oversized body is no longer read; the connection is simply closed.
DRAIN_LIMIT = 512 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised inside the app when a request body (without a Content-Length) passes the limit."""


class UploadLimitMiddleware:
    """Answer ``413`` with a JSON ``detail`` naming the limit for bodies over ``max_bytes``.

    The rest of an oversized body is read and dropped before answering (up to ``DRAIN_LIMIT``):
    a server that closes a connection with unread data makes the client's TCP stack reset it, and
    the browser then reports a network error instead of the 413 message.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        megabytes = self.max_bytes / (1024 * 1024)
        return f"the upload is larger than the server's limit of {megabytes:g} MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            await self._reply(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reply(send)

    async def _drain(self, receive: Receive) -> None:
        drained = 0
        while drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reply(self, send: Send) -> None:
        body = json.dumps({"detail": self._message()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
