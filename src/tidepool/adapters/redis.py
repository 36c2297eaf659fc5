"""Redis through redis-py: ``AsyncPool`` on ``redis.asyncio``, ``Pool`` on ``redis``.

Each pooled connection is a single-connection client (``single_connection_client=True``): the
lent object is a ``redis.asyncio.Redis`` / ``redis.Redis`` bound to one server connection, so
``await conn.get("k")`` and friends work as usual, and ``pool.execute("SET", "k", "v")`` runs
one command on a connection of its own.

On return the session is made as if freshly connected. When the borrower wrote no command that
can change the session (``SELECT``, ``MULTI``, ``WATCH``, ``SUBSCRIBE``, ``CLIENT``, ``HELLO``,
...) and read every reply, there is nothing to undo and nothing is sent: the adapter counts
each connection's commands and replies inside redis-py (see ``_redis_traffic``). Otherwise the
reset takes one round trip: ``RESET`` (Redis >=
6.2: leaves MULTI, WATCH, pub/sub, client tracking, ``CLIENT REPLY OFF``, the selected database
and the login), then ``HELLO <protocol> [AUTH user password] SETNAME <name>`` and ``SELECT <db>``
to restore what ``RESET`` drops, then ``PING <nonce>`` whose echo proves that the next reply
read belongs to the next command. Older servers get ``DISCARD`` / ``UNWATCH`` / ``SELECT``, and a
subscribed connection is closed. A connection whose command was cancelled or timed out
mid-flight is closed, never lent again (redis-py drops the socket then; the pool sees it as
broken), so no borrower can read another's reply (the CVE-2023-28858 class).

redis-py's own command retries are off by default (``retry`` in ``connect_kwargs`` turns them
back on): a command that fails on a dead connection raises, and the pool replaces the
connection; retrying connects is the pool's job.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ConnectionError,
    NoPermissionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from .._config import Options
from .._url import Secret, parse_url
from ..errors import ConfigError, ConnectError
from ._errors import scrubbed
from ._pg import resolve_credentials, resolve_credentials_sync
from ._redis_traffic import settle, untouched, watch
from ._transport import limit_reads

__all__ = ["AsyncRedisManager", "RedisManager", "RedisTarget", "build"]

_COMMON_PARAMS = (
    "db",
    "protocol",
    "client_name",
    "socket_timeout",
    "socket_connect_timeout",
    "decode_responses",
)
_SSL_PARAMS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_CERT_REQS = ("none", "optional", "required")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Server errors during connect that waiting can cure.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "ERR max number of clients")
# Server errors that mean "not authenticated / not allowed": fail fast.
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username")
# RESP2 pub/sub frames that may precede the reply to RESET on a subscribed connection.
_PUBSUB_KINDS = frozenset(
    {
        *("message", "pmessage", "smessage", "subscribe", "psubscribe", "ssubscribe"),
        *("unsubscribe", "punsubscribe", "sunsubscribe", "pong"),
    }
)
_MAX_SKIPPED = 100_000  # frames of a subscribed connection drained before giving up


# ---------------------------------------------------------------------- target


@dataclass(frozen=True)
class RedisTarget:
    """A Redis target parsed from ``redis://``, ``rediss://`` or ``unix://``, validated.

    ``kwargs`` are the redis-py client keyword arguments the URL spells (no password);
    the password is a :class:`~tidepool._url.Secret`.
    """

    kwargs: dict[str, Any]
    password: Secret | None = field(default=None, repr=False)
    display: str = ""

    def __repr__(self) -> str:
        return f"RedisTarget({self.display!r})"

    @property
    def db(self) -> int:
        db: int = self.kwargs.get("db", 0)
        return db

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        """Parse ``redis://[[user]:password@]host[:port][/db][?params]``, ``rediss://...``
        (TLS) or ``unix://[[user]:password@]/path/to.sock[?db=N&...]``.

        Raises:
            ConfigError: unknown scheme or parameter (with a suggestion), several hosts, a
                database index that is not an integer, a bad port, protocol or timeout. The
                password never appears in a message.
        """
        parsed = parse_url(url)
        redacted = parsed.redacted
        scheme = parsed.scheme
        if scheme not in ("redis", "rediss", "unix") or parsed.driver is not None:
            shown = scheme + (f"+{parsed.driver}" if parsed.driver else "")
            raise ConfigError(
                f"unsupported scheme {shown!r} for Redis in {redacted!r} "
                "(expected redis://, rediss:// or unix://)"
            )
        kwargs: dict[str, Any] = {}
        db_text: str | None = None
        if scheme == "unix":
            if parsed.hosts and parsed.hosts[0][0]:
                raise ConfigError(
                    f"a unix:// Redis URL names a socket path, not a host: {redacted!r} "
                    "(expected unix:///path/to/redis.sock?db=N)"
                )
            if not parsed.path:
                raise ConfigError(f"missing socket path in Redis URL {redacted!r}")
            kwargs["unix_socket_path"] = "/" + parsed.path
        else:
            if len(parsed.hosts) > 1:
                raise ConfigError(
                    f"a Redis URL names one host, got {len(parsed.hosts)} in {redacted!r}"
                )
            host, port = parsed.hosts[0] if parsed.hosts else ("", None)
            kwargs["host"] = host or "localhost"
            kwargs["port"] = port if port is not None else 6379
            if parsed.path:
                db_text = parsed.path
            if scheme == "rediss":
                kwargs["ssl"] = True
        allowed = _COMMON_PARAMS + (_SSL_PARAMS if scheme == "rediss" else ())
        for key, value in parsed.query.items():
            if key == "db":
                if db_text is not None:
                    raise ConfigError(
                        f"the database is given twice in Redis URL {redacted!r} "
                        "(in the path and as ?db=); keep one"
                    )
                db_text = value
                continue
            if key not in allowed:
                raise ConfigError(_unknown_param(key, scheme, redacted))
            kwargs[key] = _check_param(key, value, redacted)
        if db_text is not None:
            if not db_text.isdigit():
                raise ConfigError(
                    f"invalid Redis database index {db_text!r} in URL {redacted!r} "
                    "(must be an integer >= 0)"
                )
            kwargs["db"] = int(db_text)
        if parsed.username:
            kwargs["username"] = parsed.username
        password = parsed.password if parsed.password and parsed.password.value else None
        return cls(kwargs=kwargs, password=password, display=_display(scheme, kwargs))


def _unknown_param(key: str, scheme: str, redacted: str) -> str:
    if key == "health_check_interval":
        return (
            f"Redis URL parameter {key!r} in {redacted!r} is not used: checking connections "
            "is the pool's job (pool options check= and check_idle_after=)"
        )
    if key in _SSL_PARAMS:
        return f"{key!r} in {redacted!r} needs a TLS URL: use rediss://"
    known = _COMMON_PARAMS + (_SSL_PARAMS if scheme == "rediss" else ())
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return f"unknown Redis URL parameter {key!r} in {redacted!r}{hint}"


def _check_param(key: str, value: str, redacted: str) -> Any:
    if key == "protocol":
        if value not in ("2", "3"):
            raise ConfigError(f"invalid protocol {value!r} in Redis URL {redacted!r} (2 or 3)")
        return int(value)
    if key in ("socket_timeout", "socket_connect_timeout"):
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(
                f"invalid {key} {value!r} in Redis URL {redacted!r} (seconds, a number > 0)"
            )
        return seconds
    if key in ("decode_responses", "ssl_check_hostname"):
        lowered = value.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ConfigError(f"{key} must be true or false in Redis URL {redacted!r}, got {value!r}")
    if key == "ssl_cert_reqs":
        if value not in _CERT_REQS:
            raise ConfigError(
                f"invalid ssl_cert_reqs {value!r} in Redis URL {redacted!r} "
                f"(expected one of {', '.join(_CERT_REQS)})"
            )
        return value
    if key == "client_name" and (not value or _clean_name(value) != value):
        raise ConfigError(
            f"invalid client_name {value!r} in Redis URL {redacted!r} "
            "(printable characters, no spaces)"
        )
    return value


def _display(scheme: str, kwargs: dict[str, Any]) -> str:
    user = kwargs.get("username")
    who = f"{user}@" if user else ""
    if scheme == "unix":
        db = kwargs.get("db", 0)
        return f"unix://{who}{kwargs['unix_socket_path']}" + (f"?db={db}" if db else "")
    return f"{scheme}://{who}{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def _clean_name(name: str) -> str:
    """``name`` as Redis accepts a client name: printable ASCII, no spaces."""
    return "".join(c if "!" <= c <= "~" else "_" for c in name)


# ---------------------------------------------------------------------- per-connection state


@dataclass(slots=True)
class _Session:
    """What the reset restores on one connection, learnt at connect."""

    modern: bool  # the server has RESET (>= 6.2)
    protocol: int
    db: int
    name: str | None
    login: tuple[str, Secret] | None = field(default=None, repr=False)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _hello_fields(reply: Any) -> dict[str, Any] | None:
    """The fields of a ``HELLO`` reply (a map under RESP3, a flat list under RESP2)."""
    if isinstance(reply, dict):
        return {str(_text(k)): _text(v) for k, v in reply.items()}
    if isinstance(reply, list) and len(reply) % 2 == 0 and reply and _text(reply[0]) == "server":
        return {str(_text(reply[i])): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
    return None


def _version(text: Any) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in str(text).split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _is_pubsub_frame(reply: Any) -> bool:
    return isinstance(reply, list) and bool(reply) and _text(reply[0]) in _PUBSUB_KINDS


class _ResetReader:
    """Checks the replies to the reset pipeline, one at a time, in order.

    Modern servers: optional RESP2 pub/sub frames, then ``RESET`` (absent when the last
    borrower left ``CLIENT REPLY SKIP`` armed: it swallows exactly that reply), then the
    ``HELLO`` map, then ``OK`` for ``SELECT`` when sent, then the nonce. Anything else means
    the stream is not what it should be, and the connection must be closed.
    """

    def __init__(self, session: _Session, nonce: str) -> None:
        self.session = session
        self.nonce = nonce
        self.expect: list[str] = ["reset", "hello"]
        if session.db:
            self.expect.append("select")
        self.expect.append("ping")
        self.skipped = 0

    def feed(self, reply: Any) -> bool:
        """Take one reply; ``True`` when the reset is complete.

        Raises:
            ConnectionError: an unexpected reply (the connection is out of sync).
        """
        step = self.expect[0]
        if step == "reset":
            if _text(reply) == "RESET":
                self.expect.pop(0)
                return False
            if _is_pubsub_frame(reply):
                self.skipped += 1
                if self.skipped > _MAX_SKIPPED:
                    raise ConnectionError("reset: too many pub/sub messages pending")
                return False
            self.expect.pop(0)  # CLIENT REPLY SKIP swallowed RESET's reply
            step = "hello"
        self.expect.pop(0)
        if step == "hello":
            fields = _hello_fields(reply)
            if fields is None or fields.get("proto") != self.session.protocol:
                raise ConnectionError(f"reset: unexpected reply {reply!r:.80} to HELLO")
        elif step == "select":
            if _text(reply) != "OK" and reply is not True:
                raise ConnectionError(f"reset: unexpected reply {reply!r:.80} to SELECT")
        elif _text(reply) != self.nonce:
            raise ConnectionError(f"reset: PING echo {reply!r:.80} is not the nonce sent")
        return not self.expect


def _reset_commands(session: _Session, nonce: str) -> list[tuple[Any, ...]]:
    """The reset pipeline for ``session`` (see the module docstring)."""
    if session.modern:
        hello: list[Any] = ["HELLO", session.protocol]
        if session.login is not None:
            hello += ["AUTH", session.login[0], session.login[1].value]
        if session.name:
            hello += ["SETNAME", session.name]
        commands = [("RESET",), tuple(hello)]
        if session.db:
            commands.append(("SELECT", session.db))
        commands.append(("PING", nonce))
        return commands
    legacy: list[tuple[Any, ...]] = [
        ("CLIENT", "REPLY", "ON"),
        ("DISCARD",),
        ("UNWATCH",),
        ("CLIENT", "TRACKING", "OFF"),
        ("SELECT", session.db),
    ]
    if session.name:
        legacy.append(("CLIENT", "SETNAME", session.name))
    legacy.append(("PING", nonce))
    return legacy


# Replies to the legacy pipeline that may be errors: CLIENT REPLY (Redis < 3.2), DISCARD
# outside MULTI, CLIENT TRACKING (Redis < 6.0). UNWATCH, SELECT and SETNAME must succeed.
_LEGACY_TOLERATED = (0, 1, 3)


def _check_legacy(
    replies: Sequence[Any], errors: Sequence[ResponseError | None], nonce: str
) -> None:
    for index, error in enumerate(errors):
        if error is None:
            continue
        if "only (P|S)SUBSCRIBE" in str(error) or "only (P)SUBSCRIBE" in str(error):
            raise ConnectionError("reset: the connection is subscribed (pub/sub)")
        if index not in _LEGACY_TOLERATED and index != len(errors) - 1:
            raise error
    if errors[-1] is not None or _text(replies[-1]) != nonce:
        raise ConnectionError(f"reset: PING echo {replies[-1]!r:.80} is not the nonce sent")


# ---------------------------------------------------------------------- errors


def _classify(exc: Exception) -> Exception:
    """Permanent connect failures become ``ConnectError``; the rest are retried."""
    text = str(exc)
    if isinstance(exc, BusyLoadingError) or any(text.startswith(p) for p in _TRANSIENT_REPLIES):
        return exc
    if "max number of clients" in text:
        return exc
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)) or any(
        p in text for p in _AUTH_REPLIES
    ):
        return ConnectError(f"Redis refused the login: {exc}")
    if isinstance(exc, ResponseError):
        # A server error while setting up the session (an unknown database index, HELLO
        # refused, ...): the same configuration fails the same way next time.
        return ConnectError(f"Redis refused the connection setup: {exc}")
    if "certificate" in text or "CERTIFICATE" in text:
        return ConnectError(f"cannot connect to Redis: {exc}")
    return exc


def _is_disconnect_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return not isinstance(error, (AuthenticationError, AuthorizationError))
    return isinstance(error, ResponseError) and str(error).startswith("LOADING")


# ---------------------------------------------------------------------- shared


class _RedisCommon:
    """Connection arguments, per-connection state and the cheap checks of both flavours."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        connect_timeout: float = 10.0,
        connect_kwargs: Any = None,
        client_name: str | None = None,
        use_reset: bool | None = None,
    ) -> None:
        self.target = RedisTarget.from_url(target) if isinstance(target, str) else target
        self._timeout = connect_timeout
        self._connect_kwargs = connect_kwargs if connect_kwargs is not None else {}
        base = dict(self.target.kwargs)
        base.setdefault("socket_connect_timeout", connect_timeout)
        if "client_name" not in base:
            base["client_name"] = _clean_name(client_name or "tidepool")
        if self.target.password is not None:
            base["password"] = self.target.password.value
        base["single_connection_client"] = True
        base["health_check_interval"] = 0
        self._base = base
        # None: RESET when the server has it; False: always the legacy reset (for tests).
        self._use_reset = use_reset
        self._sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        self._nonces = itertools.count(1)
        self._nonce_prefix = f"tidepool-{os.urandom(6).hex()}-"

    def _kwargs(self, resolved: dict[str, Any]) -> dict[str, Any]:
        kwargs = {**self._base, **resolved}
        kwargs["single_connection_client"] = True
        return kwargs

    def _nonce(self) -> str:
        return f"{self._nonce_prefix}{next(self._nonces)}"

    def _session(self, client: Any, hello: Any, login: tuple[str, Secret] | None) -> _Session:
        conn = client.connection
        fields = _hello_fields(hello)
        modern = fields is not None and _version(fields.get("version", "0")) >= (6, 2)
        if self._use_reset is False:
            modern = False
        protocol = int(fields["proto"]) if fields is not None else 2
        name = conn.client_name
        return _Session(
            modern=modern,
            protocol=protocol,
            db=int(conn.db or 0),
            name=_text(name) if name else None,
            login=login,
        )

    @staticmethod
    def _login(username: Any, password: Any) -> tuple[str, Secret] | None:
        if password is None or password == "":
            return None
        return (str(_text(username)) if username else "default", Secret(str(_text(password))))

    def is_broken(self, conn: Any) -> bool:
        raw = conn.connection
        return raw is None or not raw.is_connected

    def is_disconnect(self, conn: Any, error: BaseException | None) -> bool:
        if error is None:
            return self.is_broken(conn)
        return _is_disconnect_error(error)

    def needs_reset(self, conn: Any) -> bool:
        """Whether ``reset(conn)`` has anything to do: a session command or an unread reply
        on the connection, or another connection that ``pipeline()`` / ``pubsub()`` opened
        beside it. A connection that is gone needs the reset too, which then fails and
        retires it."""
        raw = conn.connection
        return raw is None or not raw.is_connected or not untouched(raw) or _extra_open(conn)


