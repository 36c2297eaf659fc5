"""MySQL and MariaDB: ``AsyncPool`` on aiomysql, ``Pool`` on PyMySQL.

URLs: ``mysql://user:password@host:port/database?key=value`` (``mariadb://`` is the same;
``mysql+aiomysql://`` / ``mysql+pymysql://`` name the driver explicitly). Connections are lent
in autocommit mode (use ``pool.transaction()`` for a transaction).

On return a connection is made as if freshly connected, in one round trip: the adapter
pipelines ``ROLLBACK`` (when a transaction is open), ``COM_RESET_CONNECTION`` (MySQL >= 5.7.3,
MariaDB >= 10.2.4: user variables, session variables, temporary tables, ``GET_LOCK`` locks,
table locks, prepared statements, ``LAST_INSERT_ID()``), ``COM_INIT_DB`` back to the URL's
database, ``SET NAMES`` with the connection's charset, the ``sql_mode`` and ``init_command``
the connection was opened with, the session settings ``on_connect`` made (remembered once per
connection) and ``autocommit``. A reset that fails or times out closes the connection.

A connection returned mid-query (a cancelled task, an interrupted thread, an unread unbuffered
result) is closed, never lent again, and its still-running statement is stopped with ``KILL
CONNECTION`` from a short-lived side connection (best effort, bounded): the server would
otherwise run it to the end, holding a session the pool no longer counts.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import re
import select
import ssl
import struct
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiomysql  # type: ignore[import-untyped]
import pymysql  # type: ignore[import-untyped]
from pymysql.charset import charset_by_name  # type: ignore[import-untyped]
from pymysql.constants import CLIENT, SERVER_STATUS  # type: ignore[import-untyped]
from pymysql.converters import escape_string  # type: ignore[import-untyped]

from .._config import Options
from .._url import Secret, parse_url
from ..errors import ConfigError, ConnectError
from ._errors import scrubbed
from ._pg import forget_locals, resolve_credentials, resolve_credentials_sync
from ._transport import limit_reads

__all__ = ["AsyncMySQLManager", "MySQLManager", "MySQLTarget", "build"]

log = logging.getLogger("tidepool.mysql")

# URL query parameters, validated at construction.
URL_PARAMS = (
    "charset",
    "connect_timeout",
    "init_command",
    "sql_mode",
    "unix_socket",
    "program_name",
    "read_timeout",
    "write_timeout",
    "ssl",
    "ssl_disabled",
    "ssl_ca",
    "ssl_capath",
    "ssl_cert",
    "ssl_key",
    "ssl_verify_cert",
    "ssl_verify_identity",
)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# Client/server error codes (https://mariadb.com/kb/en/mariadb-error-codes/).
# The session is gone: server gone away, lost during query, idle timeout (MySQL 8.0.24+),
# server shutdown, lost at handshake, connection killed (MariaDB), can't connect.
DISCONNECT_CODES = frozenset({2006, 2013, 4031, 1053, 2055, 1927, 2003})
# Connecting cannot succeed without a change on either side: access denied (to the server,
# to the database, without password), unknown database, host blocked / not allowed, auth
# plugin problems, expired password, TLS required or failed.
PERMANENT_CONNECT_CODES = frozenset(
    {1044, 1045, 1049, 1129, 1130, 1251, 1524, 1698, 1862, 2026, 2059, 3159}
)
_HINTS = {
    1129: " (the server blocked this host after repeated interrupted handshakes: run "
    "'FLUSH HOSTS' or 'mariadb-admin flush-hosts' on the server, and raise max_connect_errors)",
}

_COM_QUERY = 0x03
_COM_INIT_DB = 0x02
_COM_RESET_CONNECTION = 0x1F  # PyMySQL calls it COM_END
_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS

# Session variables the reset restores on its own (SET NAMES, autocommit), that follow the
# current database, or that are per-statement bookkeeping: never part of a baseline.
_NOT_BASELINE = frozenset(
    {
        "autocommit",
        "character_set_client",
        "character_set_connection",
        "character_set_results",
        "collation_connection",
        "character_set_database",
        "collation_database",
        "timestamp",
        "pseudo_thread_id",
        "rand_seed1",
        "rand_seed2",
        "last_insert_id",
        "insert_id",
        "identity",
        "in_transaction",
        "warning_count",
        "error_count",
        "gtid_seq_no",
        "last_gtid",
        "external_user",
        "proxy_user",
    }
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")

_ISOLATION = {
    "serializable": "SERIALIZABLE",
    "repeatable_read": "REPEATABLE READ",
    "read_committed": "READ COMMITTED",
    "read_uncommitted": "READ UNCOMMITTED",
}


# ---------------------------------------------------------------------- target


@dataclass(frozen=True)
class SSLOptions:
    """TLS settings from the URL; the ``ssl.SSLContext`` is built at the first connect (it
    reads certificate files, and construction does no I/O)."""

    ca: str | None = None
    capath: str | None = None
    cert: str | None = None
    key: str | None = None
    verify_cert: bool = False
    verify_identity: bool = False

    def context(self) -> ssl.SSLContext:
        """Build the context.

        Raises:
            OSError, ssl.SSLError: a certificate file is missing or unreadable.
        """
        if self.ca or self.capath or self.verify_cert:
            ctx = ssl.create_default_context(cafile=self.ca, capath=self.capath)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = self.verify_identity
        ctx.verify_mode = ssl.CERT_REQUIRED if self.verify_cert else ssl.CERT_NONE
        if self.cert:
            ctx.load_cert_chain(self.cert, keyfile=self.key)
        return ctx


@dataclass(frozen=True)
class MySQLTarget:
    """A MySQL/MariaDB target parsed from a URL; the password is a :class:`Secret`."""

    host: str = "localhost"
    port: int = 3306
    user: str | None = None
    password: Secret | None = field(default=None, repr=False)
    database: str | None = None
    charset: str = "utf8mb4"
    connect_timeout: float | None = None
    init_command: str | None = None
    sql_mode: str | None = None
    unix_socket: str | None = None
    program_name: str | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    ssl: SSLOptions | None = None
    ssl_disabled: bool = False
    driver: str | None = None
    display: str = ""

    def __repr__(self) -> str:
        return f"MySQLTarget({self.display!r})"

    @classmethod
    def from_url(cls, url: str) -> MySQLTarget:
        """Parse ``mysql[+driver]://user:password@host:port/database?key=value``.

        Raises:
            ConfigError: unknown scheme, driver or parameter (with a suggestion), several
                hosts, a bad port, number, boolean, charset or TLS combination. The message
                names the parameter and shows the URL with its password redacted.
        """
        parsed = parse_url(url)
        redacted = parsed.redacted
        if parsed.scheme not in ("mysql", "mariadb"):
            raise ConfigError(
                f"unsupported scheme {parsed.scheme!r} for MySQL in {redacted!r} "
                "(expected mysql:// or mariadb://)"
            )
        if parsed.driver not in (None, "aiomysql", "pymysql"):
            raise ConfigError(
                f"unknown MySQL driver {parsed.driver!r} in {redacted!r} "
                "(expected mysql+aiomysql:// or mysql+pymysql://)"
            )
        if len(parsed.hosts) > 1:
            raise ConfigError(f"MySQL takes one host, got {len(parsed.hosts)} in {redacted!r}")
        host, port = parsed.hosts[0] if parsed.hosts else ("", None)
        query = parsed.query
        for key in query:
            if key not in URL_PARAMS:
                close = difflib.get_close_matches(key, URL_PARAMS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown MySQL URL parameter {key!r} in {redacted!r}{hint} "
                    f"(known: {', '.join(URL_PARAMS)})"
                )
        charset = query.get("charset", "utf8mb4")
        try:
            known = charset_by_name(charset) is not None
        except KeyError:
            known = False
        if not known:
            raise ConfigError(
                f"unknown MySQL charset {charset!r} in URL parameter charset of {redacted!r}"
            )
        if "\x00" in "".join(query.values()):
            raise ConfigError(f"a NUL byte in a URL parameter of {redacted!r}")
        ssl_options, ssl_disabled = _ssl_options(query, redacted)
        display = (
            f"{parsed.scheme}://{parsed.username + '@' if parsed.username else ''}"
            f"{host or 'localhost'}:{port or 3306}/{parsed.path}"
        )
        return cls(
            host=host or "localhost",
            port=port or 3306,
            user=parsed.username,
            password=parsed.password,
            database=parsed.path or None,
            charset=charset,
            connect_timeout=_seconds(query, "connect_timeout", redacted),
            init_command=query.get("init_command") or None,
            sql_mode=query.get("sql_mode"),
            unix_socket=query.get("unix_socket") or None,
            program_name=query.get("program_name") or None,
            read_timeout=_seconds(query, "read_timeout", redacted),
            write_timeout=_seconds(query, "write_timeout", redacted),
            ssl=ssl_options,
            ssl_disabled=ssl_disabled,
            driver=parsed.driver,
            display=display,
        )


def _seconds(query: Mapping[str, str], key: str, redacted: str) -> float | None:
    text = query.get(key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"invalid MySQL URL parameter {key}={text!r} in {redacted!r} (a number of seconds > 0)"
        )
    return value


def _flag(query: Mapping[str, str], key: str, redacted: str) -> bool | None:
    text = query.get(key)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(
        f"invalid MySQL URL parameter {key}={text!r} in {redacted!r} (expected true or false)"
    )


def _ssl_options(query: Mapping[str, str], redacted: str) -> tuple[SSLOptions | None, bool]:
    """TLS settings: any ``ssl_*`` file or verification option (or ``ssl=true``) requires
    TLS; ``ssl=false`` / ``ssl_disabled=true`` turns it off (PyMySQL otherwise tries TLS
    when the server offers it)."""
    wanted = _flag(query, "ssl", redacted)
    disabled = _flag(query, "ssl_disabled", redacted)
    verify_cert = _flag(query, "ssl_verify_cert", redacted)
    verify_identity = _flag(query, "ssl_verify_identity", redacted)
    files = {k: query[k] for k in ("ssl_ca", "ssl_capath", "ssl_cert", "ssl_key") if query.get(k)}
    off = wanted is False or disabled is True
    if off and (wanted or files or verify_cert or verify_identity):
        given = (
            ", ".join(
                [*files, *(k for k in ("ssl_verify_cert", "ssl_verify_identity") if query.get(k))]
            )
            or "ssl=true"
        )
        raise ConfigError(
            f"conflicting MySQL TLS parameters in {redacted!r}: TLS is disabled "
            f"(ssl=false or ssl_disabled=true) but {given} asks for it"
        )
    if off:
        return None, True
    if "ssl_key" in files and "ssl_cert" not in files:
        raise ConfigError(
            f"MySQL URL parameter ssl_key needs ssl_cert (the client certificate) in {redacted!r}"
        )
    if verify_identity and verify_cert is False:
        raise ConfigError(
            f"conflicting MySQL TLS parameters in {redacted!r}: ssl_verify_identity=true "
            "needs ssl_verify_cert (it checks the certificate's host name)"
        )
    if not (wanted or files or verify_cert or verify_identity):
        return None, False
    has_ca = "ssl_ca" in files or "ssl_capath" in files
    return (
        SSLOptions(
            ca=files.get("ssl_ca"),
            capath=files.get("ssl_capath"),
            cert=files.get("ssl_cert"),
            key=files.get("ssl_key"),
            # A CA is given to be used: verify against it unless told otherwise.
            verify_cert=bool(verify_identity)
            or (verify_cert if verify_cert is not None else has_ca),
            verify_identity=bool(verify_identity),
        ),
        False,
    )


def build(url: str, flavor: Literal["async", "sync"], options: Options) -> tuple[Any, str]:
    """The registry's entry point: ``(manager, display name)`` for ``url``.

    Raises:
        ConfigError: a bad URL, or a driver that does not fit the pool's flavour.
    """
    target = MySQLTarget.from_url(url)
    if flavor == "async":
        if target.driver == "pymysql":
            raise ConfigError(
                f"PyMySQL is blocking: use Pool for {target.display!r}, or mysql+aiomysql:// "
                "with AsyncPool"
            )
        for key in ("read_timeout", "write_timeout"):
            if getattr(target, key) is not None:
                raise ConfigError(
                    f"MySQL URL parameter {key} is supported by Pool (PyMySQL) only; with "
                    f"AsyncPool bound a query with asyncio.timeout() ({target.display!r})"
                )
        manager: Any = AsyncMySQLManager(
            target, connect_timeout=options.connect_timeout, connect_kwargs=options.connect_kwargs
        )
    else:
        if target.driver == "aiomysql":
            raise ConfigError(
                f"aiomysql is async-only: use AsyncPool for {target.display!r}, or "
                "mysql+pymysql:// with Pool"
            )
        manager = MySQLManager(
            target, connect_timeout=options.connect_timeout, connect_kwargs=options.connect_kwargs
        )
    return manager, target.display


# ---------------------------------------------------------------------- shared


def _packet(command: int, payload: bytes = b"") -> bytes:
    body = bytes([command]) + payload
    if len(body) >= 0xFFFFFF:
        raise ConfigError("a session statement is too long for one MySQL packet")
    return struct.pack("<I", len(body))[:3] + b"\x00" + body


_ROLLBACK = _packet(_COM_QUERY, b"ROLLBACK")


@dataclass(slots=True)
class _Session:
    """What a reset restores on one connection, as pipelined packets (built at connect)."""

    thread_id: int
    database: str | None
    names: str
    sql_mode: str | None
    init_command: str | None
    autocommit: bool | None
    client: dict[str, Any]
    encoding: str
    baseline: tuple[str, ...] = ()
    packets: bytes = b""
    ok_replies: tuple[bool, ...] = ()  # per packet: True = a plain OK, False = a query result

    def build(self) -> None:
        enc = self.encoding
        packets = [_packet(_COM_RESET_CONNECTION)]
        ok = [True]
        if self.database:
            packets.append(_packet(_COM_INIT_DB, self.database.encode(enc)))
            ok.append(True)
        statements = [self.names]
        if self.sql_mode is not None:
            statements.append(self.sql_mode)
        if self.init_command:
            statements.append(self.init_command)
        # The baseline after init_command, autocommit last: the order of the drivers' connect.
        final = list(self.baseline)
        if self.autocommit is not None:
            final.append(f"autocommit={int(self.autocommit)}")
        if final and len(statements) == 1:
            statements[0] = f"{statements[0]}, {', '.join(final)}"
        elif final:
            statements.append(f"SET SESSION {', '.join(final)}")
        for statement in statements:
            packets.append(_packet(_COM_QUERY, statement.encode(enc)))
            ok.append(False)
        self.packets = b"".join(packets)
        self.ok_replies = tuple(ok)


def _names_sql(charset: str) -> str:
    return f"SET NAMES '{escape_string(charset)}'"


def _baseline_sql(session: Mapping[str, Any], global_: Mapping[str, Any]) -> list[str]:
    """One ``name=value`` assignment per session variable that differs from its global value
    (what ``on_connect`` and ``init_command`` changed)."""
    assignments = []
    for name, value in session.items():
        if name in _NOT_BASELINE or name not in global_ or value is None:
            continue
        if value == global_[name] or not _NAME.match(name):
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        literal = text if _NUMBER.match(text) else f"'{escape_string(text)}'"
        assignments.append(f"{name}={literal}")
    return assignments


def begin_statements(isolation: str | None = None, readonly: bool = False) -> list[str]:
    """``SET TRANSACTION ISOLATION LEVEL ...`` (for the next transaction only) and
    ``START TRANSACTION [READ ONLY]``.

    Raises:
        ValueError: an unknown isolation level.
    """
    statements = []
    if isolation is not None:
        key = isolation.lower().replace(" ", "_")
        if key not in _ISOLATION:
            raise ValueError(f"isolation must be one of {', '.join(_ISOLATION)}, got {isolation!r}")
        statements.append(f"SET TRANSACTION ISOLATION LEVEL {_ISOLATION[key]}")
    statements.append("START TRANSACTION READ ONLY" if readonly else "START TRANSACTION")
    return statements


def _code(error: BaseException) -> int | None:
    if isinstance(error, pymysql.err.MySQLError) and error.args:
        code = error.args[0]
        return code if isinstance(code, int) else None
    return None


def _tls_failure(error: BaseException) -> bool:
    """Whether a certificate or TLS negotiation error is behind ``error`` (not a dropped
    connection during the TLS handshake, which may be transient)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) and not isinstance(
            current, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
        ):
            return True
        original = getattr(current, "original_exception", None)
        current = (
            original
            if isinstance(original, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return False


def _classify(exc: Exception) -> Exception:
    """Permanent connect failures become ``ConnectError``; the rest are retried."""
    code = _code(exc)
    if code in PERMANENT_CONNECT_CODES:
        return ConnectError(f"MySQL refused the connection: {exc}{_HINTS.get(code or 0, '')}")
    if _tls_failure(exc):
        return ConnectError(f"TLS with the MySQL server failed: {exc}")
    if isinstance(exc, (TypeError, ValueError, LookupError)):
        return ConnectError(f"invalid MySQL connection parameters: {type(exc).__name__}: {exc}")
    return exc


def _timed_out(error: BaseException) -> bool:
    """A driver error caused by a client-side socket timeout (PyMySQL read_timeout)."""
    return isinstance(error, TimeoutError) or isinstance(
        error.__cause__ or error.__context__, TimeoutError
    )


def _first(row: Any) -> Any:
    if row is None:
        return None
    if isinstance(row, Mapping):
        return next(iter(row.values()), None)
    return row[0]


class _MySQLCommon:
    """Connection arguments, per-connection session records and error classes shared by
    both flavours."""

    _driver_db_key = "database"

    def __init__(
        self,
        target: MySQLTarget | str,
        *,
        connect_timeout: float = 10.0,
        connect_kwargs: Any = None,
    ) -> None:
        self.target = MySQLTarget.from_url(target) if isinstance(target, str) else target
        self._timeout = connect_timeout
        self._connect_kwargs = connect_kwargs if connect_kwargs is not None else {}
        self._ssl_context: ssl.SSLContext | None = None
        self._sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        # Connections whose statement was interrupted on the client side (a cancelled task, a
        # client-side timeout): the server may still be running it.
        self._interrupted: weakref.WeakSet[Any] = weakref.WeakSet()

    def _base(self) -> dict[str, Any]:
        """Driver keyword arguments from the URL (no password; the TLS context built)."""
        t = self.target
        base: dict[str, Any] = {
            "host": t.host,
            "port": t.port,
            "charset": t.charset,
            "autocommit": True,
            "connect_timeout": t.connect_timeout or self._timeout,
        }
        if t.user is not None:
            base["user"] = t.user
        if t.database is not None:
            base[self._driver_db_key] = t.database
        for key in ("init_command", "unix_socket", "program_name"):
            value = getattr(t, key)
            if value is not None:
                base[key] = value
        if t.ssl is not None:
            if self._ssl_context is None:
                try:
                    self._ssl_context = t.ssl.context()
                except (OSError, ssl.SSLError) as exc:
                    raise ConnectError(f"cannot set up TLS for {t.display!r}: {exc}") from exc
            base["ssl"] = self._ssl_context
        return base

    def _kwargs(self, resolved: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._base()
        if self.target.password is not None:
            kwargs["password"] = self.target.password.value
        kwargs.update(resolved)
        return kwargs

    def _record(self, conn: Any, kwargs: Mapping[str, Any], sql_mode: str | None) -> None:
        """Remember what a reset must restore on ``conn`` (from the arguments it was opened
        with, so that per-connection ``connect_kwargs`` are honoured)."""
        charset = kwargs.get("charset") or "utf8mb4"
        session = _Session(
            thread_id=int(conn.server_thread_id[0]),
            database=kwargs.get(self._driver_db_key) or kwargs.get("db") or None,
            names=_names_sql(charset),
            sql_mode=sql_mode,
            init_command=kwargs.get("init_command") or None,
            autocommit=kwargs.get("autocommit", True),
            client=self._client_state(conn),
            encoding=conn.encoding,
        )
        session.build()
        self._sessions[conn] = session

    @staticmethod
    def _client_state(conn: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _note_failure(self, conn: Any, error: BaseException) -> None:
        """After a failed statement: an interruption (cancellation, client-side timeout)
        leaves the reply unread, so the connection is closed now and never lent again."""
        if not isinstance(error, Exception) or _timed_out(error):
            self._interrupted.add(conn)
            self._drop(conn)

    @staticmethod
    def _drop(conn: Any) -> None:
        raise NotImplementedError

    def _must_kill(self, conn: Any) -> bool:
        return conn in self._interrupted or getattr(conn, "_close_reason", None) is not None

    def _interrupted_locally(self, conn: Any) -> bool:
        return self._must_kill(conn)

    def is_disconnect(self, conn: Any, error: BaseException | None) -> bool:
        """Whether ``conn`` was lost to the server side (gone away, killed, shut down, idle
        timeout): the pool then retires the connections opened before it."""
        if error is None:
            if self._interrupted_locally(conn):
                return False
            return bool(self._closed_by_driver(conn))
        code = _code(error)
        if code is not None:
            return code in DISCONNECT_CODES
        if isinstance(error, TimeoutError):
            return False
        return isinstance(error, (ConnectionError, EOFError))

    def _closed_by_driver(self, conn: Any) -> bool:
        raise NotImplementedError


def _session_rows(rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    return {str(name): value for name, value in rows}


# ---------------------------------------------------------------------- Pool (PyMySQL)


class MySQLManager(_MySQLCommon):
    """Blocking manager and executor for PyMySQL (``Pool``).

    Args:
        target: a ``mysql://`` URL or a parsed :class:`MySQLTarget`.
        connect_timeout: bound (s) on one connect, check, reset or close (applied as the
            socket's read and write timeouts for the duration of the call).
        connect_kwargs: passed to ``pymysql.connect``; ``password`` may be a callable, and
            the whole set may be one callable returning it (evaluated per connection).
    """

    _driver_db_key = "database"

    def _base(self) -> dict[str, Any]:
        base = super()._base()
        t = self.target
        if t.sql_mode is not None:
            base["sql_mode"] = t.sql_mode
        if t.ssl_disabled:
            base["ssl_disabled"] = True
        return base

    def connect(self) -> Any:
        # The password lives in _open()'s frame only; its traceback frames are cleared.
        failure: Exception
        try:
            conn = self._open(resolve_credentials_sync(self._connect_kwargs))
        except Exception as exc:
            failure = exc
        else:
            return conn
        raise scrubbed(failure, _classify)

    def _open(self, resolved: dict[str, Any]) -> Any:
        kwargs = self._kwargs(resolved)
        # PyMySQL's connect_timeout covers the TCP connect only: bound the handshake too,
        # then restore the read/write timeouts the caller asked for.
        read_timeout = kwargs.get("read_timeout", self.target.read_timeout)
        write_timeout = kwargs.get("write_timeout", self.target.write_timeout)
        kwargs["read_timeout"] = kwargs["write_timeout"] = self._timeout
        conn = pymysql.connect(**kwargs)
        try:
            conn._read_timeout = read_timeout
            conn._write_timeout = write_timeout
            sql_mode = kwargs.get("sql_mode")
            mode = None if sql_mode is None else f"SET sql_mode={conn.escape(sql_mode)}"
            self._record(conn, kwargs, mode)
        except BaseException:
            conn._force_close()
            raise
        return conn

    @staticmethod
    def _client_state(conn: Any) -> dict[str, Any]:
        return {
            "charset": conn.charset,
            "encoding": conn.encoding,
            "collation": conn.collation,
            "autocommit_mode": conn.autocommit_mode,
        }

    @staticmethod
    def _drop(conn: Any) -> None:
        conn._force_close()

    def _closed_by_driver(self, conn: Any) -> bool:
        return conn._sock is None and not conn._closed

    @contextmanager
    def _bounded(self, conn: Any) -> Iterator[None]:
        """Run socket I/O on ``conn`` with ``connect_timeout`` as its read/write timeout."""
        read, write = conn._read_timeout, conn._write_timeout
        conn._read_timeout = conn._write_timeout = self._timeout
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, pymysql.err.MySQLError) or _timed_out(exc):
                self._interrupted.add(conn)
            conn._force_close()
            raise
        finally:
            conn._read_timeout, conn._write_timeout = read, write

    def is_broken(self, conn: Any) -> bool:
        sock = conn._sock
        if sock is None or conn in self._interrupted:
            return True
        result = conn._result
        if result is not None and result.unbuffered_active:
            return True  # an unbuffered result left half read
        # Idle, the server sends nothing: readable means EOF (the server closed it: killed,
        # idle timeout) or bytes nobody asked for (a desynchronised stream).
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def check(self, conn: Any) -> None:
        if self.is_broken(conn):
            raise pymysql.err.OperationalError(2013, "the connection was closed or is unusable")
        with self._bounded(conn):
            conn.ping(reconnect=False)

    def remember_session(self, conn: Any) -> None:
        """After ``on_connect``: remember the session variables it changed, so that every
        reset restores them after ``COM_RESET_CONNECTION``."""
        with self._bounded(conn):
            session = _session_rows(self._query(conn, "SHOW SESSION VARIABLES"))
            global_ = _session_rows(self._query(conn, "SHOW GLOBAL VARIABLES"))
            kept = []
            for assignment in _baseline_sql(session, global_):
                try:
                    self._query(conn, f"SET SESSION {assignment}")
                except pymysql.err.MySQLError as exc:
                    log.warning(
                        "on_connect setting %s cannot be restored after a reset (%s); "
                        "set it in init_command instead",
                        assignment,
                        exc,
                    )
                else:
                    kept.append(assignment)
        record = self._sessions.get(conn)
        if record is not None and kept:
            record.baseline = tuple(kept)
            record.build()

    @staticmethod
    def _query(conn: Any, sql: str) -> Any:
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute(sql)
            return cur.fetchall()

    def reset(self, conn: Any) -> None:
        record = self._sessions.get(conn)
        if record is None:
            raise pymysql.err.InterfaceError(0, "unknown connection: it was not opened here")
        if self.is_broken(conn):
            raise pymysql.err.OperationalError(2013, "the connection was closed or is unusable")
        packets = record.packets
        replies = record.ok_replies
        if conn.server_status & _IN_TRANS:
            packets = _ROLLBACK + packets
            replies = (False, *replies)
        with self._bounded(conn):
            conn._write_bytes(packets)  # one round trip for the whole reset
            for ok in replies:
                conn._next_seq_id = 1
                if ok:
                    conn._read_ok_packet()
                else:
                    conn._read_query_result()
                    while conn._result.has_next:
                        conn.next_result()
            conn._result = None
        for name, value in record.client.items():
            setattr(conn, name, value)
        if conn.server_status & _IN_TRANS:
            conn._force_close()
            raise pymysql.err.OperationalError(2014, "still in a transaction after the reset")

    def close(self, conn: Any) -> None:
        kill = self._must_kill(conn)
        if not conn._closed:
            if conn._sock is None or kill:
                conn._closed = True
                conn._force_close()
            else:
                try:
                    with self._bounded(conn):
                        conn.close()  # COM_QUIT, then the socket
                except pymysql.err.MySQLError:
                    pass
        if kill:
            self._kill(self._sessions.get(conn))

    def _kill(self, record: _Session | None) -> None:
        """Stop what the server still runs for a connection closed mid-statement, from a
        side connection (best effort, bounded by ``connect_timeout``)."""
        if record is None:
            return
        try:
            kwargs = self._kwargs(resolve_credentials_sync(self._connect_kwargs))
            kwargs.pop("init_command", None)
            kwargs["read_timeout"] = kwargs["write_timeout"] = self._timeout
            with pymysql.connect(**kwargs) as side:
                self._query(side, f"KILL CONNECTION {record.thread_id:d}")
        except Exception as exc:  # 1094 unknown thread: it already ended
            forget_locals(exc)
            log.debug("KILL CONNECTION %d failed: %r", record.thread_id, exc)

    # ------------------------------------------------------------ executor

    def execute(self, conn: Any, query: str, args: Sequence[Any]) -> int:
        try:
            with conn.cursor() as cur:
                return int(cur.execute(query, args or None))
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    def executemany(self, conn: Any, query: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``query`` for each row; an ``INSERT ... VALUES`` becomes multi-row inserts
        (PyMySQL batches up to its ``max_stmt_length``). Returns the affected row count."""
        try:
            with conn.cursor() as cur:
                count = cur.executemany(query, rows)
                return int(count or 0)
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    def fetch_all(self, conn: Any, query: str, args: Sequence[Any]) -> list[Any]:
        try:
            with conn.cursor() as cur:
                cur.execute(query, args or None)
                return list(cur.fetchall())
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    def fetch_one(self, conn: Any, query: str, args: Sequence[Any]) -> Any:
        try:
            with conn.cursor() as cur:
                cur.execute(query, args or None)
                return cur.fetchone()
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    def fetch_value(self, conn: Any, query: str, args: Sequence[Any]) -> Any:
        return _first(self.fetch_one(conn, query, args))

    def begin(self, conn: Any, isolation: str | None = None, readonly: bool = False) -> None:
        for statement in begin_statements(isolation, readonly):
            self.execute(conn, statement, ())

    def commit(self, conn: Any) -> None:
        self.execute(conn, "COMMIT", ())

    def rollback(self, conn: Any) -> None:
        self.execute(conn, "ROLLBACK", ())


# ---------------------------------------------------------------------- AsyncPool (aiomysql)


class _Connection(aiomysql.Connection):  # type: ignore[misc]
    """aiomysql's connection, refusing to log in without TLS when TLS was asked for
    (aiomysql itself silently goes on in clear text when the server does not offer it)."""

    async def _request_authentication(self) -> None:
        if self._ssl_context and not self.server_capabilities & CLIENT.SSL:
            raise pymysql.err.OperationalError(
                2026, "TLS is required but the MySQL server does not offer it"
            )
        await super()._request_authentication()


class AsyncMySQLManager(_MySQLCommon):
    """Async manager and executor for aiomysql (``AsyncPool``). Arguments as
    :class:`MySQLManager` (``connect_kwargs`` go to ``aiomysql.connect``; ``password`` may
    be an async callable too)."""

    _driver_db_key = "db"

    def _base(self) -> dict[str, Any]:
        base = super()._base()
        if self.target.sql_mode is not None:
            # aiomysql sends "SET sql_mode=<value>" as is: quote it.
            base["sql_mode"] = f"'{escape_string(self.target.sql_mode)}'"
        return base

    async def connect(self) -> Any:
        # The password lives in _open()'s frame only; its traceback frames are cleared.
        failure: Exception
        try:
            conn = await self._open(await resolve_credentials(self._connect_kwargs))
        except Exception as exc:
            failure = exc
        else:
            return conn
        raise scrubbed(failure, _classify)

    async def _open(self, resolved: dict[str, Any], *, side: bool = False) -> Any:
        kwargs = self._kwargs(resolved)
        if side:
            kwargs.pop("init_command", None)
        # What aiomysql.connect() does, holding the connection object so that a connect
        # interrupted by the pool's deadline closes its socket.
        conn = _Connection(**kwargs)
        try:
            await conn._connect()
            limit_reads(getattr(conn._writer, "transport", None))
            if not side:
                sql_mode = kwargs.get("sql_mode")
                self._record(conn, kwargs, None if sql_mode is None else f"SET sql_mode={sql_mode}")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _client_state(conn: Any) -> dict[str, Any]:
        return {
            "_charset": conn._charset,
            "_encoding": conn._encoding,
            "autocommit_mode": conn.autocommit_mode,
        }

    @staticmethod
    def _drop(conn: Any) -> None:
        conn.close()

    def _closed_by_driver(self, conn: Any) -> bool:
        return conn._writer is None

    def is_broken(self, conn: Any) -> bool:
        reader = conn._reader
        if conn._writer is None or reader is None or conn in self._interrupted:
            return True
        if conn._writer.transport.is_closing():
            return True
        result = conn._result
        if result is not None and result.unbuffered_active:
            return True  # an unbuffered result left half read
        # Idle, the server sends nothing: EOF means it closed the connection (killed, idle
        # timeout); buffered bytes mean a reply nobody read (a desynchronised stream).
        return bool(reader.at_eof() or getattr(reader, "_buffer", None))

    async def check(self, conn: Any) -> None:
        if self.is_broken(conn):
            raise pymysql.err.OperationalError(2013, "the connection was closed or is unusable")
        try:
            await conn.ping(reconnect=False)
        except BaseException as exc:
            if not isinstance(exc, pymysql.err.MySQLError):
                self._interrupted.add(conn)
            conn.close()
            raise

    async def remember_session(self, conn: Any) -> None:
        """After ``on_connect``: remember the session variables it changed, so that every
        reset restores them after ``COM_RESET_CONNECTION``."""
        session = _session_rows(await self._query(conn, "SHOW SESSION VARIABLES"))
        global_ = _session_rows(await self._query(conn, "SHOW GLOBAL VARIABLES"))
        kept = []
        for assignment in _baseline_sql(session, global_):
            try:
                await self._query(conn, f"SET SESSION {assignment}")
            except pymysql.err.MySQLError as exc:
                log.warning(
                    "on_connect setting %s cannot be restored after a reset (%s); "
                    "set it in init_command instead",
                    assignment,
                    exc,
                )
            else:
                kept.append(assignment)
        record = self._sessions.get(conn)
        if record is not None and kept:
            record.baseline = tuple(kept)
            record.build()

    @staticmethod
    async def _query(conn: Any, sql: str) -> Any:
        cur = await conn.cursor(aiomysql.Cursor)
        await cur.execute(sql)
        return await cur.fetchall()

    async def reset(self, conn: Any) -> None:
        record = self._sessions.get(conn)
        if record is None:
            raise pymysql.err.InterfaceError(0, "unknown connection: it was not opened here")
        if self.is_broken(conn):
            raise pymysql.err.OperationalError(2013, "the connection was closed or is unusable")
        packets = record.packets
        replies = record.ok_replies
        if conn.server_status & _IN_TRANS:
            packets = _ROLLBACK + packets
            replies = (False, *replies)
        try:
            conn._writer.write(packets)  # one round trip for the whole reset
            for ok in replies:
                conn._next_seq_id = 1
                if ok:
                    await conn._read_ok_packet()
                else:
                    await conn._read_query_result()
                    while conn._result.has_next:
                        await conn.next_result()
        except BaseException as exc:
            # Replies may be left unread: never lend it again.
            if not isinstance(exc, pymysql.err.MySQLError):
                self._interrupted.add(conn)
            conn.close()
            raise
        conn._result = None
        for name, value in record.client.items():
            setattr(conn, name, value)
        if conn.server_status & _IN_TRANS:
            conn.close()
            raise pymysql.err.OperationalError(2014, "still in a transaction after the reset")

    async def close(self, conn: Any) -> None:
        kill = self._must_kill(conn)
        if conn._writer is not None:
            if kill:
                conn.close()
            else:
                try:
                    await conn.ensure_closed()  # COM_QUIT, then the socket
                except BaseException:
                    conn.close()
                    raise
        if kill:
            await self._kill(self._sessions.get(conn))

    async def _kill(self, record: _Session | None) -> None:
        """Stop what the server still runs for a connection closed mid-statement, from a
        side connection (best effort, bounded by ``connect_timeout``)."""
        if record is None:
            return
        side = None
        try:
            async with asyncio.timeout(self._timeout):
                side = await self._open(await resolve_credentials(self._connect_kwargs), side=True)
                await self._query(side, f"KILL CONNECTION {record.thread_id:d}")
        except Exception as exc:  # 1094 unknown thread: it already ended
            forget_locals(exc)
            log.debug("KILL CONNECTION %d failed: %r", record.thread_id, exc)
        finally:
            if side is not None:
                side.close()

    # ------------------------------------------------------------ executor

    async def _run(self, conn: Any, query: str, args: Any, rows: int) -> Any:
        """Execute and read: ``rows`` 0 = the affected count, 1 = one row, 2 = every row."""
        try:
            cur = await conn.cursor()
            count = await cur.execute(query, args or None)
            if rows == 0:
                return int(count)
            if rows == 1:
                return await cur.fetchone()
            return list(await cur.fetchall())
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    async def execute(self, conn: Any, query: str, args: Sequence[Any]) -> int:
        result: int = await self._run(conn, query, args, 0)
        return result

    async def executemany(self, conn: Any, query: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``query`` for each row; an ``INSERT ... VALUES`` becomes multi-row inserts
        (aiomysql batches up to its ``max_stmt_length``). Returns the affected row count."""
        try:
            cur = await conn.cursor()
            count = await cur.executemany(query, rows if isinstance(rows, Sequence) else list(rows))
            return int(count or 0)
        except BaseException as exc:
            self._note_failure(conn, exc)
            raise

    async def fetch_all(self, conn: Any, query: str, args: Sequence[Any]) -> list[Any]:
        result: list[Any] = await self._run(conn, query, args, 2)
        return result

    async def fetch_one(self, conn: Any, query: str, args: Sequence[Any]) -> Any:
        return await self._run(conn, query, args, 1)

    async def fetch_value(self, conn: Any, query: str, args: Sequence[Any]) -> Any:
        return _first(await self._run(conn, query, args, 1))

    async def begin(self, conn: Any, isolation: str | None = None, readonly: bool = False) -> None:
        for statement in begin_statements(isolation, readonly):
            await self._run(conn, statement, (), 0)

    async def commit(self, conn: Any) -> None:
        await self._run(conn, "COMMIT", (), 0)

    async def rollback(self, conn: Any) -> None:
        await self._run(conn, "ROLLBACK", (), 0)
