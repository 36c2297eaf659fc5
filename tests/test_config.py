"""Option and URL validation: bad input fails at construction, before any I/O, with a message
naming the option, the value and what is allowed (reliability.md section 5, B1-B18, B26-B28)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any

import pytest

import tidepool
from fakes import AsyncFakeManager, FakeManager
from tidepool._url import parse_url

PoolClass = type[tidepool.AsyncPool[Any]] | type[tidepool.Pool[Any]]
POOL_CLASSES = [tidepool.AsyncPool, tidepool.Pool]
PASSWORD = "pw-Secr3t-9911"


@pytest.fixture(params=POOL_CLASSES, ids=["AsyncPool", "Pool"])
def pool_cls(request: pytest.FixtureRequest) -> PoolClass:
    cls: PoolClass = request.param
    return cls


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A file URL whose database must never be created by construction alone."""
    return "sqlite:///" + str(tmp_path / "never-opened.db")


def assert_no_io(tmp_path: Path) -> None:
    assert list(tmp_path.iterdir()) == [], "construction must not touch the database"


def make_error(pool_cls: PoolClass, url: str, **options: Any) -> BaseException:
    with pytest.raises((tidepool.ConfigError, TypeError)) as info:
        pool_cls(url, **options)
    return info.value


# ---------------------------------------------------------------------- sizes (B1-B5)


def test_b1_max_size_zero(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, max_size=0)
    message = str(info.value)
    assert "max_size" in message
    assert ">= 1" in message
    assert "got 0" in message
    assert_no_io(tmp_path)


def test_b2_min_size_negative(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, min_size=-1)
    message = str(info.value)
    assert "min_size" in message
    assert ">= 0" in message
    assert "-1" in message
    assert_no_io(tmp_path)


def test_b3_min_size_above_max_size(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, min_size=5, max_size=2)
    message = str(info.value)
    assert "min_size (5)" in message
    assert "max_size (2)" in message
    assert "<=" in message
    assert_no_io(tmp_path)


def test_b4_min_size_as_string(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, min_size="4")  # type: ignore[arg-type]
    assert not isinstance(info.value, ValueError)
    message = str(info.value)
    assert "min_size" in message
    assert "int" in message
    assert "str" in message
    assert "'4'" in message
    assert_no_io(tmp_path)


@pytest.mark.parametrize(
    ("option", "value", "fragments"),
    [
        ("min_size", 2.5, ("min_size", "int", "float", "2.5")),
        ("max_size", True, ("max_size", "int", "bool", "True")),
        ("max_size", 4.0, ("max_size", "int", "float", "4.0")),
    ],
)
def test_b5_sizes_must_be_real_ints(
    pool_cls: PoolClass,
    db_url: str,
    tmp_path: Path,
    option: str,
    value: object,
    fragments: tuple[str, ...],
) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, **{option: value})
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert_no_io(tmp_path)


# ---------------------------------------------------------------------- timeouts (B7-B11)


def test_b7_acquire_timeout_zero_is_accepted(pool_cls: PoolClass, db_url: str) -> None:
    pool = pool_cls(db_url, acquire_timeout=0)
    assert pool.options.acquire_timeout == 0.0


def test_b7_zero_timeout_means_do_not_wait() -> None:
    with tidepool.Pool("sqlite://:memory:", max_size=1) as pool:
        with pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
            with pytest.raises(tidepool.PoolTimeout) as info, pool.acquire(timeout=0):
                pass
            assert isinstance(info.value, TimeoutError)
            assert info.value.phase == "wait"
        # Free again: a zero timeout lends the idle connection at once.
        with pool.acquire(timeout=0) as conn:
            assert conn.execute("SELECT 2").fetchone()[0] == 2


TIMEOUT_OPTIONS = ["acquire_timeout", "connect_timeout", "idle_timeout", "max_lifetime"]
TIMEOUT_OPTIONS_ALL = [*TIMEOUT_OPTIONS, "leak_timeout", "slow_acquire", "check_idle_after"]


@pytest.mark.parametrize("option", [*TIMEOUT_OPTIONS, "leak_timeout", "slow_acquire"])
@pytest.mark.parametrize("value", [-1, -0.5])
def test_b8_negative_timeouts(
    pool_cls: PoolClass, db_url: str, tmp_path: Path, option: str, value: float
) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, **{option: value})
    message = str(info.value)
    assert option in message
    assert repr(value) in message
    assert ">" in message  # what is allowed: ">= 0" or "> 0"
    assert_no_io(tmp_path)


