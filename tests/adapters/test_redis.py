"""The Redis adapter against real servers (issue 7; reliability.md STATE-8, CAN-4, section 7).

Each scenario runs on ``AsyncPool`` (redis.asyncio) and ``Pool`` (redis), mostly with
``max_size=1`` so that the next borrower gets the very same server connection (checked with
``CLIENT ID``). After each scenario the invariants of design.md section 7 are checked,
including the server-side connection count for the pool's client name (``CLIENT LIST``).
The blocking ``Pool`` is driven from the same coroutine-shaped scenarios: its calls simply
block. Tests that restart, pause or reconfigure a server use a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import pytest
import redis
import redis.asyncio

import tidepool
from redis_helpers import (
    PrivateRedis,
    admin,
    client_ids,
    kill_clients,
    redis_url,
    require_redis,
    unique,
    wait_clients,
)
from tidepool._config import Options
from tidepool.adapters import resolve
from tidepool.adapters.redis import AsyncRedisManager, RedisManager

FLAVORS = ("async", "sync")
PATIENCE = 20.0  # only turns a hang into a failure on a loaded machine
DB = 2  # the database the pools are configured for


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    require_redis()
    name: str = request.param
    return name


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Unique key names; deleted from every database used after the test."""
    made: list[str] = []
    yield made
    if made:
        with admin() as conn:
            for db in (0, DB, 3, 5, 7):
                conn.execute_command("SELECT", db)
                conn.delete(*made)


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Lent:
    """A borrowed client, driven alike for both flavours."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    async def run(self, *command: Any) -> Any:
        return await maybe_await(self.raw.execute_command(*command))

    async def send(self, *command: Any) -> None:
        """Send without reading the reply (the borrower walks away mid-conversation)."""
        await maybe_await(self.raw.connection.send_command(*command))

    async def read(self, **kwargs: Any) -> Any:
        return await maybe_await(self.raw.connection.read_response(**kwargs))

    async def client_id(self) -> int:
        return int(await self.run("CLIENT", "ID"))

    async def info(self) -> dict[str, str]:
        """This connection's ``CLIENT INFO`` fields."""
        text = await self.run("CLIENT", "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(part.split("=", 1) for part in text.split() if "=" in part)


class RPool:
    """One pool of one flavour with a unique name (its client name), closed on exit, with the
    design.md section 7 invariant check."""

    def __init__(
        self, flavor: str, url: Any = None, *, port: int | None = None, **options: Any
    ) -> None:
        self.is_async = flavor == "async"
        self.name = options.setdefault("name", unique("tp-redis"))
        self.port = port if port is not None else 6379
        options.setdefault("acquire_timeout", PATIENCE)
        options.setdefault("max_size", 1)
        target = url if url is not None else redis_url(DB)
        self.pool: Any = (tidepool.AsyncPool if self.is_async else tidepool.Pool)(target, **options)

    async def __aenter__(self) -> RPool:
        try:
            await maybe_await(self.pool.open())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc_type is None:  # nothing may outlive the pool on the server
            left = await asyncio.to_thread(wait_clients, self.name, 0, PATIENCE, self.port)
            assert left == 0, f"{left} connection(s) of {self.name} outlived the pool"

    async def close(self) -> None:
        if self.is_async:
            await self.pool.aclose()
        else:
            self.pool.close()

    async def execute(self, *command: Any) -> Any:
        return await maybe_await(self.pool.execute(*command))

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[Lent]:
        if self.is_async:
            async with self.pool.acquire() as raw:
                yield Lent(raw)
        else:
            with self.pool.acquire() as raw:
                yield Lent(raw)

    async def check_invariants(self) -> None:
        s = self.pool.stats()
        assert s.size <= s.max_size, s
        assert s.idle + s.in_use + s.connecting == s.size, s
        assert s.waiting == 0, s
        # Closes may still be in flight (on the event loop for AsyncPool: keep it running).
        count = await asyncio.to_thread(wait_clients, self.name, s.size, PATIENCE, self.port)
        assert count == self.pool.stats().size, (count, self.pool.stats())


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------- executor


def test_execute_set_get(flavor: str, keys: list[str]) -> None:
    key = unique("tp-key")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor, max_size=2) as p:
            assert await p.execute("SET", key, "v1") is True
            assert text(await p.execute("GET", key)) == "v1"
            assert await p.execute("APPEND", key, "2") == 3
            # SQL-only executor methods are not there: the pool says so clearly.
            with pytest.raises(TypeError, match="fetch_all"):
                await maybe_await(p.pool.fetch_all("GET", key))
            async with p.borrow() as a:
                assert text(await a.run("GET", key)) == "v12"
                info = await a.info()
                assert info["name"] == p.name
                assert info["db"] == str(DB)
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- state (STATE-8)


