"""A chaos TCP proxy for fault tests: in process, one listener per proxy, its own thread.

The proxy runs an asyncio event loop in a thread of its own, so tests of ``AsyncPool`` (in
their own loop) and of ``Pool`` (in threads) use it alike. It listens on a free
``127.0.0.1`` port and forwards bytes, untouched (TLS passes through), to one upstream.

Modes, switched at run time with :meth:`ChaosProxy.set_mode` (they apply to every live
connection and to new ones):

``pass``
    Forward both ways. Coming from ``refuse``, the listener is reopened on the same port.
``latency``
    Wait ``delay`` seconds before forwarding each chunk.
``stall``
    A black hole: read what either side sends and forward nothing; sockets stay open, so
    the client sees a silent, half-open peer (a frozen server, a NAT that dropped state).
    Bytes swallowed are lost: a connection stalled mid-conversation stays broken.
``reset``
    Close every live connection with an RST (``SO_LINGER`` 0); connections accepted while
    in this mode are reset at once.
``refuse``
    Close the listener: new connections are refused; live ones keep forwarding.
``cut_after``
    Forward ``nbytes`` more bytes on each connection (counted from the switch, or from the
    accept), then reset it: a cut in the middle of a protocol message.

``connect_delay`` (a constructor argument) holds each accepted connection that many seconds
before the proxy dials upstream: a server that is slow to connect to (TCP, TLS and
authentication) but answers queries at full speed, which ``latency`` cannot give.

An end of stream from either side closes the pair (so a server backend ends when its client
goes away, also in ``stall``). ``connections`` is the number of live pairs; ``accepted``
counts every connection accepted. ``close()`` resets what is left and stops the thread.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

MODES = ("pass", "latency", "stall", "reset", "refuse", "cut_after")
_LINGER_RST = struct.pack("ii", 1, 0)


class _Pair:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.budget: int | None = None  # bytes left to forward in cut_after mode

    def close(self) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.close()

    def reset(self) -> None:
        for writer in self.writers:
            _rst(writer)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    writer.transport.abort()


class ChaosProxy:
    """Forward ``127.0.0.1:port`` to ``upstream_host:upstream_port``, with faults on demand.

    >>> proxy = ChaosProxy("127.0.0.1", 5432)  # listening once constructed
    >>> proxy.set_mode("stall")
    >>> proxy.close()
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, connect_delay: float = 0.0
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay = 0.0
        self.connect_delay = connect_delay
        self.nbytes = 0
        self.accepted = 0
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chaos-proxy", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def connections(self) -> int:
        """Live proxied connections."""
        return len(self._pairs)

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_mode(self, mode: str, *, delay: float = 0.1, nbytes: int = 0) -> None:
        """Switch every connection (live and new) to ``mode`` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        self._call(self._switch(mode, delay, nbytes))

    def close(self) -> None:
        """Reset every connection, close the listener, stop the thread. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    # ------------------------------------------------------------ in the proxy's loop

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _switch(self, mode: str, delay: float, nbytes: int) -> None:
        self.delay, self.nbytes = delay, nbytes
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()
        for pair in list(self._pairs):
            pair.budget = nbytes if mode == "cut_after" else None
            if mode == "reset":
                pair.reset()
        self.mode = mode

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pair in list(self._pairs):
            pair.reset()  # their pumps see the end of stream and finish
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):  # stuck connecting upstream
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            if self.mode == "reset":
                _rst(writer)
                return
            if self.connect_delay:
                await asyncio.sleep(self.connect_delay)
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream), timeout=5
                )
            except (OSError, TimeoutError):
                _rst(writer)
                return
            pair = _Pair(writer, up_writer)
            if self.mode == "cut_after":
                pair.budget = self.nbytes
            self._pairs.add(pair)
            try:
                await asyncio.gather(
                    self._pump(pair, reader, up_writer), self._pump(pair, up_reader, writer)
                )
            finally:
                self._pairs.discard(pair)
                pair.close()
        except asyncio.CancelledError:
            # Only close() cancels a handler; end it normally, because Python 3.11's stream
            # server logs an error for a cancelled client_connected_cb task.
            pass
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _pump(
        self, pair: _Pair, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until end of stream, applying the current mode per chunk."""
        try:
            while data := await reader.read(65536):
                mode = self.mode
                if mode == "stall":
                    continue  # swallowed: the black hole
                if mode == "latency":
                    await asyncio.sleep(self.delay)
                if pair.budget is not None:
                    if len(data) >= pair.budget:
                        writer.write(data[: pair.budget])
                        pair.reset()
                        return
                    pair.budget -= len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # reset by a peer, or by us
        finally:
            pair.close()  # one side ended: end the other (FIN), unless already reset