def build(url: str, flavor: Literal["async", "sync"], options: Options) -> tuple[Any, str]:
    """The manager for a ``redis://``, ``rediss://`` or ``unix://`` URL (called by the adapter
    registry), with the pool's default name.

    Raises:
        ConfigError: the URL is malformed (the message is redacted).
    """
    target = RedisTarget.from_url(url)
    manager_class = AsyncRedisManager if flavor == "async" else RedisManager
    manager = manager_class(
        target,
        connect_timeout=options.connect_timeout,
        connect_kwargs=options.connect_kwargs,
        client_name=options.name or target.display,
    )
    return manager, target.display


# ---------------------------------------------------------------------- AsyncPool


class AsyncRedisManager(_RedisCommon):
    """Async manager and executor for ``redis.asyncio`` (``AsyncPool``).

    Args:
        target: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a parsed
            :class:`RedisTarget`.
        connect_timeout: bound (s) on one connect, check, reset or close.
        connect_kwargs: passed to ``redis.asyncio.Redis``; ``password`` may be a callable, and
            the whole set may be one callable returning it, evaluated per connection.
        client_name: the ``CLIENT SETNAME`` name when the URL gives none (default
            ``"tidepool"``; a URL pool passes its name).
        use_reset: ``None`` to use ``RESET`` when the server has it (>= 6.2); ``False``
            to always use the fallback for older servers.
    """

    async def connect(self) -> redis.asyncio.Redis:
        # The password lives in _open()'s frame only; a failure is re-raised from here,
        # outside the except block, with those frames cleared.
        failure: Exception
        try:
            return await self._open()
        except Exception as exc:
            failure = exc
        raise scrubbed(failure, _classify)

    async def _open(self) -> redis.asyncio.Redis:
        kwargs = self._kwargs(await resolve_credentials(self._connect_kwargs))
        kwargs.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
        client = redis.asyncio.Redis(**kwargs)
        try:
            await client.initialize()
            conn = client.connection
            assert conn is not None
            await conn.send_command("HELLO")
            try:
                hello = await conn.read_response()
            except ResponseError:  # Redis < 6.2: HELLO needs arguments, or is unknown
                hello = None
            login = None
            if conn.credential_provider is not None:
                login = self._login(*_pad(await conn.credential_provider.get_credentials_async()))
            else:
                login = self._login(conn.username, conn.password)
            self._sessions[client] = self._session(client, hello, login)
            watch(conn)
            limit_reads(getattr(getattr(conn, "_writer", None), "transport", None))
        except BaseException:
            await _discard_async(client)
            raise
        return client

    async def check(self, conn: redis.asyncio.Redis) -> None:
        raw = _connected_async(conn)
        await raw.send_command("PING", check_health=False)
        await raw.read_response()

    async def reset(self, conn: redis.asyncio.Redis) -> None:
        raw = _connected_async(conn)
        if not untouched(raw):
            await self._full_reset(conn, raw)
        await _drop_extra_async(conn)

    async def _full_reset(self, conn: redis.asyncio.Redis, raw: Any) -> None:
        session = self._sessions[conn]
        nonce = self._nonce()
        commands = _reset_commands(session, nonce)
        await raw.send_packed_command(raw.pack_commands(commands), check_health=False)
        if session.modern:
            reader = _ResetReader(session, nonce)
            while not reader.feed(await raw.read_response()):
                pass
        else:
            replies: list[Any] = []
            errors: list[ResponseError | None] = []
            for _ in commands:
                try:
                    replies.append(await raw.read_response())
                    errors.append(None)
                except ResponseError as exc:
                    replies.append(None)
                    errors.append(exc)
            _check_legacy(replies, errors, nonce)
        settle(raw)

    async def close(self, conn: redis.asyncio.Redis) -> None:
        await _discard_async(conn)

    async def execute(self, conn: redis.asyncio.Redis, command: Any, args: Sequence[Any]) -> Any:
        client: Any = conn  # redis-py leaves execute_command unannotated
        return await client.execute_command(command, *args)


