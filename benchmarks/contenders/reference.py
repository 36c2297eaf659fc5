"""The references: no pool at all, and the cheapest pool that can be written.

``Raw``       one dedicated connection per worker: what a query costs with no pool.
``Semaphore`` ``size`` fixed connections behind a semaphore and a free list: the same number of
              connections as the pools, with nothing else (``asyncio.Semaphore`` is FIFO, so this
              one is fair; ``threading.Semaphore`` is not).
``Queue``     the 20-line pool, an ``asyncio.Queue`` / ``queue.LifoQueue`` of connections: the
              floor of what a pool can cost. Both let the releasing worker take the connection
              straight back, so under contention they starve waiters: read them for
              throughput, not as a design.

Each is written over a driver (``drivers.py``); on the null drivers they hold plain objects. A
contender's ``lease_for(worker)`` returns the zero-argument callable the worker calls for each
operation, whose result is entered with ``async with`` / ``with``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any


class Held:
    """A connection kept by one worker: entering it lends that connection, for both modes."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self) -> Held:
        return self

    async def __aenter__(self) -> Any:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


class _Fixed:
    """A fixed set of connections opened up front; the subclasses say how they are lent."""

    lends_client = False

    def __init__(self, driver: Any, count: int) -> None:
        self.driver = driver
        self.count = count
        self.conns: list[Any] = []

    def _ready(self, conns: list[Any]) -> None:
        self.conns = conns

    def stats(self) -> dict[str, Any]:
        return {"size": len(self.conns)}


class AsyncFixed(_Fixed):
    async def open(self) -> None:
        self._ready(await self.driver.connect_many(self.count))

    async def close(self) -> None:
        await self.driver.close_many(self.conns)


class SyncFixed(_Fixed):
    def open(self) -> None:
        self._ready(self.driver.connect_many(self.count))

    def close(self) -> None:
        self.driver.close_many(self.conns)


# ------------------------------------------------------------------ raw: one per worker


class _Raw:
    conns: list[Any]

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return Held(self.conns[worker])


class AsyncRaw(_Raw, AsyncFixed):
    pass


class SyncRaw(_Raw, SyncFixed):
    pass


# ------------------------------------------------------------------ raw-sem


class _AsyncSemLease:
    __slots__ = ("conn", "owner")

    def __init__(self, owner: AsyncSemaphore) -> None:
        self.owner = owner

    async def __aenter__(self) -> Any:
        await self.owner.sem.acquire()
        self.conn = self.owner.free.pop()
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        self.owner.free.append(self.conn)
        self.owner.sem.release()


class AsyncSemaphore(AsyncFixed):
    def _ready(self, conns: list[Any]) -> None:
        super()._ready(conns)
        self.free = list(conns)
        self.sem = asyncio.Semaphore(len(conns))

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_AsyncSemLease, self)


class _SyncSemLease:
    __slots__ = ("conn", "owner")

    def __init__(self, owner: SyncSemaphore) -> None:
        self.owner = owner

    def __enter__(self) -> Any:
        self.owner.sem.acquire()
        self.conn = self.owner.free.pop()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.owner.free.append(self.conn)
        self.owner.sem.release()


class SyncSemaphore(SyncFixed):
    def _ready(self, conns: list[Any]) -> None:
        super()._ready(conns)
        self.free = list(conns)
        self.sem = threading.Semaphore(len(conns))

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_SyncSemLease, self)


# ------------------------------------------------------------------ the 20-line pools


class _AsyncQueueLease:
    __slots__ = ("conn", "q")

    def __init__(self, q: asyncio.Queue[Any]) -> None:
        self.q = q

    async def __aenter__(self) -> Any:
        self.conn = await self.q.get()
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        self.q.put_nowait(self.conn)


class AsyncQueue(AsyncFixed):
    def _ready(self, conns: list[Any]) -> None:
        super()._ready(conns)
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        for conn in conns:
            self.q.put_nowait(conn)

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_AsyncQueueLease, self.q)


class _SyncQueueLease:
    __slots__ = ("conn", "q")

    def __init__(self, q: queue.LifoQueue[Any]) -> None:
        self.q = q

    def __enter__(self) -> Any:
        self.conn = self.q.get()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.q.put_nowait(self.conn)


class SyncQueue(SyncFixed):
    def _ready(self, conns: list[Any]) -> None:
        super()._ready(conns)
        self.q: queue.LifoQueue[Any] = queue.LifoQueue()
        for conn in conns:
            self.q.put_nowait(conn)

    def lease_for(self, worker: int) -> Callable[[], Any]:
        return partial(_SyncQueueLease, self.q)