def test_watch_does_not_leak(flavor: str, keys: list[str]) -> None:
    key = unique("tp-watch")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            async with p.borrow() as a:
                ident = await a.client_id()
                assert await a.run("WATCH", key) is True
            with admin() as other:  # would abort a transaction of a connection still watching
                other.execute_command("SELECT", DB)
                other.set(key, "theirs")
            async with p.borrow() as b:
                assert await b.client_id() == ident
                await b.run("MULTI")
                await b.run("SET", key, "mine")
                assert await b.run("EXEC") is not None  # not aborted
                assert text(await b.run("GET", key)) == "mine"
            await p.check_invariants()

    asyncio.run(main())


def test_multi_and_select_do_not_leak(flavor: str, keys: list[str]) -> None:
    key = unique("tp-multi")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            await p.execute("SET", key, "in-db-2")
            async with p.borrow() as a:
                ident = await a.client_id()
                await a.run("SELECT", 5)
                await a.run("MULTI")
                await a.run("SET", key, "queued")  # QUEUED
            async with p.borrow() as b:
                assert await b.client_id() == ident
                info = await b.info()
                assert info["multi"] == "-1", info
                assert info["db"] == str(DB), info
                assert text(await b.run("GET", key)) == "in-db-2"
            with admin() as conn:
                conn.execute_command("SELECT", 5)
                assert conn.get(key) is None  # the queued SET never ran
            await p.check_invariants()

    asyncio.run(main())


@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribe_does_not_leak(flavor: str, protocol: int, keys: list[str]) -> None:
    key, channel = unique("tp-sub-key"), unique("tp-chan")
    keys.append(key)

    async def main() -> None:
        url = redis_url(DB, protocol=str(protocol))
        async with RPool(flavor, url) as p:
            await p.execute("SET", key, "v")
            async with p.borrow() as a:
                ident = await a.client_id()
                await a.send("SUBSCRIBE", channel)
                confirm = await a.read(push_request=True) if protocol == 3 else await a.read()
                assert text(confirm[0]) == "subscribe"
                with admin() as other:
                    assert other.publish(channel, "for-a") == 1  # left unread in the stream
                    assert other.pubsub_numsub(channel) == [(channel, 1)]
            async with p.borrow() as b:
                assert await b.client_id() == ident
                assert text(await b.run("GET", key)) == "v"
                info = await b.info()
                assert (info["sub"], info["resp"], info["db"]) == ("0", str(protocol), str(DB))
            with admin() as other:
                assert other.pubsub_numsub(channel) == [(channel, 0)]
            await p.check_invariants()

    asyncio.run(main())


