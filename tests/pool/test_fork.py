"""``Pool`` across ``os.fork()`` (PROC-1, PROC-2): the child never uses nor closes the
parent's connections, starts afresh without deadlocking, and the parent is unaffected."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from fakes import FakeConnection, FakeManager, settle_sync, until_sync
from tidepool import Pool


class TouchLog(FakeManager):
    """A fake manager that records which connection each check/reset/close touched."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[tuple[str, int]] = []

    def check(self, conn: FakeConnection) -> None:
        self.touched.append(("check", conn.id))
        super().check(conn)

    def reset(self, conn: FakeConnection) -> None:
        self.touched.append(("reset", conn.id))
        super().reset(conn)

    def close(self, conn: FakeConnection) -> None:
        self.touched.append(("close", conn.id))
        super().close(conn)


def no_worker_threads(name: str) -> bool:
    return not [
        t
        for t in threading.enumerate()
        if t.name.startswith("tidepool-") and t.name.endswith(name) and "maintenance" not in t.name
    ]


def run_in_child(child: Callable[[], dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
    """Fork; run ``child`` in the child and return the dict it reports through a pipe.

    The child always leaves with ``os._exit``; the parent kills it if it does not finish in
    ``timeout`` seconds (a deadlock) and fails the test.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in a process with threads; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            try:
                report = child()
                code = 0
            except BaseException as exc:
                where = "".join(traceback.format_exception(exc))
                report = {"error": f"{type(exc).__name__}: {exc}", "where": where}
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child did not finish within {timeout} s (deadlock?)")
            time.sleep(0.01)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


# ---------------------------------------------------------------- PROC-1


def test_child_gets_fresh_connections_and_leaves_parents_alone() -> None:
    name = "fork-proc1"
    manager = TouchLog()
    pool = Pool(manager, max_size=4, min_size=2, name=name)
    try:
        pool.open()
        lent = pool.getconn()
        settle_sync(pool, manager)
        until_sync(lambda: no_worker_threads(name))
        before = pool.stats()
        assert before.idle >= 1
        assert before.in_use == 1
        parent_conns = set(manager.live)
        parent_ids = {c.id for c in parent_conns}
        touched_before = len(manager.touched)

        def child() -> dict[str, Any]:
            after_fork = pool.stats()
            with pool.acquire(timeout=3) as conn:
                first_id = conn.id
            second = pool.getconn(timeout=3)
            second_id = second.id
            pool.release(second)
            in_child = pool.stats()
            pool.close(timeout=1)
            return {
                "size_after_fork": after_fork.size,
                "first_id": first_id,
                "second_id": second_id,
                "size_in_child": in_child.size,
                "touched": [cid for _op, cid in manager.touched[touched_before:]],
                "parent_closed": [c.id for c in parent_conns if c.closed],
                "live_after_close": sorted(c.id for c in manager.live),
                "size_after_close": pool.stats().size,
            }

        report = run_in_child(child)
        assert "error" not in report, report
        assert report["size_after_fork"] == 0  # nothing inherited is counted
        assert report["first_id"] not in parent_ids
        assert report["second_id"] not in parent_ids
        assert not set(report["touched"]) & parent_ids  # never checked, reset or closed
        assert report["parent_closed"] == []
        assert report["live_after_close"] == sorted(parent_ids)  # only the parent's remain
        assert report["size_after_close"] == 0

        # The parent is unaffected.
        assert pool.stats() == before
        assert not any(c.closed for c in parent_conns)
        assert not lent.closed
        pool.release(lent)
        got = [pool.getconn(timeout=5) for _ in range(before.size)]
        assert set(got) == parent_conns
        for conn in got:
            pool.release(conn)
        settle_sync(pool, manager)
        assert set(manager.live) == parent_conns
    finally:
        pool.close()
    assert manager.live == set()


def test_child_can_release_nothing_it_inherited() -> None:
    name = "fork-inherited-lease"
    manager = TouchLog()
    pool = Pool(manager, max_size=2, name=name)
    try:
        lent = pool.getconn()
        settle_sync(pool, manager)
        until_sync(lambda: no_worker_threads(name))

        def child() -> dict[str, Any]:
            # Giving back a connection lent before the fork is refused in the child: it is not
            # the child's to reuse or close.
            try:
                pool.release(lent)
                outcome = "released"
            except ValueError as exc:
                outcome = "ValueError: " + str(exc)
            result = {
                "outcome": outcome,
                "closed": lent.closed,
                "touched": [cid for _op, cid in manager.touched],
                "size": pool.stats().size,
            }
            pool.close(timeout=1)
            return result

        report = run_in_child(child)
        assert report["outcome"].startswith("ValueError"), report
        assert name in report["outcome"]
        assert report["closed"] is False
        assert lent.id not in report["touched"]
        assert report["size"] == 0
        assert not lent.closed
        pool.release(lent)
        settle_sync(pool, manager)
    finally:
        pool.close()


# ---------------------------------------------------------------- PROC-2


def test_fork_while_a_thread_waits_in_acquire() -> None:
    name = "fork-proc2"
    manager = TouchLog()
    pool = Pool(manager, max_size=1, name=name)
    got: list[FakeConnection] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with pool.acquire(timeout=15) as conn:
                got.append(conn)
        except BaseException as exc:
            errors.append(exc)

    try:
        held = pool.getconn()
        thread = threading.Thread(target=waiter, name="blocked-in-acquire")
        thread.start()
        until_sync(lambda: pool.stats().waiting == 1)

        def child() -> dict[str, Any]:
            started = time.monotonic()
            with pool.acquire(timeout=3) as conn:
                conn_id = conn.id
            took = time.monotonic() - started
            stats = pool.stats()
            pool.close(timeout=1)
            return {"id": conn_id, "took": took, "waiting": stats.waiting, "size": stats.size}

        report = run_in_child(child)
        assert "error" not in report, report
        assert report["id"] != held.id
        assert report["waiting"] == 0  # the parent's waiter is not the child's
        assert report["size"] == 1

        # In the parent the waiter is still queued and is served by the release.
        assert pool.stats().waiting == 1
        pool.release(held)
        thread.join(10)
        assert not thread.is_alive()
        assert errors == []
        assert got == [held]
        settle_sync(pool, manager)
    finally:
        pool.close()


def test_fork_while_another_thread_hammers_the_pool() -> None:
    name = "fork-hammer"
    manager = TouchLog()
    # reset=False and check="never": the hammering thread never enters the fake manager (whose
    # own lock is not fork-safe), only the pool's state and its lock.
    pool = Pool(manager, max_size=2, min_size=2, reset=False, check="never", name=name)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                pool.stats()
                lease = pool.try_acquire()
                if lease is not None:
                    with lease:
                        pass
        except BaseException as exc:
            errors.append(exc)

    try:
        pool.open()
        settle_sync(pool, manager)
        until_sync(lambda: no_worker_threads(name))
        parent_ids = {c.id for c in manager.live}
        thread = threading.Thread(target=hammer, name="hammer")
        thread.start()
        try:
            for _ in range(3):

                def child() -> dict[str, Any]:
                    with pool.acquire(timeout=3) as conn:
                        conn_id = conn.id
                    pool.close(timeout=1)
                    return {"id": conn_id}

                report = run_in_child(child)
                assert "error" not in report, report
                assert report["id"] not in parent_ids
        finally:
            stop.set()
            thread.join(10)
        assert errors == []
        settle_sync(pool, manager)
        assert {c.id for c in manager.live} == parent_ids
    finally:
        pool.close()
