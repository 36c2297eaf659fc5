"""One connection's bookkeeping: age, idle time, generation, who holds it."""

from __future__ import annotations

import weakref
from collections import deque
from types import CodeType
from typing import Any, Final, Generic, TypeVar

__all__ = ["Entry", "Site", "Where", "site_location"]

C = TypeVar("C")

# Where a borrower acquired its connection: the code object and the offset of its last
# instruction, and, only with leak_timeout set, the formatted stack and the task or thread
# name. Captured without keeping frames alive. The line number is worked out only when a
# report needs it: reading frame.f_lineno on every acquire cost a tenth of a checkout.
Site = tuple[CodeType, int, str | None, str | None] | None


def site_location(site: Site) -> tuple[str, int]:
    """The ``(file, line)`` of an acquire site (``("<unknown>", 0)`` without one)."""
    if site is None:
        return "<unknown>", 0
    code, lasti = site[0], site[1]
    line = code.co_firstlineno
    for start, end, number in code.co_lines():
        if start <= lasti < end:
            line = number if number is not None else line
            break
    return code.co_filename, line


class Where:
    """Who owns an entry right now (design.md: exactly one owner at every instant)."""

    IDLE: Final = "idle"  # in the idle list
    BUSY: Final = "busy"  # a worker is checking or resetting it (counts as in_use)
    LENT: Final = "lent"  # a borrower holds it
    GONE: Final = "gone"  # retired: closed or being closed, no longer counted in size


class Entry(Generic[C]):
    """The pool's record of one open connection.

    While the connection is lent, the entry holds it only weakly (when the driver's type allows
    weak references), so that a connection dropped without release is noticed: the weak
    reference calls the entry, which queues itself on ``reclaim`` for the pool to account for.
    """

    __slots__ = (
        "conn",
        "created",
        "expires",
        "generation",
        "id",
        "idle_since",
        "leak_reported",
        "lent_since",
        "reason",
        "reclaim",
        "ref",
        "site",
        "where",
    )

    def __init__(
        self,
        conn: C,
        *,
        id: int,
        created: float,
        expires: float | None,
        generation: int,
        reclaim: deque[Entry[Any]],
    ) -> None:
        self.conn: C | None = conn
        self.id = id
        self.created = created
        self.expires = expires
        self.generation = generation
        self.idle_since = created
        self.lent_since = 0.0
        self.where = Where.BUSY
        self.reclaim = reclaim
        self.ref: weakref.ref[Any] | None = None
        self.site: Site = None
        self.leak_reported = False
        self.reason = ""  # why it was retired: idle, lifetime, broken, expired, ...

    def __call__(self, _ref: object) -> None:
        # Weak-reference callback: runs inside the garbage collector, in whatever thread
        # triggered it, so it only appends (atomic) and lets the pool do the accounting.
        self.reclaim.append(self)

    def live_conn(self) -> C | None:
        """The connection, whether held strongly or (while lent) weakly; ``None`` if collected."""
        if self.conn is not None:
            return self.conn
        ref = self.ref
        return ref() if ref is not None else None

    def site_text(self) -> str:
        """Where the connection was acquired, as ``file:line``."""
        if self.site is None:
            return "<unknown>"
        file, line = site_location(self.site)
        return f"{file}:{line}"

    def __repr__(self) -> str:
        return f"<Entry #{self.id} {self.where} gen={self.generation}>"