@pytest.mark.parametrize("option", TIMEOUT_OPTIONS_ALL)
def test_b9_non_numeric_timeouts(
    pool_cls: PoolClass, db_url: str, tmp_path: Path, option: str
) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, **{option: "abc"})
    message = str(info.value)
    assert option in message
    assert "number" in message
    assert "'abc'" in message
    assert_no_io(tmp_path)


@pytest.mark.parametrize("option", ["acquire_timeout", "idle_timeout", "connect_timeout"])
def test_b9_bool_is_not_a_timeout(pool_cls: PoolClass, db_url: str, option: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, **{option: True})
    assert option in str(info.value)
    assert "bool" in str(info.value)


@pytest.mark.parametrize("option", TIMEOUT_OPTIONS_ALL)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_b10_nan_and_inf_timeouts(
    pool_cls: PoolClass, db_url: str, tmp_path: Path, option: str, value: float
) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, **{option: value})
    message = str(info.value)
    assert option in message
    assert "finite" in message
    assert repr(value) in message
    assert_no_io(tmp_path)


@pytest.mark.parametrize("value", [0, 0.0])
def test_b11_max_lifetime_zero(pool_cls: PoolClass, db_url: str, value: float) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, max_lifetime=value)
    message = str(info.value)
    assert "max_lifetime" in message
    assert "> 0" in message
    assert "None" in message


@pytest.mark.parametrize(("idle", "lifetime"), [(60.0, 60.0), (120.0, 60.0)])
def test_b11_idle_timeout_not_below_max_lifetime_warns(
    pool_cls: PoolClass, db_url: str, idle: float, lifetime: float
) -> None:
    with pytest.warns(UserWarning, match="idle_timeout") as record:
        pool = pool_cls(db_url, idle_timeout=idle, max_lifetime=lifetime)
    assert any("max_lifetime" in str(w.message) for w in record)
    assert pool.options.idle_timeout == idle
    assert pool.options.max_lifetime == lifetime


def test_b11_no_warning_when_idle_timeout_is_shorter(pool_cls: PoolClass, db_url: str) -> None:
    # filterwarnings=error turns any warning into a failure here.
    pool = pool_cls(db_url, idle_timeout=10.0, max_lifetime=60.0)
    assert pool.options.idle_timeout == 10.0


def test_none_timeouts_accepted_where_documented(pool_cls: PoolClass, db_url: str) -> None:
    pool = pool_cls(
        db_url, acquire_timeout=None, idle_timeout=None, max_lifetime=None, slow_acquire=None
    )
    assert pool.options.slow_acquire is None
    assert pool.options.acquire_timeout is None
    assert pool.options.idle_timeout is None
    assert pool.options.max_lifetime is None


def test_connect_timeout_cannot_be_none(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, connect_timeout=None)  # type: ignore[arg-type]
    assert "connect_timeout" in str(info.value)


# ---------------------------------------------------------------------- other options


def test_max_waiting_zero_is_refused_with_the_alternatives(
    pool_cls: PoolClass, db_url: str
) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, max_waiting=0)
    message = str(info.value)
    assert "max_waiting" in message
    assert "None for no limit" in message
    assert "acquire_timeout=0" in message


def test_b12_max_waiting_negative(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, max_waiting=-1)
    message = str(info.value)
    assert "max_waiting" in message
    assert ">= 0" in message
    assert "-1" in message
    assert_no_io(tmp_path)


def test_b13_max_connecting_zero(pool_cls: PoolClass, db_url: str, tmp_path: Path) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, max_connecting=0)
    message = str(info.value)
    assert "max_connecting" in message
    assert ">= 1" in message
    assert "0" in message
    assert_no_io(tmp_path)


