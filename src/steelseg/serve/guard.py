"""Bounded resources for the service, as a plain ASGI middleware in front of the app:

* a body limit on every POST: a declared ``Content-Length`` over it is refused at once (413) without
  reading a byte, and bytes are counted while a body streams in (chunked uploads have no length), so no
  request is held in memory or spooled to disk past the limit;
* a body-read timeout: a client that stops sending mid-body gets 408 instead of holding a worker (and a
  graceful shutdown) forever;
* a bounded queue: past ``max_queue`` requests in flight, new work is refused with 503 and
  ``Retry-After`` instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["REFUSED", "Guard", "GuardLimits"]

REFUSED = "steelseg_refused"  # scope["state"] key: the status the guard answered mid-body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class GuardLimits:
    """``body_limit(path)`` -> the largest body in bytes for a POST route; timeouts in seconds."""

    def __init__(self, body_limit: Callable[[str], int], body_timeout: float, max_queue: int) -> None:
        self.body_limit, self.body_timeout, self.max_queue = body_limit, body_timeout, max_queue


async def _answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Guard:
    """The ASGI middleware; ``app`` is the FastAPI app it guards."""

    def __init__(self, app: Any, limits: GuardLimits) -> None:
        self.app, self.limits = app, limits
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.body_limit(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, 413, f"request body of {declared} bytes, above the limit of {limit}; "
                                     "send smaller images (or fewer at once)")
            return
        if self.in_flight >= self.limits.max_queue:
            await _answer(send, 503, f"busy: {self.in_flight} requests in progress (the limit); retry shortly",
                          [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self._guarded(scope, receive, send, limit)
        finally:
            self.in_flight -= 1

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a counting, timed ``receive``. Past the limit or the timeout the guard answers
        itself (413 / 408) and tells the app the client left (``http.disconnect``), so nothing more is
        read; whatever the app still sends is dropped."""
        state = {"seen": 0, "done": False, "started": False, "refused": False}

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def refuse(status: int, message: str) -> Message:
            if not state["started"]:
                await _answer(send, status, message)
            state["refused"] = True
            scope.setdefault("state", {})[REFUSED] = status
            return {"type": "http.disconnect"}

        async def guarded_receive() -> Message:
            if state["refused"]:
                return {"type": "http.disconnect"}
            if state["done"]:  # the body is in: later calls wait for the disconnect, untimed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout)
            except asyncio.TimeoutError:
                return await refuse(408, f"the request body did not arrive within {self.limits.body_timeout:g} s "
                                         f"({state['seen']} bytes received); send it whole")
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    return await refuse(413, f"request body above the limit of {limit} bytes (stopped reading "
                                             f"at {state['seen']})")
                state["done"] = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, guarded_send)