def _pad(credentials: Sequence[Any]) -> tuple[Any, Any]:
    """(username, password) from a credential provider's ``(password,)`` or pair."""
    if len(credentials) == 1:
        return None, credentials[0]
    return credentials[0], credentials[1]


def _connected_async(client: redis.asyncio.Redis) -> Any:
    """The client's connection, or ``ConnectionError`` if it is gone: redis-py would silently
    reconnect on the next command, and a fresh session must not pass for the old one."""
    raw = client.connection
    if raw is None or not raw.is_connected:
        raise ConnectionError("the connection is closed")
    return raw


def _extra_open(client: Any) -> bool:
    """Whether the client's private redis-py pool holds an open connection beside the pooled
    one (``pipeline()`` and ``pubsub()`` take their own), which the pool does not count and
    the reset closes; ``True`` for a pool laid out otherwise."""
    # (redis-py keeps the connections it disconnects in that list.)
    extra = getattr(client.connection_pool, "_available_connections", None)
    return extra is None or any(other.is_connected for other in extra)


async def _drop_extra_async(client: redis.asyncio.Redis) -> None:
    """Close the connections of :func:`_extra_open`."""
    if _extra_open(client):
        await client.connection_pool.disconnect(inuse_connections=False)


async def _discard_async(client: redis.asyncio.Redis) -> None:
    """Close the client, its connection and any other its private pool opened; the
    synchronous close at the end still happens if this is cancelled or times out."""
    raw = client.connection
    try:
        await client.connection_pool.disconnect(inuse_connections=True)
        await client.aclose(close_connection_pool=True)
    finally:
        pool = client.connection_pool
        extra = [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]
        for each in [raw, *extra]:
            if each is not None:
                each._close()
        client.connection = None