def test_check_policy_unknown(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(db_url, check="sometimes")  # type: ignore[arg-type]
    message = str(info.value)
    assert "check" in message
    assert "'sometimes'" in message
    for allowed in ("always", "never", "idle"):
        assert allowed in message


def test_reset_must_be_bool(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, reset="yes")  # type: ignore[arg-type]
    message = str(info.value)
    assert "reset" in message
    assert "bool" in message
    assert "'yes'" in message


def test_on_connect_must_be_callable(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, on_connect=5)  # type: ignore[arg-type]
    message = str(info.value)
    assert "on_connect" in message
    assert "callable" in message
    assert "5" in message


def test_unknown_option_suggests_closest(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, max_sise=3)  # type: ignore[call-arg]
    assert not isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'max_sise'" in message
    assert "did you mean 'max_size'" in message


def test_unknown_option_without_near_match(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, zzzzzz=1)  # type: ignore[call-arg]
    message = str(info.value)
    assert "'zzzzzz'" in message
    assert "did you mean" not in message
    assert "max_size" in message  # the list of known options


def test_connect_kwargs_with_a_manager_target() -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        tidepool.AsyncPool(AsyncFakeManager(), connect_kwargs={"timeout": 3})
    assert "connect_kwargs" in str(info.value)
    manager = FakeManager()
    with pytest.raises(tidepool.ConfigError) as info:
        tidepool.Pool(manager, connect_kwargs={"timeout": 3})
    assert "connect_kwargs" in str(info.value)
    assert manager.calls["connect"] == 0


def test_connect_kwargs_must_be_a_mapping(pool_cls: PoolClass, db_url: str) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, connect_kwargs=[("timeout", 3)])  # type: ignore[arg-type]
    assert "connect_kwargs" in str(info.value)


@pytest.mark.parametrize("target", [42, object(), b"sqlite://:memory:", None])
def test_target_neither_url_nor_manager(pool_cls: PoolClass, target: object) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(target)  # type: ignore[call-overload]
    message = str(info.value)
    assert "URL" in message
    assert "manager" in message


def test_manager_flavour_mismatch() -> None:
    with pytest.raises(TypeError, match="async"):
        tidepool.AsyncPool(FakeManager())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="AsyncPool"):
        tidepool.Pool(AsyncFakeManager())  # type: ignore[call-overload]


def test_manager_target_construction_does_no_io() -> None:
    manager = FakeManager()
    pool = tidepool.Pool(manager, max_size=3, min_size=2)
    assert manager.calls["connect"] == 0
    assert pool.stats().size == 0


# ---------------------------------------------------------------------- URLs (B14-B18)

BAD_URLS = {
    "B14-mssql": f"mssql://u:{PASSWORD}@127.0.0.1/db",
    "B14-http": f"http://u:{PASSWORD}@example.com/db",
    "B15-port-abc": f"postgresql://u:{PASSWORD}@127.0.0.1:abc/db",
    "B16-port-range": f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db",
    "B17-unescaped-at": f"postgresql://u:{PASSWORD}@x@127.0.0.1/db",
    "B18-ipv6": f"postgresql://u:{PASSWORD}@[::1/db",
}


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_bad_urls_raise_redacted_config_error(pool_cls: PoolClass, case: str) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(BAD_URLS[case])
    message = str(info.value)
    assert PASSWORD not in message
    assert PASSWORD not in repr(info.value)
    assert "u:***@" in message
    scheme = BAD_URLS[case].split("://")[0]
    assert f"{scheme}://u:***@" in message


@pytest.mark.parametrize("url", [BAD_URLS["B14-mssql"], BAD_URLS["B14-http"]])
def test_b14_unsupported_scheme(pool_cls: PoolClass, url: str) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls(url)
    message = str(info.value)
    scheme = url.split("://")[0]
    assert f"'{scheme}'" in message
    assert "sqlite" in message  # what is supported
    assert PASSWORD not in message


def test_b15_non_numeric_port_message() -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        parse_url(BAD_URLS["B15-port-abc"])
    message = str(info.value)
    assert "port 'abc'" in message
    assert "1-65535" in message
    assert "postgresql://u:***@127.0.0.1:abc/db" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("port", ["99999", "65536", "0"])
