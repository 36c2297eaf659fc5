"""Redis: a borrower that changed nothing in its session costs no reset round trip, and one
that wrote a session command or left a reply unread, however it did so, still gets the full
reset (issue 5: reset cost without trading the clean-session guarantee; STATE-8, CAN-4).

Whether the reset ran is read on the server: ``CLIENT LIST`` shows each connection's last
command, which is the borrower's own when nothing was sent on return and the reset's closing
``PING`` when it ran.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
import redis
import redis.asyncio

from redis_helpers import admin, clients, redis_url, unique
from tidepool.adapters._redis_traffic import SESSION_COMMANDS, changes_session, untouched, watch

from .test_redis import DB, RPool, flavor, keys, maybe_await, text

__all__ = ["flavor", "keys"]  # the fixtures, shared with test_redis


def last_command(pool_name: str) -> str:
    """The last command the server ran for the pool's only connection."""
    (entry,) = clients(pool_name)
    return entry["cmd"]


def server_fields(pool_name: str) -> dict[str, str]:
    (entry,) = clients(pool_name)
    return entry


# ---------------------------------------------------------------------- nothing to undo


def test_a_borrower_that_changed_nothing_costs_no_round_trip(flavor: str, keys: list[str]) -> None:
    key = unique("tp-skip")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            async with p.borrow() as a:
                await a.run("SELECT", 3)  # the first reset is a full one
            assert last_command(p.name) == "ping"
            for _ in range(20):
                async with p.borrow() as a:
                    await maybe_await(a.raw.set(key, "v"))  # a client method
                    assert text(await a.run("GET", key)) == "v"  # execute_command
                    await a.send("ECHO", "raw")  # the connection's own send and read
                    assert text(await a.read()) == "raw"
                assert last_command(p.name) == "echo", "a reset ran after a clean borrow"
            assert text(await p.execute("GET", key)) == "v"  # the pool's executor path
            assert last_command(p.name) == "get"
            fields = server_fields(p.name)
            assert (fields["db"], fields["multi"], fields["name"]) == (str(DB), "-1", p.name)
            await p.check_invariants()

    asyncio.run(main())


def test_needs_reset_says_what_the_reset_would_find(flavor: str, keys: list[str]) -> None:
    # The pool asks needs_reset() first and skips the whole reset when it says False.
    key = unique("tp-needs")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            manager = p.pool.manager
            async with p.borrow() as a:
                await a.run("SET", key, "v")
                assert not manager.needs_reset(a.raw)
                await a.run("SELECT", 3)
                assert manager.needs_reset(a.raw)  # a session command
            async with p.borrow() as a:
                assert not manager.needs_reset(a.raw)  # the reset ran
                pipe = a.raw.pipeline(transaction=False)
                pipe.get(key)
                assert text((await maybe_await(pipe.execute()))[0]) == "v"
                await maybe_await(pipe.reset())
                # The pipeline's own connection, outside the pool's count, waits to be closed.
                assert manager.needs_reset(a.raw)
            async with p.borrow() as a:
                assert not manager.needs_reset(a.raw)  # the extra one was closed
                await maybe_await(a.raw.connection.disconnect())
                assert manager.needs_reset(a.raw)  # gone: the reset fails and retires it
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- session commands

DIRTIERS: dict[str, tuple[Any, ...]] = {
    "select": ("SELECT", 5),
    "select-lowercase": ("select", 5),
    "select-bytes": (b"SELECT", 5),
    "multi-left-open": ("MULTI",),
    "watch": ("WATCH", "tp-watched"),
    "client-setname-one-word": ("CLIENT SETNAME", "someone-else"),
    "client-setname": ("client", "setname", "someone-else"),
    "hello-resp2": ("HELLO", 2),
    "hello-resp3": ("HELLO", 3),
    "readonly": ("READONLY",),  # refused outside a cluster: written all the same
}


@pytest.mark.parametrize("command", list(DIRTIERS.values()), ids=list(DIRTIERS))
def test_a_session_command_still_gets_the_full_reset(
    flavor: str, command: tuple[Any, ...], keys: list[str]
) -> None:
    key = unique("tp-dirty")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            await p.execute("SET", key, f"in-db-{DB}")
            before = server_fields(p.name)
            async with p.borrow() as a:
                if command == DIRTIERS["readonly"]:
                    with pytest.raises(redis.ResponseError, match="cluster"):
                        await a.run(*command)
                else:
                    await a.run(*command)
            assert last_command(p.name) == "ping"  # the reset ran
            after = server_fields(p.name)
            for field in ("id", "db", "multi", "name", "resp", "flags", "user"):
                assert after[field] == before[field], field
            async with p.borrow() as b:
                assert text(await b.run("GET", key)) == f"in-db-{DB}"
            await p.check_invariants()

    asyncio.run(main())