# ---------------------------------------------------------------------- Pool


class RedisManager(_RedisCommon):
    """Blocking manager and executor for ``redis`` (``Pool``). Arguments as
    :class:`AsyncRedisManager`; ``connect_kwargs`` go to ``redis.Redis``.

    ``Pool`` does not bound blocking calls itself: the connect handshake, the check and the
    reset read with a deadline of ``connect_timeout``; commands use ``socket_timeout`` (none
    by default, so ``BLPOP key 0`` may block).
    """

    def connect(self) -> redis.Redis:
        # See AsyncRedisManager.connect.
        failure: Exception
        try:
            return self._open()
        except Exception as exc:
            failure = exc
        raise scrubbed(failure, _classify)

    def _open(self) -> redis.Redis:
        kwargs = self._kwargs(resolve_credentials_sync(self._connect_kwargs))
        kwargs.setdefault("retry", redis.retry.Retry(NoBackoff(), 0))
        # The handshake redis-py runs in the constructor reads with socket_timeout: bound it
        # by connect_timeout, then give commands the timeout asked for.
        wanted = kwargs.get("socket_timeout")
        bound = self._timeout if wanted is None else min(wanted, self._timeout)
        kwargs["socket_timeout"] = bound
        client = redis.Redis(**kwargs)
        try:
            conn: Any = client.connection
            assert conn is not None
            conn.send_command("HELLO")
            try:
                hello = conn.read_response(timeout=self._timeout)
            except ResponseError:  # Redis < 6.2
                hello = None
            if conn.credential_provider is not None:
                login = self._login(*_pad(conn.credential_provider.get_credentials()))
            else:
                login = self._login(conn.username, conn.password)
            self._sessions[client] = self._session(client, hello, login)
            _set_read_timeout(conn, wanted)
            watch(conn)
        except BaseException:
            _discard_sync(client)
            raise
        return client

    def check(self, conn: redis.Redis) -> None:
        raw = _connected_sync(conn)
        raw.send_command("PING", check_health=False)
        raw.read_response(timeout=self._timeout)

    def reset(self, conn: redis.Redis) -> None:
        raw = _connected_sync(conn)
        if not untouched(raw):
            self._full_reset(conn, raw)
        if _extra_open(conn):
            conn.connection_pool.disconnect(inuse_connections=False)

    def _full_reset(self, conn: redis.Redis, raw: Any) -> None:
        session = self._sessions[conn]
        nonce = self._nonce()
        commands = _reset_commands(session, nonce)
        deadline = time.monotonic() + self._timeout
        raw.send_packed_command(raw.pack_commands(commands), check_health=False)
        if session.modern:
            reader = _ResetReader(session, nonce)
            while not reader.feed(raw.read_response(timeout=_left(deadline))):
                pass
        else:
            replies: list[Any] = []
            errors: list[ResponseError | None] = []
            for _ in commands:
                try:
                    replies.append(raw.read_response(timeout=_left(deadline)))
                    errors.append(None)
                except ResponseError as exc:
                    replies.append(None)
                    errors.append(exc)
            _check_legacy(replies, errors, nonce)
        settle(raw)

    def close(self, conn: redis.Redis) -> None:
        _discard_sync(conn)

    def execute(self, conn: redis.Redis, command: Any, args: Sequence[Any]) -> Any:
        client: Any = conn  # redis-py leaves execute_command unannotated
        return client.execute_command(command, *args)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the reset did not finish in time")
    return left


def _connected_sync(client: redis.Redis) -> Any:
    """As :func:`_connected_async`."""
    raw = client.connection
    if raw is None or not raw.is_connected:
        raise ConnectionError("the connection is closed")
    return raw


def _set_read_timeout(conn: Any, seconds: float | None) -> None:
    """Make ``seconds`` the read timeout of a connected redis-py connection: its socket, and
    what its parser restores after a read with an explicit timeout."""
    conn.socket_timeout = seconds
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)
    parser = getattr(conn, "_parser", None)
    buffer = getattr(parser, "_buffer", None)
    if buffer is not None and hasattr(buffer, "socket_timeout"):
        buffer.socket_timeout = seconds
    if parser is not None and hasattr(parser, "_socket_timeout"):  # hiredis
        parser._socket_timeout = seconds


def _discard_sync(client: redis.Redis) -> None:
    try:
        client.connection_pool.disconnect(inuse_connections=True)
    except (RedisError, OSError):
        pass
    finally:
        client.close()
        client.connection_pool.close()