def test_b16_port_out_of_range_message(port: str) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        parse_url(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    message = str(info.value)
    assert port in message
    assert "1-65535" in message
    assert PASSWORD not in message


def test_b16_negative_port_is_rejected() -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        parse_url(f"postgresql://u:{PASSWORD}@127.0.0.1:-5/db")
    assert "-5" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_b17_unescaped_at_in_password_message() -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        parse_url(BAD_URLS["B17-unescaped-at"])
    message = str(info.value)
    assert "unescaped '@'" in message
    assert "%40" in message
    assert PASSWORD not in message
    assert "x@127" not in message  # no fragment of the user info either


def test_b18_malformed_ipv6_message() -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        parse_url(BAD_URLS["B18-ipv6"])
    message = str(info.value)
    assert "IPv6" in message
    assert "']'" in message
    assert "postgresql://u:***@[::1/db" in message
    assert PASSWORD not in message


def test_valid_url_parses() -> None:
    parsed = parse_url(f"postgresql+asyncpg://app:{PASSWORD}@[::1]:5433,db2/app?sslmode=require")
    assert parsed.scheme == "postgresql"
    assert parsed.driver == "asyncpg"
    assert parsed.username == "app"
    assert parsed.password is not None
    assert parsed.password.value == PASSWORD
    assert parsed.hosts == (("::1", 5433), ("db2", None))
    assert parsed.path == "app"
    assert parsed.query == {"sslmode": "require"}
    assert PASSWORD not in parsed.redacted


def test_escaped_at_in_password_is_fine() -> None:
    parsed = parse_url("postgresql://u:p%40ss@127.0.0.1:5432/db")
    assert parsed.password is not None
    assert parsed.password.value == "p@ss"
    assert parsed.hosts == (("127.0.0.1", 5432),)


def test_sqlite_url_without_path(pool_cls: PoolClass) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls("sqlite://")
    assert "sqlite" in str(info.value)


def test_scheme_less_target(pool_cls: PoolClass) -> None:
    with pytest.raises(tidepool.ConfigError) as info:
        pool_cls("app.db")
    assert "scheme" in str(info.value)


# ---------------------------------------------------------------------- B26, B28


def test_b26_shared_memory_database_accepts_max_size_above_one(pool_cls: PoolClass) -> None:
    pool = pool_cls("sqlite://:memory:", max_size=4, min_size=2)
    assert pool.options.max_size == 4
    assert pool.options.min_size == 2


def test_b28_async_pool_constructed_outside_a_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    pool = tidepool.AsyncPool("sqlite://:memory:", max_size=2)
    assert pool.stats().size == 0

    async def use() -> int:
        async with pool:
            value: int = await pool.fetch_value("SELECT 41 + 1")
            return value

    assert asyncio.run(use()) == 42


def _run_in_other_loop(coro_fn: Any) -> BaseException | None:
    """Run ``coro_fn()`` in a fresh event loop on another thread; return what it raised."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        async def main() -> None:
            await coro_fn()

        try:
            asyncio.run(main())
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return outcome[0]


def test_b28_open_from_a_second_loop_raises() -> None:
    pool = tidepool.AsyncPool("sqlite://:memory:", max_size=2, name="loop-bound")

    async def main() -> None:
        async with pool:
            await pool.fetch_value("SELECT 1")
            error = _run_in_other_loop(pool.open)
            assert isinstance(error, RuntimeError)
            message = str(error)
            assert "event loop" in message
            assert "'loop-bound'" in message
            error = _run_in_other_loop(pool.aclose)
            assert isinstance(error, RuntimeError)
            assert "event loop" in str(error)
            # The pool still works in its own loop.
            assert await pool.fetch_value("SELECT 7") == 7

    asyncio.run(main())


def test_b28_acquire_from_a_second_loop_raises() -> None:
    pool = tidepool.AsyncPool("sqlite://:memory:", max_size=2, name="loop-bound")

    async def borrow() -> None:
        async with pool.acquire():
            pass

    async def main() -> None:
        async with pool:
            await pool.fetch_value("SELECT 1")  # an idle connection is now ready
            error = _run_in_other_loop(borrow)
            assert isinstance(error, RuntimeError), f"got {error!r}"
            assert "event loop" in str(error)
            assert "'loop-bound'" in str(error)

    asyncio.run(main())


# ---------------------------------------------------------------------- errors, options


def test_error_hierarchy() -> None:
    assert issubclass(tidepool.ConfigError, ValueError)
    assert issubclass(tidepool.ConfigError, tidepool.PoolError)
    assert issubclass(tidepool.PoolTimeout, TimeoutError)
    assert issubclass(tidepool.PoolTimeout, tidepool.PoolError)
    assert issubclass(tidepool.ConnectError, tidepool.PoolError)
    assert issubclass(tidepool.PoolClosed, tidepool.PoolError)
    assert issubclass(tidepool.TooManyWaiters, tidepool.PoolError)
    error = tidepool.PoolTimeout("no connection", phase="wait")
    assert error.phase == "wait"
    with pytest.raises(TimeoutError):
        raise error
    with pytest.raises(ValueError, match="bad"):
        raise tidepool.ConfigError("bad")


def test_options_are_frozen_and_validated(pool_cls: PoolClass, db_url: str) -> None:
    def hook(conn: object) -> None:
        return None

    pool = pool_cls(
        db_url,
        max_size=7,
        min_size=1,
        acquire_timeout=5,
        idle_timeout=30,
        max_waiting=3,
        check="always",
        reset=False,
        name="orders",
        on_connect=hook,
        connect_kwargs={"cached_statements": 16},
    )
    opts = pool.options
    assert isinstance(opts, tidepool.Options)
    assert opts.max_size == 7
    assert opts.min_size == 1
    assert opts.acquire_timeout == 5.0
    assert isinstance(opts.acquire_timeout, float)
    assert isinstance(opts.idle_timeout, float)
    assert opts.connect_timeout == 10.0
    assert opts.max_lifetime == 1800.0
    assert opts.max_waiting == 3
    assert opts.check == "always"
    assert opts.reset is False
    assert opts.name == "orders"
    assert pool.name == "orders"
    assert opts.on_connect is hook
    assert dict(opts.connect_kwargs) == {"cached_statements": 16}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_size = 100  # type: ignore[misc]
    with pytest.raises(TypeError):
        opts.connect_kwargs["timeout"] = 1  # type: ignore[index]
    assert pool.options.max_size == 7


def test_default_options(pool_cls: PoolClass, db_url: str) -> None:
    opts = pool_cls(db_url).options
    assert (opts.max_size, opts.min_size) == (10, 0)
    assert opts.acquire_timeout == 30.0
    assert opts.idle_timeout == 600.0
    assert opts.check == "idle"
    assert opts.reset is True
    assert opts.max_waiting is None


def test_connect_kwargs_none_means_empty(pool_cls: PoolClass, db_url: str) -> None:
    pool = pool_cls(db_url, connect_kwargs=None)  # type: ignore[arg-type]
    assert dict(pool.options.connect_kwargs) == {}


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan])
def test_acquire_negative_timeout_at_call_time_async(timeout: float) -> None:
    async def main() -> None:
        async with tidepool.AsyncPool("sqlite://:memory:", max_size=1) as pool:
            with pytest.raises(tidepool.ConfigError) as info:
                pool.acquire(timeout=timeout)
            assert "timeout" in str(info.value)
            with pytest.raises(TypeError):
                pool.acquire(timeout="1")  # type: ignore[arg-type]
            assert pool.stats().in_use == 0
            assert await pool.fetch_value("SELECT 1") == 1

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [-1, -0.001, math.inf])
def test_acquire_negative_timeout_at_call_time_sync(timeout: float) -> None:
    with tidepool.Pool("sqlite://:memory:", max_size=1) as pool:
        with pytest.raises(tidepool.ConfigError) as info:
            pool.acquire(timeout=timeout)
        assert "timeout" in str(info.value)
        assert repr(timeout) in str(info.value)
        with pytest.raises(TypeError):
            pool.acquire(timeout="1")  # type: ignore[arg-type]
        assert pool.stats().in_use == 0
        assert pool.fetch_value("SELECT 1") == 1


def test_resize_validates_like_construction() -> None:
    pool = tidepool.Pool("sqlite://:memory:", max_size=2)
    with pytest.raises(tidepool.ConfigError, match="max_size"):
        pool.resize(max_size=0)
    with pytest.raises(tidepool.ConfigError, match="min_size"):
        pool.resize(min_size=3)
    with pytest.raises(TypeError, match="max_size"):
        pool.resize(max_size="3")  # type: ignore[arg-type]
    assert pool.stats().max_size == 2


@pytest.mark.parametrize(
    ("peer_name", "ours"),
    [
        ("timeout", "acquire_timeout"),
        ("pool_timeout", "acquire_timeout"),
        ("max_idle", "idle_timeout"),
        ("max_inactive_connection_lifetime", "idle_timeout"),
        ("pool_recycle", "max_lifetime"),
        ("pool_size", "max_size"),
        ("configure", "on_connect"),
        ("init", "on_connect"),
        ("kwargs", "connect_kwargs"),
        ("num_workers", "max_connecting"),
    ],
)
def test_other_pools_option_names_suggest_ours(
    pool_cls: PoolClass, db_url: str, peer_name: str, ours: str
) -> None:
    with pytest.raises(TypeError) as info:
        pool_cls(db_url, **{peer_name: 1})
    assert f"unknown option {peer_name!r}; did you mean {ours!r}?" in str(info.value)