def test_tracking_and_reply_mode_do_not_leak(flavor: str, keys: list[str]) -> None:
    key = unique("tp-track")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor, redis_url(DB, protocol="3")) as p:
            await p.execute("SET", key, "v")
            async with p.borrow() as a:
                ident = await a.client_id()
                await a.run("CLIENT", "TRACKING", "ON")
                assert text(await a.run("GET", key)) == "v"  # now tracked
                await a.send("CLIENT", "REPLY", "OFF")  # no reply; later commands get none
                await a.send("SET", key, "silent")
            async with p.borrow() as b:
                assert await b.client_id() == ident
                info = await b.info()
                assert "t" not in info["flags"], info  # tracking off
                assert text(await b.run("GET", key)) == "silent"
                assert await b.run("CLIENT", "TRACKING", "OFF")
            async with p.borrow() as c:
                await c.send("CLIENT", "REPLY", "SKIP")  # swallows the next reply: RESET's
            async with p.borrow() as d:
                assert await d.client_id() == ident
                assert text(await d.run("ECHO", "hello")) == "hello"
            await p.check_invariants()

    asyncio.run(main())


def test_login_db_and_protocol_restored_after_reset(flavor: str, keys: list[str]) -> None:
    """RESET logs out, selects db 0 and switches to RESP2: all three come back as
    configured (ACL user with a password, db 3, RESP3)."""
    user, password = unique("tp_user"), unique("pw")
    key = unique("tp-login")
    keys.append(key)
    with admin() as conn:
        conn.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:

        async def main() -> None:
            url = redis_url(3, auth=f"{user}:{password}@", protocol="3")
            async with RPool(flavor, url) as p:
                await p.execute("SET", key, "db3")
                async with p.borrow() as a:
                    ident = await a.client_id()
                    assert text(await a.run("ACL", "WHOAMI")) == user
                    await a.run("AUTH", "default", "anything")  # default user: nopass
                    await a.run("SELECT", 7)
                    await a.run("HELLO", 2)
                    await a.run("CLIENT", "SETNAME", "someone-else")
                async with p.borrow() as b:
                    assert await b.client_id() == ident
                    assert text(await b.run("ACL", "WHOAMI")) == user
                    info = await b.info()
                    assert (info["db"], info["resp"], info["name"]) == ("3", "3", p.name)
                    assert text(await b.run("GET", key)) == "db3"
                await p.check_invariants()

        asyncio.run(main())
    finally:
        with admin() as conn:
            conn.execute_command("ACL", "DELUSER", user)


def test_password_callable_per_connection(keys: list[str]) -> None:
    require_redis()
    user, password = unique("tp_user"), unique("pw")
    calls: list[int] = []
    with admin() as conn:
        conn.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")

    async def token() -> str:
        calls.append(1)
        return password

    try:

        async def main() -> None:
            kwargs = {"username": user, "password": token}
            async with RPool("async", redis_url(DB), max_size=2, connect_kwargs=kwargs) as p:
                async with p.borrow() as a, p.borrow() as b:
                    assert text(await a.run("ACL", "WHOAMI")) == user
                    assert text(await b.run("ACL", "WHOAMI")) == user
                async with p.borrow() as c:  # after a reset: still logged in
                    assert text(await c.run("ACL", "WHOAMI")) == user
                assert len(calls) == 2
                await p.check_invariants()

        asyncio.run(main())
    finally:
        with admin() as conn:
            conn.execute_command("ACL", "DELUSER", user)


def test_pipeline_connection_does_not_outlive_the_borrow(flavor: str, keys: list[str]) -> None:
    """redis-py's ``pipeline()`` takes a second connection from the client's private pool;
    it is closed when the pooled connection comes back, so the server count stays == size."""
    key = unique("tp-pipe")
    keys.append(key)

    async def main() -> None:
        async with RPool(flavor) as p:
            async with p.borrow() as a:
                pipe = a.raw.pipeline()
                pipe.set(key, "1").incr(key)
                assert await maybe_await(pipe.execute()) == [True, 2]
            await p.check_invariants()

    asyncio.run(main())