def test_a_subscribed_connection_is_never_lent_as_clean(flavor: str) -> None:
    channel = unique("tp-chan")

    async def main() -> None:
        async with RPool(flavor, redis_url(DB, protocol="2")) as p:
            async with p.borrow() as a:
                await a.send("SUBSCRIBE", channel)
                assert text((await a.read())[0]) == "subscribe"
                with admin() as other:
                    assert other.publish(channel, "unread") == 1
            async with p.borrow() as b:
                assert text(await b.run("ECHO", "mine")) == "mine"
            assert server_fields(p.name)["sub"] == "0"
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- replies left unread


def test_a_reply_left_unread_never_reaches_the_next_borrower(flavor: str, keys: list[str]) -> None:
    key = unique("tp-unread")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            await p.execute("SET", key, "v")
            for _ in range(3):
                async with p.borrow() as a:
                    await a.send("EXISTS", key)  # walks away without the reply
                async with p.borrow() as b:
                    assert text(await b.run("ECHO", "mine")) == "mine"
                    assert text(await b.run("GET", key)) == "v"
            await p.check_invariants()

    asyncio.run(main())


def test_a_read_that_timed_out_leaves_the_reply_owed_and_the_reset_runs(keys: list[str]) -> None:
    """redis.asyncio's ``read_response(timeout=...)`` returns ``None`` on expiry and keeps the
    connection: the reply still owed must not reach the next borrower."""
    empty, mine = unique("tp-empty"), unique("tp-mine")
    keys.extend([empty, mine])

    async def main() -> None:
        async with RPool("async") as p:
            await p.execute("SET", mine, "own")
            async with p.borrow() as a:
                await a.send("BLPOP", empty, 0.3)
                assert await a.read(timeout=0.05) is None  # gave up; the reply comes later
            async with p.borrow() as b:
                assert text(await b.run("GET", mine)) == "own"
                await asyncio.sleep(0.4)  # past the BLPOP's own timeout
                assert text(await b.run("GET", mine)) == "own"
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- the counting itself


@pytest.mark.parametrize(
    "name",
    ["SELECT", "select", b"select", "CLIENT SETNAME", "client  tracking", b"MULTI", "Reset"],
)
def test_session_command_names_in_any_spelling(name: Any) -> None:
    assert changes_session(name)
    assert changes_session(name)  # and from the remembered verdict


@pytest.mark.parametrize("name", ["GET", "set", b"HSET", "CONFIG GET", "EVAL", "FCALL"])
def test_data_commands_leave_the_session(name: Any) -> None:
    assert not changes_session(name)


@pytest.mark.parametrize("name", ["", b"  ", 7, None, memoryview(b"GET")])
def test_an_unreadable_command_name_counts_as_a_change(name: Any) -> None:
    assert changes_session(name)


def test_every_command_reset_undoes_is_listed() -> None:
    """What Redis documents RESET as undoing, by the commands that set it up."""
    undone = {"MULTI", "WATCH", "CLIENT", "READONLY", "ASKING", "HELLO", "SELECT", "MONITOR"}
    undone |= {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "AUTH"}
    assert undone <= SESSION_COMMANDS


def test_a_connection_with_nowhere_to_count_is_always_reset() -> None:
    """A layout the counting does not know (another redis-py, a cache proxy): no skip."""
    odd = types.SimpleNamespace(_parser=types.SimpleNamespace())
    assert watch(odd) is None
    assert not untouched(odd)
    slotted = types.SimpleNamespace(_parser=object())
    assert watch(slotted) is None
    assert not untouched(slotted)


def test_counting_connections_of_both_flavours() -> None:
    sync_conn = redis.Connection(host="127.0.0.1", port=1)  # never connected
    traffic = watch(sync_conn)
    assert traffic is not None
    assert untouched(sync_conn)
    sync_conn.pack_command("GET", "k")
    assert (traffic.pending, traffic.touched) == (1, False)
    sync_conn.pack_commands([("SET", "k", "v"), ("SELECT", 1)])
    assert (traffic.pending, traffic.touched) == (3, True)
    assert not untouched(sync_conn)

    async_conn = redis.asyncio.Connection(host="127.0.0.1", port=1)
    traffic = watch(async_conn)
    assert traffic is not None
    assert untouched(async_conn)
    async_conn.pack_commands([("GET", "k"), ("PING",)])
    assert (traffic.pending, traffic.touched) == (2, False)
    traffic.settle()
    assert untouched(async_conn)
