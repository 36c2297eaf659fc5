"""Pool options: one frozen, validated object.

Every option is checked when the pool is constructed, before any I/O. A bad value raises
:class:`~tidepool.ConfigError` (a ``ValueError``) or ``TypeError`` naming the option, the value
and what is allowed; an unknown option name is a ``TypeError`` suggesting the closest known one.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["CheckPolicy", "Options", "reject_unknown_options", "validate_timeout"]

CheckPolicy = Literal["always", "never", "idle"]
_CHECK_POLICIES: tuple[CheckPolicy, ...] = ("always", "never", "idle")


def _type_name(value: object) -> str:
    return type(value).__name__


def _require_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_type_name(value)} {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {value})")
    return value


def validate_timeout(
    name: str, value: object, *, allow_none: bool, allow_zero: bool
) -> float | None:
    """Check a duration in seconds; return it as a float (or ``None``).

    Raises:
        TypeError: not a number (``bool`` is refused too).
        ConfigError: negative, zero where zero is not allowed, NaN or infinite.
    """
    none_hint = " or None" if allow_none else ""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number (seconds){none_hint}, got {_type_name(value)} {value!r}"
        )
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        forever = " (use None for no limit)" if allow_none else ""
        raise ConfigError(f"{name} must be a finite number of seconds{forever}, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}{none_hint} (got {value!r})")
    return seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The validated options of one pool (``pool.options``).

    Attributes:
        max_size: hard cap on open connections, counting those being created.
        min_size: floor of open connections, kept by background work.
        acquire_timeout: one deadline (s) over waiting + connecting + checking; ``0`` means
            never wait; ``None`` means wait forever.
        connect_timeout: bound (s) on one connection attempt, and on one check, reset or
            close of a connection.
        idle_timeout: close connections idle longer than this, down to ``min_size``.
        max_lifetime: retire connections older than this (with up to 5 % negative jitter).
        check: liveness check before lending: ``"always"``, ``"never"``, or ``"idle"`` (only
            when the connection was idle longer than ``check_idle_after``).
        check_idle_after: idle time (s) after which ``check="idle"`` checks a connection.
        reset: restore a clean session when a connection comes back.
        max_waiting: cap on queued acquirers; past it ``TooManyWaiters`` at once.
        max_connecting: cap on connection attempts in flight at once.
        leak_timeout: warn, with the borrower's stack, when a connection stays lent longer.
        slow_acquire: log a WARNING when one acquire takes longer than this (s); ``None``: never.
        name: the pool's name in logs, metrics and errors.
        on_connect: sync or async callable run on each new connection.
        connect_kwargs: passed to the driver's connect as is (URL targets only).
        listeners: objects receiving pool events (see :class:`tidepool.PoolListener`).
    """

    max_size: int = 10
    min_size: int = 0
    acquire_timeout: float | None = 30.0
    connect_timeout: float = 10.0
    idle_timeout: float | None = 600.0
    max_lifetime: float | None = 1800.0
    check: CheckPolicy = "idle"
    check_idle_after: float = 0.5
    reset: bool = True
    max_waiting: int | None = None
    max_connecting: int = 2
    leak_timeout: float | None = None
    slow_acquire: float | None = 1.0
    name: str | None = None
    on_connect: Callable[[Any], Any] | None = None
    connect_kwargs: Mapping[str, Any] | Callable[[], Any] = field(default_factory=dict)
    listeners: Sequence[Any] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _require_int("max_size", self.max_size, 1)
        _require_int("min_size", self.min_size, 0)
        if self.min_size > self.max_size:
            raise ConfigError(f"min_size ({self.min_size}) must be <= max_size ({self.max_size})")
        set_(
            self,
            "acquire_timeout",
            validate_timeout(
                "acquire_timeout", self.acquire_timeout, allow_none=True, allow_zero=True
            ),
        )
        set_(
            self,
            "connect_timeout",
            validate_timeout(
                "connect_timeout", self.connect_timeout, allow_none=False, allow_zero=False
            ),
        )
        set_(
            self,
            "idle_timeout",
            validate_timeout("idle_timeout", self.idle_timeout, allow_none=True, allow_zero=False),
        )
        set_(
            self,
            "max_lifetime",
            validate_timeout("max_lifetime", self.max_lifetime, allow_none=True, allow_zero=False),
        )
        set_(
            self,
            "check_idle_after",
            validate_timeout(
                "check_idle_after", self.check_idle_after, allow_none=False, allow_zero=True
            ),
        )
        set_(
            self,
            "leak_timeout",
            validate_timeout("leak_timeout", self.leak_timeout, allow_none=True, allow_zero=False),
        )
        set_(
            self,
            "slow_acquire",
            validate_timeout("slow_acquire", self.slow_acquire, allow_none=True, allow_zero=False),
        )
        if self.check not in _CHECK_POLICIES:
            raise ConfigError(
                f"check must be one of 'always', 'never', 'idle' (got {self.check!r})"
            )
        if not isinstance(self.reset, bool):
            raise TypeError(f"reset must be a bool, got {_type_name(self.reset)} {self.reset!r}")
        if self.max_waiting is not None:
            _require_int("max_waiting", self.max_waiting, 0)
            if self.max_waiting == 0:
                # psycopg_pool reads 0 as "no limit"; here it would refuse even the caller
                # waiting for the pool's first connection.
                raise ConfigError(
                    "max_waiting must be >= 1, or None for no limit (got 0); to never wait "
                    "for a connection, use acquire_timeout=0"
                )
        _require_int("max_connecting", self.max_connecting, 1)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(
                f"name must be a non-empty str, got {_type_name(self.name)} {self.name!r}"
            )
        if self.on_connect is not None and not callable(self.on_connect):
            raise TypeError(
                f"on_connect must be a callable taking the new connection, "
                f"got {_type_name(self.on_connect)} {self.on_connect!r}"
            )
        if isinstance(self.connect_kwargs, Mapping):
            set_(self, "connect_kwargs", MappingProxyType(dict(self.connect_kwargs)))
        elif not callable(self.connect_kwargs):
            raise TypeError(
                f"connect_kwargs must be a mapping of driver keyword arguments (or a callable "
                f"returning one, evaluated per connection), got {_type_name(self.connect_kwargs)}"
            )
        if isinstance(self.listeners, (str, bytes)) or not isinstance(self.listeners, Sequence):
            raise TypeError(
                f"listeners must be a sequence of listener objects, "
                f"got {_type_name(self.listeners)}"
            )
        set_(self, "listeners", tuple(self.listeners))
        if (
            self.idle_timeout is not None
            and self.max_lifetime is not None
            and self.idle_timeout >= self.max_lifetime
        ):
            warnings.warn(
                f"idle_timeout ({self.idle_timeout:g} s) >= max_lifetime "
                f"({self.max_lifetime:g} s): connections retire by lifetime before they can "
                "idle out, so idle_timeout has no effect",
                UserWarning,
                stacklevel=5,  # the line that constructed the pool
            )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name != "connect_kwargs"
        )
        # Driver keyword arguments may hold a password: show only their names.
        kwargs = self.connect_kwargs
        names = ", ".join(sorted(kwargs)) if isinstance(kwargs, Mapping) else "callable"
        return f"Options({shown}, connect_kwargs=<{names}>)"


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))