def test_legacy_reset_for_servers_without_reset(flavor: str, keys: list[str]) -> None:
    """The fallback for Redis < 6.2 (forced here): DISCARD / UNWATCH / SELECT restore the
    session; a subscribed connection is closed instead."""
    key, channel = unique("tp-legacy"), unique("tp-chan")
    keys.append(key)

    async def main() -> None:
        manager_class: Any = AsyncRedisManager if flavor == "async" else RedisManager
        name = unique("tp-redis")
        manager = manager_class(redis_url(DB, protocol="2"), client_name=name, use_reset=False)
        async with RPool(flavor, manager, name=name) as p:
            async with p.borrow() as a:
                ident = await a.client_id()
                await a.run("WATCH", key)
                await a.run("SELECT", 5)
                await a.run("MULTI")
            with admin() as other:
                other.execute_command("SELECT", DB)
                other.set(key, "theirs")
            async with p.borrow() as b:
                assert await b.client_id() == ident
                info = await b.info()
                assert (info["multi"], info["db"]) == ("-1", str(DB)), info
                await b.run("MULTI")
                await b.run("SET", key, "mine")
                assert await b.run("EXEC") is not None
                await b.run("SUBSCRIBE", channel)
            async with p.borrow() as c:
                assert await c.client_id() != ident  # the subscribed one was closed
                assert text(await c.run("GET", key)) == "mine"
            with admin() as other:
                assert other.pubsub_numsub(channel) == [(channel, 0)]
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- cancel (CAN-4)


def test_cancel_mid_command_next_borrower_reads_its_own_reply(keys: list[str]) -> None:
    require_redis()
    empty, mine = unique("tp-empty"), unique("tp-mine")
    keys.extend([empty, mine])

    async def main() -> None:
        async with RPool("async") as p:
            async with p.borrow() as a:
                first = await a.client_id()

            async def blocked() -> None:
                async with p.borrow() as a:
                    await a.run("BLPOP", empty, 2)

            for _ in range(3):
                task = asyncio.create_task(blocked())
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await p.execute("SET", mine, "own")
                assert text(await p.execute("GET", mine)) == "own"
                await p.execute("RPUSH", empty, "x")  # a BLPOP still waiting would take it
                assert await p.execute("LLEN", empty) == 1
                await p.execute("DEL", empty)
            async with p.borrow() as b:
                assert await b.client_id() != first  # the cancelled connection was closed
            await p.check_invariants()

    asyncio.run(main())


def test_sync_read_timeout_mid_command_next_borrower_reads_its_own_reply(
    keys: list[str],
) -> None:
    require_redis()
    empty, mine = unique("tp-empty"), unique("tp-mine")
    keys.extend([empty, mine])

    async def main() -> None:
        async with RPool("sync", redis_url(DB, socket_timeout="0.05")) as p:
            with pytest.raises(redis.TimeoutError):
                await p.execute("BLPOP", empty, 1)
            await p.execute("SET", mine, "own")
            assert text(await p.execute("GET", mine)) == "own"
            await p.execute("RPUSH", empty, "x")
            assert await p.execute("LLEN", empty) == 1
            assert p.pool.stats().closed >= 1
            await p.check_invariants()

    asyncio.run(main())


# ---------------------------------------------------------------------- faults


def test_server_kills_connections(flavor: str) -> None:
    async def main() -> None:
        async with RPool(flavor, max_size=3, min_size=3, check_idle_after=0.05) as p:
            await asyncio.to_thread(wait_clients, p.name, 3)
            killed = set(await asyncio.to_thread(client_ids, p.name))
            assert await asyncio.to_thread(kill_clients, p.name) == 3
            await asyncio.sleep(0.2)
            for _ in range(6):
                assert await p.execute("PING") is True
            assert p.pool.stats().check_failures >= 1
            await p.check_invariants()
            assert not killed & set(await asyncio.to_thread(client_ids, p.name))

    asyncio.run(main())


