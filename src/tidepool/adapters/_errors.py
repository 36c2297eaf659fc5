"""What every adapter does with a failed connect: keep no password alive, and classify."""

from __future__ import annotations

import traceback
from collections.abc import Callable

__all__ = ["forget_locals", "scrubbed"]


def forget_locals(error: BaseException) -> None:
    """Clear the local variables of every finished frame in the tracebacks of ``error`` and
    of its causes and contexts.

    A failed connect's traceback runs through frames that held the password (the keyword
    arguments, asyncpg's ConnectionParameters, psycopg's connection attempts); the error
    outlives them as a ``PoolTimeout``'s cause, and tools that format tracebacks with their
    locals (Sentry, debuggers, ``traceback`` with ``capture_locals``) would print it.
    """
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def scrubbed(failure: Exception, classify: Callable[[Exception], Exception]) -> Exception:
    """The error to raise for a failed connect: the password-holding frames cleared, then
    ``classify`` decides (the failure itself, retried as transient, or a ``ConnectError``
    chained to it)."""
    forget_locals(failure)
    error = classify(failure)
    if error is not failure:
        error.__cause__ = failure
    return error
