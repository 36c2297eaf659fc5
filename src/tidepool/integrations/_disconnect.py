"""An ASGI middleware that cancels a request's handler when its client disconnects.

Framework-free: it speaks plain ASGI, so the Starlette, FastAPI and Litestar integrations all
export it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["CancelOnDisconnectMiddleware"]

# Plain ASGI, typed loosely on purpose: Starlette and Litestar each declare the ASGI callables
# with their own (incompatible) scope types, and this middleware must fit both.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnectMiddleware:
    """Cancel an HTTP request's handler when the client disconnects before the response is
    complete.

    Without it, a handler whose client went away (a closed tab, a client-side timeout, a proxy
    that gave up) runs to its end: its query keeps a pooled connection and the database busy
    for an answer nobody will read. With it, the handler is cancelled as any asyncio task is:
    ``async with pool.acquire()`` (and the integrations' connection dependencies) give the
    connection back, and the pool cancels the query still running on it and resets the session
    before lending it again.

    Contract:

    - Only ``http`` requests are watched; websockets and lifespan pass through untouched.
    - Nothing is cancelled once the last body message of the response has been sent, so
      background work that runs after the response (Starlette's ``BackgroundTasks``) is safe.
    - The cancellation is delivered to the task that runs this middleware; the handler must run
      in that task, which is the case for Starlette, FastAPI and Litestar handlers unless a
      middleware that starts its own task (Starlette's ``BaseHTTPMiddleware``) sits between.
      Add this middleware outermost.
    - The cancelled request ends without a response (there is nobody to send it to) and
      without an error log; a cancellation from elsewhere (server shutdown) propagates as
      usual.
    - The request body is read at most one message ahead of the application, so the server's
      flow control still applies; a disconnect is noticed as soon as the application has taken
      the messages read so far (at once for a request without a body).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None  # an ASGI server runs every request in a task
        watch = _Watch(task, receive, send)
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if watch.settle() and task.uncancel() == 0:
                return  # cancelled because the client left: there is no one to answer
            raise
        finally:
            if watch.settle():  # the application swallowed our cancellation
                task.uncancel()


class _Watch:
    """Reads the request's messages ahead of the application (one at most) and cancels the
    request's task when a disconnect arrives before the response is complete."""

    def __init__(self, task: asyncio.Task[Any], receive: Receive, send: Send) -> None:
        self._task = task
        self._receive = receive
        self._send = send
        self._messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)
        self._disconnected = False
        self._error: BaseException | None = None
        self._response_complete = False
        self._settled = False
        self._cancelled = False
        self._watcher = asyncio.create_task(self._watch(), name="tidepool-disconnect-watch")

    async def _watch(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    break
                await self._messages.put(message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the server's receive failed: hand that to the app
            self._error = exc
        self._disconnected = True
        if not self._messages.full():
            self._messages.put_nowait(_DISCONNECT)  # wakes a pending receive()
        if not (self._response_complete or self._settled) and self._error is None:
            self._cancelled = True
            self._task.cancel()

    async def receive(self) -> Message:
        if self._disconnected and self._messages.empty():
            if self._error is not None:
                raise self._error
            return dict(_DISCONNECT)
        return await self._messages.get()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "http.response.pathsend"
        ):
            self._response_complete = True
        await self._send(message)

    def settle(self) -> bool:
        """Stop watching; ``True`` the first time it is called after this watch cancelled the
        task (so the caller balances that cancellation exactly once)."""
        first = not self._settled
        self._settled = True
        self._watcher.cancel()
        return first and self._cancelled
