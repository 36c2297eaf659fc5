"""What the PostgreSQL adapters share: the target (URL + ``PG*`` environment), the session
reset, transaction SQL, credential providers and error classes.

The URL is parsed and validated here, at construction, so that a typo fails at once with a
clear, redacted message instead of inside a background connect loop (psycopg_pool's failure).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._url import Secret, parse_url
from ..errors import ConfigError
from ._errors import forget_locals

__all__ = [
    "DISCONNECT_SQLSTATES",
    "PROBE_QUERY",
    "RESET_DEALLOCATING_SQL",
    "RESET_SQL",
    "PGTarget",
    "begin_sql",
    "forget_locals",
    "is_disconnect_sqlstate",
    "next_probe_name",
    "probe_reset_sql",
    "reset_script",
    "resolve_credentials",
    "wants_deallocate",
]

# libpq connection parameters a URL may carry (https://www.postgresql.org/docs/current/
# libpq-connect.html#LIBPQ-PARAMKEYWORDS), minus those the URL's own parts spell.
LIBPQ_PARAMS = (
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
)
TIDEPOOL_PARAMS = ("pgbouncer",)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# The variables libpq reads, with the parameter each one stands for.
ENV_PARAMS = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGDATABASE": "dbname",
    "PGUSER": "user",
    "PGPASSFILE": "passfile",
    "PGOPTIONS": "options",
    "PGAPPNAME": "application_name",
    "PGSSLMODE": "sslmode",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCRL": "sslcrl",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
    "PGSERVICE": "service",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# A session as if freshly connected, in one round trip, keeping the driver's own prepared
# statements (protocol-level ones have from_sql = false): RESET ALL alone misses the role and
# the session authorization (both GUC_NO_RESET_ALL), temp tables, locks, LISTEN and cursors.
_RESET_STEPS = """\
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
DISCARD TEMP;
DISCARD SEQUENCES;"""

# SQL-level prepared statements (PREPARE) must go, the driver's own must stay (its statement
# cache). Deallocating them one by one takes a PL/pgSQL block, which costs the server more
# than the rest of the reset together; they are rare, so the reset first only asks whether
# there are any, cheaply: this statement fails (and, the script being one implicit
# transaction, undoes the whole reset) only if one exists. The adapter then runs
# RESET_DEALLOCATING_SQL instead: a second round trip, for that rare case only. (The function
# rather than the pg_prepared_statements view over it: the same rows, one plan step less.)
DEALLOCATE_MARKER = "tidepool: deallocate"
PROBE_QUERY = (
    f"SELECT ('{DEALLOCATE_MARKER} ' || name)::int FROM pg_prepared_statement() "
    "WHERE from_sql LIMIT 1"
)
_PREPARED_PROBE = f"{PROBE_QUERY};"
_DEALLOCATE_SQL = """\
DO $tidepool_reset$ DECLARE s text; BEGIN
  FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP
    EXECUTE 'DEALLOCATE ' || quote_ident(s);
  END LOOP;
