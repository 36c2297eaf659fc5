"""tidepool: database connection pools for asyncio and threads.

``AsyncPool`` and ``Pool`` share one I/O-free core; adapters connect them to SQLite (built
in) and, through optional extras, to other databases. Any client works through a manager.
"""

from __future__ import annotations

from ._async.pool import AsyncLease, AsyncPool
from ._config import Options
from ._core.stats import PoolStats
from ._sync.pool import Lease, Pool
from .errors import (
    ConfigError,
    ConnectError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
)
from .events import PoolListener
from .manager import AsyncExecutor, AsyncManager, Executor, Manager

__all__ = [
    "AsyncExecutor",
    "AsyncLease",
    "AsyncManager",
    "AsyncPool",
    "ConfigError",
    "ConnectError",
    "Executor",
    "Lease",
    "Manager",
    "Options",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolListener",
    "PoolStats",
    "PoolTimeout",
    "TooManyWaiters",
]

__version__ = "0.1.0"

for _name in ("AsyncLease", "AsyncPool", "Lease", "Options", "Pool", "PoolStats"):
    globals()[_name].__module__ = "tidepool"
del _name