# Other pools' names for our options (psycopg_pool, asyncpg, SQLAlchemy, HikariCP): someone
# moving over types the name they know, and a spelling match would suggest the wrong option.
PEER_OPTION_NAMES: Mapping[str, str] = {
    "timeout": "acquire_timeout",
    "pool_timeout": "acquire_timeout",
    "connection_timeout": "acquire_timeout",
    "max_idle": "idle_timeout",
    "max_inactive_connection_lifetime": "idle_timeout",
    "idle_timeout_ms": "idle_timeout",
    "pool_recycle": "max_lifetime",
    "max_lifetime_ms": "max_lifetime",
    "pool_size": "max_size",
    "maxsize": "max_size",
    "minsize": "min_size",
    "max_overflow": "max_size",
    "pool_pre_ping": "check",
    "reset_on_return": "reset",
    "pool_reset_on_return": "reset",
    "configure": "on_connect",
    "init": "on_connect",
    "setup": "on_connect",
    "kwargs": "connect_kwargs",
    "connect_args": "connect_kwargs",
    "num_workers": "max_connecting",
    "leak_detection_threshold": "leak_timeout",
}


def reject_unknown_options(owner: str, unknown: Mapping[str, object]) -> None:
    """Raise ``TypeError`` for the first unknown option, suggesting the closest known name
    (or ours for another pool's name of it)."""
    for key in unknown:
        peer = PEER_OPTION_NAMES.get(key)
        close = [peer] if peer else difflib.get_close_matches(key, OPTION_NAMES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(OPTION_NAMES)
        raise TypeError(f"{owner}() got an unknown option {key!r}{hint} (known options: {known})")
