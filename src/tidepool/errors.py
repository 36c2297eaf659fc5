"""The exceptions tidepool raises.

Every error the pool itself raises is a :class:`PoolError`. Errors raised by the driver while
your code holds a connection pass through untouched: the pool only decides whether that
connection can be lent again.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ConfigError",
    "ConnectError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyWaiters",
]

TimeoutPhase = Literal["wait", "connect", "check"]


class PoolError(Exception):
    """Root of every error the pool raises."""


class PoolClosed(PoolError):
    """The pool was closed by *your* code (``close()`` / ``aclose()``).

    Raised by ``acquire()`` after close started, and delivered to callers that were waiting
    when it did. A server going away is not this error: that shows up as a driver error or as a
    :class:`PoolTimeout` whose ``__cause__`` is the last connect error.
    """


class PoolTimeout(PoolError, TimeoutError):
    """No connection could be lent before the acquire deadline.

    ``phase`` says where the time went: ``"wait"`` (every connection was lent and none came
    back), ``"connect"`` (the pool was opening a connection for you and could not in time; the
    last connect error, if any, is ``__cause__``) or ``"check"`` (the liveness check of an idle
    connection did not finish in time). The message carries the pool's counts at that moment.
    It is also a :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """

    def __init__(self, message: str, *, phase: TimeoutPhase) -> None:
        super().__init__(message)
        self.phase: TimeoutPhase = phase


class TooManyWaiters(PoolError):
    """``max_waiting`` callers are already queued; this one was refused at once."""


class ConnectError(PoolError):
    """A permanent connect failure (bad password, unknown database, bad configuration).

    The driver's error is ``__cause__``. The pool does not retry these: waiting callers fail at
    once. A manager raises this to say "retrying will not help"; any other exception from
    ``connect()`` is treated as transient and retried with backoff inside the caller's deadline.
    """


class ConfigError(PoolError, ValueError):
    """An option or URL is invalid. Raised at construction, before any I/O.

    The message names the option, the value (with any password redacted) and what is allowed.
    """


for _cls in (PoolError, PoolClosed, PoolTimeout, TooManyWaiters, ConnectError, ConfigError):
    _cls.__module__ = "tidepool"
