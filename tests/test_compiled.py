"""Which build of the core runs: the ``.py`` files, or the same files compiled with mypyc.

``make test`` runs the whole suite against the source, then the core and pool tests again
against ``build/compiled`` (``make unit-compiled``, with ``TIDEPOOL_EXPECT_COMPILED=1``). This
check keeps each pass honest: the compiled pass must really import extension modules, and the
source pass must never pick up a stale compiled module that would hide an edit.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

import tidepool
import tidepool._core.deadlines
import tidepool._core.entry
import tidepool._core.state
import tidepool._core.waiter

EXPECT_COMPILED = os.environ.get("TIDEPOOL_EXPECT_COMPILED") == "1"
CORE = (tidepool._core.state, tidepool._core.entry, tidepool._core.deadlines)


def _is_extension(module: object) -> bool:
    path = str(getattr(module, "__file__", ""))
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def test_core_is_compiled_exactly_when_expected() -> None:
    builds = {module.__name__: _is_extension(module) for module in CORE}
    assert builds == dict.fromkeys(builds, EXPECT_COMPILED)


def test_waiter_stays_interpreted_so_the_shells_can_subclass_it() -> None:
    assert not _is_extension(tidepool._core.waiter)


def _weakly_referenced(pool: Any) -> list[str]:
    """The pool's compiled-class objects that something holds a weak reference to."""
    state = pool._state
    objects: dict[str, object] = {"PoolState": state}
    for entry in [*state.idle, *state.lent.values()]:
        objects[f"Entry #{entry.id}"] = entry
    for name in ("_deadlines", "_call_deadlines"):  # AsyncPool's DeadlineHeaps
        if hasattr(pool, name):
            objects[name] = getattr(pool, name)
    return [name for name, obj in objects.items() if weakref.getweakrefcount(obj)]


def test_no_compiled_object_is_weakly_referenced_sync() -> None:
    """mypyc's native classes accept weak references when a base is ``typing.Generic``, but
    their deallocator never clears them (mypyc/mypyc#1102), so one taken to an ``Entry`` or
    the ``PoolState`` would crash the process once that object is freed. The pure build
    refuses such a reference; in either build, nothing in the pool may take one (the lent
    connection's weak reference names its entry as the callback, not the referent)."""
    with tidepool.Pool("sqlite://:memory:", max_size=2, min_size=2) as pool:
        with pool.acquire():
            assert _weakly_referenced(pool) == []
        assert _weakly_referenced(pool) == []


def test_no_compiled_object_is_weakly_referenced_async() -> None:
    async def main() -> None:
        async with tidepool.AsyncPool("sqlite://:memory:", max_size=1, min_size=1) as pool:
            async with pool.acquire():
                waiting = asyncio.create_task(pool.fetch_value("select 1"))
                await asyncio.sleep(0.01)  # queued behind the lent connection
                assert _weakly_referenced(pool) == []
            assert await waiting == 1
            assert _weakly_referenced(pool) == []

    asyncio.run(main())