def test_stalled_server_deadlines_met(flavor: str) -> None:
    with PrivateRedis() as server:

        async def main() -> None:
            async with RPool(
                flavor,
                server.url(),
                port=server.port,
                max_size=2,
                check="always",
                connect_timeout=0.5,
                acquire_timeout=1.0,
            ) as p:
                assert await p.execute("PING") is True
                with admin(server.port) as conn:
                    conn.execute_command("CLIENT", "PAUSE", 2500, "ALL")
                started = time.monotonic()
                with pytest.raises(tidepool.PoolTimeout):
                    await p.execute("PING")
                elapsed = time.monotonic() - started
                assert 0.9 <= elapsed < 3.0, elapsed
                await asyncio.sleep(2.0)  # the pause ends
                assert await p.execute("PING") is True
                await p.check_invariants()

        asyncio.run(main())


def test_too_many_connections_pool_keeps_working(flavor: str) -> None:
    # maxclients 3: the held admin connection takes one, the pool can get two of its four.
    with PrivateRedis("--maxclients", "3") as server, admin(server.port) as watcher:
        watcher.ping()

        async def main() -> None:
            async with RPool(flavor, server.url(), port=server.port, max_size=4) as p:

                async def one(i: int) -> Any:
                    return await p.execute("INCR", "tp-counter")

                if p.is_async:
                    results = await asyncio.gather(*(one(i) for i in range(40)))
                else:
                    results = await asyncio.gather(
                        *(
                            asyncio.to_thread(p.pool.execute, "INCR", "tp-counter")
                            for _ in range(40)
                        )
                    )
                assert sorted(results) == list(range(1, 41))
                deadline = time.monotonic() + PATIENCE  # a refused connect may be in flight
                while p.pool.stats().connecting and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                s = p.pool.stats()
                assert s.size <= 2, s
                assert s.connect_errors >= 1, s  # "max number of clients reached", retried
                names = [c for c in watcher.client_list() if c.get("name") == p.name]
                assert len(names) == s.size
                assert s.idle + s.in_use + s.connecting == s.size, s
                assert s.waiting == 0, s

        asyncio.run(main())


def test_server_idle_timeout(flavor: str) -> None:
    with PrivateRedis("--timeout", "1") as server:

        async def main() -> None:
            async with RPool(
                flavor, server.url(), port=server.port, check="idle", check_idle_after=0.2
            ) as p:
                assert await p.execute("PING") is True
                await asyncio.to_thread(wait_clients, p.name, 1, PATIENCE, server.port)
                # The server closes connections idle for more than 1 s.
                assert await asyncio.to_thread(wait_clients, p.name, 0, 10.0, server.port) == 0
                assert await p.execute("SET", "k", "v") is True  # no error seen by the caller
                assert p.pool.stats().check_failures >= 1
                await p.check_invariants()

        asyncio.run(main())


def test_private_restart_costs_at_most_one_request(flavor: str) -> None:
    server = PrivateRedis().start()
    try:

        async def main() -> None:
            async with RPool(
                flavor, server.url(), port=server.port, max_size=4, min_size=4, check="never"
            ) as p:
                await asyncio.to_thread(wait_clients, p.name, 4, PATIENCE, server.port)
                server.stop()
                server.start()
                failures = 0
                for _ in range(12):
                    try:
                        assert await p.execute("PING") is True
                    except (redis.ConnectionError, redis.TimeoutError):
                        failures += 1
                assert failures <= 1, failures
                await p.check_invariants()

        asyncio.run(main())
    finally:
        server.__exit__()


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("redis://u:s3cretPW@127.0.0.1:6379/abc", "invalid Redis database index 'abc'"),
        ("redis://u:s3cretPW@127.0.0.1:6379?db=abc", "invalid Redis database index 'abc'"),
        ("redis://u:s3cretPW@127.0.0.1:6379/0?sockt_timeout=1", "did you mean 'socket_timeout'"),
        ("redis://u:s3cretPW@127.0.0.1:abc/0", "invalid port 'abc'"),
        ("redis://u:s3cretPW@127.0.0.1:99999/0", "out of range"),
        ("redis://u:s3cretPW@127.0.0.1/0?protocol=4", "invalid protocol '4'"),
        ("redis://u:s3cretPW@127.0.0.1/0?socket_timeout=-1", "invalid socket_timeout"),
        ("redis://u:s3cretPW@127.0.0.1/0?health_check_interval=5", "the pool's job"),
        ("redis://u:s3cretPW@127.0.0.1/0?ssl_cert_reqs=none", "rediss://"),
        ("rediss://u:s3cretPW@127.0.0.1/0?ssl_cert_reqs=bogus", "invalid ssl_cert_reqs"),
        ("redis://u:s3cretPW@a,b/0", "one host"),
        ("unix://u:s3cretPW@", "socket path"),
    ],
)
@pytest.mark.parametrize("pool_class", [tidepool.AsyncPool, tidepool.Pool])
def test_bad_urls(url: str, pattern: str, pool_class: Any) -> None:
    with pytest.raises(tidepool.ConfigError, match=pattern) as info:
        pool_class(url)
    assert "s3cretPW" not in str(info.value)
    assert "s3cretPW" not in repr(info.value)