END $tidepool_reset$;"""

RESET_SQL = f"{_RESET_STEPS}\n{_PREPARED_PROBE}"
RESET_DEALLOCATING_SQL = f"{_RESET_STEPS}\n{_DEALLOCATE_SQL}"


_probe_names = itertools.count(1)


def next_probe_name() -> str:
    """A name for one more prepared reset probe: new for each, since a driver may close a
    statement it dropped by name, later, and that must not close a newer one."""
    return f"tidepool_reset_probe_{next(_probe_names)}"


def probe_reset_sql(statement: str) -> str:
    """:data:`RESET_SQL` for a session where :data:`PROBE_QUERY` is already prepared, at the
    protocol level, as ``statement``: the probe is planned once per connection instead of
    on every reset, where planning it cost the server about as much as the rest of the
    reset. (SQL-level ``EXECUTE`` runs protocol-level statements too, and they are not
    ``from_sql``, so the probe never reports itself.) If the borrower deallocated it
    (``DEALLOCATE ALL``, ``DISCARD ALL``), the script fails with SQLSTATE 26000 and undoes
    itself, like the probe failing."""
    return f"{_RESET_STEPS}\nEXECUTE {statement};"


def reset_script(reset_sql: str, baseline: str | None) -> str:
    """``reset_sql`` followed by the session's :data:`BASELINE_SQL` restore, if it has one, so
    that both run in one round trip; ``""`` when there is no reset to run."""
    return f"{reset_sql}\n{baseline}" if reset_sql and baseline else reset_sql


def wants_deallocate(error: BaseException) -> bool:
    """Whether a failed :data:`RESET_SQL` only says SQL-level prepared statements exist (run
    :data:`RESET_DEALLOCATING_SQL` then)."""
    return DEALLOCATE_MARKER in str(error)


# What on_connect made of a new session, as SQL that restores it: run after RESET_SQL in the
# same round trip, so a borrower always finds the post-on_connect baseline (STATE-2). Covers
# settings changed with SET / set_config and the role; custom "app.x" placeholders are not
# listed in pg_settings, so set those per borrow or at the role/database level.
BASELINE_SQL = """SELECT concat_ws(E'\\n',
  (SELECT string_agg(format('SELECT set_config(%L, %L, false);', name, setting), E'\\n')
     FROM pg_settings WHERE source = 'session'),
  CASE WHEN current_user <> session_user THEN format('SET ROLE %I;', current_user) END)"""

# SQLSTATEs meaning "this server session is gone": connection exceptions (class 08),
# admin_shutdown (a terminated backend, or a fast shutdown), crash_shutdown, cannot_connect_now.
DISCONNECT_SQLSTATES = ("57P01", "57P02", "57P03")

# SQLSTATEs worth retrying while connecting: too_many_connections, cannot_connect_now.
TRANSIENT_CONNECT_SQLSTATES = ("53300", "57P03")


def is_disconnect_sqlstate(sqlstate: str | None) -> bool:
    """Whether ``sqlstate`` says the server session is gone."""
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in DISCONNECT_SQLSTATES)


_ISOLATION = {
    "serializable": "SERIALIZABLE",
    "repeatable_read": "REPEATABLE READ",
    "read_committed": "READ COMMITTED",
    "read_uncommitted": "READ UNCOMMITTED",
}


def begin_sql(
    isolation: str | None = None, readonly: bool = False, deferrable: bool = False
) -> str:
    """``BEGIN`` with the requested characteristics.

    Raises:
        ValueError: an unknown isolation level.
    """
    parts = ["BEGIN"]
    if isolation is not None:
        key = isolation.lower().replace(" ", "_")
        if key not in _ISOLATION:
            raise ValueError(f"isolation must be one of {', '.join(_ISOLATION)}, got {isolation!r}")
        parts.append(f"ISOLATION LEVEL {_ISOLATION[key]}")
    if readonly:
        parts.append("READ ONLY")
    if deferrable:
        parts.append("DEFERRABLE")
    return " ".join(parts)


@dataclass(frozen=True)
class PGTarget:
    """A PostgreSQL target: libpq parameters (URL over environment), validated.

    ``params`` holds every parameter as libpq spells it, except the password, which is a
    :class:`~tidepool._url.Secret` in ``password``. ``hosts`` and ``ports`` are the host list
    (several for failover, with ``target_session_attrs``).
    """

    params: dict[str, str]
    password: Secret | None = field(default=None, repr=False)
    driver: str | None = None
    pgbouncer: bool = False
    display: str = ""

    def __repr__(self) -> str:
        return f"PGTarget({self.display!r})"

    @property
    def hosts(self) -> list[str]:
        return self.params["host"].split(",") if "host" in self.params else []

    @property
    def ports(self) -> list[int]:
        return [int(p) for p in self.params["port"].split(",")] if "port" in self.params else []

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> PGTarget:
        """Parse ``postgresql[+driver]://user:password@host:port,host2:port2/dbname?key=value``.

        Raises:
            ConfigError: unknown scheme, driver or parameter (with a suggestion), bad port,
                sslmode, target_session_attrs or connect_timeout, in the URL or in a ``PG*``
                variable (named in the message). The password never appears in a message.
        """
        env = os.environ if env is None else env
        parsed = parse_url(url)
        redacted = parsed.redacted
        if parsed.scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"unsupported scheme {parsed.scheme!r} for PostgreSQL in {redacted!r} "
                "(expected postgresql:// or postgres://)"
            )
        if parsed.driver not in (None, "asyncpg", "psycopg"):
            raise ConfigError(
                f"unknown PostgreSQL driver {parsed.driver!r} in {redacted!r} "
                "(expected postgresql+asyncpg:// or postgresql+psycopg://)"
            )
        from_url: dict[str, str] = {}
        if parsed.hosts:
            names = [h for h, _ in parsed.hosts]
            if any(names):
                from_url["host"] = ",".join(names)
            ports = [str(p) if p is not None else "" for _, p in parsed.hosts]
            if any(ports):
                from_url["port"] = ",".join(p or "5432" for p in ports)
        if parsed.path:
            from_url["dbname"] = parsed.path
        if parsed.username:
            from_url["user"] = parsed.username
        pgbouncer = False
        password = parsed.password
        for key, value in parsed.query.items():
            if key == "pgbouncer":
                pgbouncer = _bool_param(key, value, redacted)
                continue
            if key not in LIBPQ_PARAMS:
                close = difflib.get_close_matches(key, LIBPQ_PARAMS + TIDEPOOL_PARAMS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown PostgreSQL URL parameter {key!r} in {redacted!r}{hint}")
            if key == "password":
                password = Secret(value)
                continue
            from_url[key] = _check_param(key, value, f"URL {redacted!r}")
        # The environment fills what the URL leaves out, and only that is checked: like libpq,
        # a variable for a parameter the URL sets is never read.
        params: dict[str, str] = {}
        for var, key in ENV_PARAMS.items():
            env_value = env.get(var)
            if env_value and key not in from_url:
                params[key] = _check_param(key, env_value, f"environment variable {var}")
        params.update(from_url)
        if password is None and env.get("PGPASSWORD"):
            password = Secret(env["PGPASSWORD"])
        display = _display(params)
        return cls(
            params=params,
            password=password,
            driver=parsed.driver,
            pgbouncer=pgbouncer,
            display=display,
        )


def _display(params: Mapping[str, str]) -> str:
    """The target as a short URL without secrets, for names and messages."""
    user = params.get("user", "")
    hosts = params.get("host", "").split(",")
    ports = params.get("port", "").split(",")
    where = ",".join(
        f"{h or 'localhost'}{':' + p if p else ''}"
        for h, p in zip(hosts, ports + [""] * len(hosts), strict=False)
    )
    return f"postgresql://{user + '@' if user else ''}{where}/{params.get('dbname', '')}"


def _bool_param(key: str, value: str, where: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"PostgreSQL URL parameter {key} must be true or false, got {value!r}")


def _check_param(key: str, value: str, where: str) -> str:
    """Validate one libpq parameter; ``where`` names its source for the message."""
    if key == "port":
        for part in value.split(","):
            if not part.isdigit() or not 1 <= int(part) <= 65535:
                raise ConfigError(f"invalid port {part!r} in {where} (must be an integer 1-65535)")
    elif key == "sslmode" and value not in SSLMODES:
        raise ConfigError(
            f"invalid sslmode {value!r} in {where} (expected one of {', '.join(SSLMODES)})"
        )
    elif key == "target_session_attrs" and value not in SESSION_ATTRS:
        raise ConfigError(
            f"invalid target_session_attrs {value!r} in {where} "
            f"(expected one of {', '.join(SESSION_ATTRS)})"
        )
    elif key == "connect_timeout" and not value.isdigit():
        raise ConfigError(
            f"invalid connect_timeout {value!r} in {where} (seconds, an integer >= 0)"
        )
    return value


CredentialSource = Any  # a mapping whose values may be callables, or a callable returning one


async def resolve_credentials(source: CredentialSource) -> dict[str, Any]:
    """Evaluate ``connect_kwargs`` for one new connection.

    ``source`` is a mapping, or a sync or async callable returning one; inside the mapping,
    ``password`` may itself be a sync or async callable (an IAM token provider, a vault
    lookup). Evaluated afresh for every connection, so rotated credentials take effect
    without restarting the pool.
    """
    kwargs = await _maybe_await(source() if callable(source) else source)
    resolved = dict(kwargs)
    password = resolved.get("password")
    if callable(password):
        resolved["password"] = await _maybe_await(password())
    return resolved


def resolve_credentials_sync(source: CredentialSource) -> dict[str, Any]:
    """The blocking counterpart of :func:`resolve_credentials` (no awaitables allowed)."""
    kwargs = source() if callable(source) else source
    if inspect.isawaitable(kwargs):
        raise TypeError("connect_kwargs returned an awaitable: use AsyncPool for async providers")
    resolved = dict(kwargs)
    password = resolved.get("password")
    if callable(password):
        resolved["password"] = password()
        if inspect.isawaitable(resolved["password"]):
            raise TypeError("the password provider is async: use AsyncPool for async providers")
    return resolved


async def _maybe_await(value: Any | Awaitable[Any]) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