def test_good_urls() -> None:
    manager, name = resolve(
        "rediss://app:pw@cache.example:6380/4?ssl_cert_reqs=none&ssl_check_hostname=false"
        "&protocol=2&socket_timeout=1.5&client_name=svc",
        "async",
        Options(),
    )
    assert name == "rediss://app@cache.example:6380/4"
    assert isinstance(manager, AsyncRedisManager)
    kwargs = manager.target.kwargs
    assert kwargs["ssl"] is True
    assert kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["ssl_check_hostname"] is False
    assert (kwargs["db"], kwargs["protocol"], kwargs["socket_timeout"]) == (4, 2, 1.5)
    assert "pw" not in repr(manager.target)
    unix, unix_name = resolve("unix:///run/redis.sock?db=3", "sync", Options(name="orders"))
    assert isinstance(unix, RedisManager)
    assert unix.target.kwargs["unix_socket_path"] == "/run/redis.sock"
    assert unix.target.db == 3
    assert unix_name == "unix:///run/redis.sock?db=3"
    assert unix._base["client_name"] == "orders"  # the pool's name


def test_wrong_password_fails_fast_without_leaking_it() -> None:
    secret = "Wr0ngPassw0rd-canary"
    with PrivateRedis("--requirepass", "right-password") as server:

        async def main(flavor: str) -> None:
            url = server.url(auth=f":{secret}@")
            pool: Any = (tidepool.AsyncPool if flavor == "async" else tidepool.Pool)(
                url, acquire_timeout=10.0
            )
            started = time.monotonic()
            try:
                with pytest.raises(tidepool.ConnectError) as info:
                    await maybe_await(pool.open())
            finally:
                await maybe_await(pool.aclose() if flavor == "async" else pool.close())
            assert time.monotonic() - started < 5.0
            error: BaseException | None = info.value
            assert isinstance(error.__cause__, redis.AuthenticationError | redis.ResponseError)
            # Every frame below this test's own (which holds the URL), with their locals.
            assert info.value.__traceback__ is not None
            below = info.value.__traceback__.tb_next
            shown = "".join(
                traceback.TracebackException(
                    type(info.value), info.value, below, capture_locals=True
                ).format()
            )
            assert "ConnectError" in shown
            assert secret not in shown
            while error is not None:
                assert secret not in str(error)
                assert secret not in repr(error)
                error = error.__cause__ or error.__context__

        for flavor in FLAVORS:
            asyncio.run(main(flavor))


def test_client_name_and_ids_visible(flavor: str) -> None:
    async def main() -> None:
        async with RPool(flavor, max_size=2, min_size=2) as p:
            await asyncio.to_thread(wait_clients, p.name, 2)
            assert len(await asyncio.to_thread(client_ids, p.name)) == 2
            await p.check_invariants()

    asyncio.run(main())


def test_async_client_types(flavor: str) -> None:
    async def main() -> None:
        async with RPool(flavor) as p, p.borrow() as a:
            expected = redis.asyncio.Redis if flavor == "async" else redis.Redis
            assert isinstance(a.raw, expected)

    asyncio.run(main())
