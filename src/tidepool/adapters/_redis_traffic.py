"""What a borrower did on a pooled Redis connection, counted as it happens, so that the reset
can be skipped when it provably has nothing to undo.

A Redis connection's session state (selected database, ``MULTI`` / ``WATCH``, pub/sub,
``MONITOR``, client tracking, reply mode, name, login, protocol, cluster read mode) changes only
through a closed set of commands: the ones ``RESET`` exists to undo, plus ``CLIENT``, ``HELLO``
and ``AUTH`` (scripts cannot run them, and since Redis 2.8.12 a ``SELECT`` inside a script does
not reach the caller). So a lease is known clean when it wrote none of those commands and read
exactly one reply per command written: the next reply on the stream then belongs to the next
command, and the session is as the last reset (or the connect) left it.

Counting happens inside redis-py, where every command on the connection passes whatever API the
borrower used (client methods, ``execute_command``, ``connection.send_command`` /
``read_response``): writes where a command is packed, reads where the parser returns a reply. A
reply that did not arrive (a read that timed out, was cancelled or failed) is not counted, so the
counts disagree and the full reset runs, or redis-py has already dropped the connection. Bytes
written past redis-py's packer (``send_packed_command`` with hand-made bytes) are not seen; a
borrower doing that should give the connection back with ``release(conn, discard=True)``.
Module commands are taken as leaving the session alone, as those of Redis Stack do.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["SESSION_COMMANDS", "Traffic", "changes_session", "settle", "untouched", "watch"]

SESSION_COMMANDS = frozenset(
    {
        *("SELECT", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"),
        *("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"),
        *("UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"),
        *("CLIENT", "HELLO", "AUTH", "RESET", "QUIT", "MONITOR"),
        *("READONLY", "READWRITE", "ASKING", "SYNC", "PSYNC", "REPLCONF"),
    }
)

# Verdicts by command name exactly as given (redis-py passes constant names such as "GET" or
# "CLIENT SETNAME"), so that the common case is one dictionary lookup.
_verdicts: dict[Any, bool] = {}
_MAX_VERDICTS = 1024


def changes_session(name: Any) -> bool:
    """Whether a command whose first argument is ``name`` (``str`` or ``bytes``, any case,
    possibly carrying its subcommand: ``"CLIENT SETNAME"``) may change the session. Anything
    that is not a readable command name counts as a change."""
    try:
        return _verdicts[name]
    except (KeyError, TypeError):
        pass
    if isinstance(name, bytes):
        word = name.decode("ascii", "replace")
    elif isinstance(name, str):
        word = name
    else:
        return True
    parts = word.split(None, 1)
    verdict = not parts or parts[0].upper() in SESSION_COMMANDS
    if len(_verdicts) < _MAX_VERDICTS:
        _verdicts[name] = verdict
    return verdict


class Traffic:
    """The counts of one connection since its session was last known clean."""

    __slots__ = ("pending", "touched")

    def __init__(self) -> None:
        self.pending = 0  # commands written minus replies read
        self.touched = False  # a command that may change the session was written

    def wrote(self, args: tuple[Any, ...]) -> None:
        self.pending += 1
        if not self.touched and (not args or changes_session(args[0])):
            self.touched = True

    @property
    def clean(self) -> bool:
        """Nothing to undo: no session command, and every reply read."""
        return self.pending == 0 and not self.touched

    def settle(self) -> None:
        """The session is clean again (after a reset)."""
        self.pending = 0
        self.touched = False


class _CountingPacker:
    """The sync connection's command packer, counting what it packs."""

    __slots__ = ("_packer", "_traffic")

    def __init__(self, packer: Any, traffic: Traffic) -> None:
        self._packer = packer
        self._traffic = traffic

    def pack(self, *args: Any) -> Any:
        self._traffic.wrote(args)
        return self._packer.pack(*args)


def _counting_pack_command(base: type) -> Any:
    """An async connection's ``pack_command`` that counts what it packs (redis.asyncio packs
    every command, pipelines included, through it)."""
    pack_command = base.pack_command  # type: ignore[attr-defined]

    def counting(self: Any, *args: Any) -> Any:
        self._tidepool_traffic.wrote(args)
        return pack_command(self, *args)

    return counting


def _counting_read_response(base: type) -> Any:
    """A parser's ``read_response`` that counts each reply it returns."""
    read_response = base.read_response  # type: ignore[attr-defined]
    if inspect.iscoroutinefunction(read_response):

        async def counting_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            reply = await read_response(self, *args, **kwargs)
            self._tidepool_traffic.pending -= 1
            return reply

        return counting_async

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = read_response(self, *args, **kwargs)
        self._tidepool_traffic.pending -= 1
        return reply

    return counting


_subclasses: dict[tuple[type, str], type] = {}


def _count_calls(obj: Any, method: str, make: Any) -> None:
    """Make ``obj`` an instance of a subclass of its class whose ``method`` is ``make(class)``
    (one subclass per class and method; an added mixin base would change the layout)."""
    base = type(obj)
    cls = _subclasses.get((base, method))
    if cls is None:
        namespace = {"__slots__": (), method: make(base)}
        cls = _subclasses[(base, method)] = type(f"Counting{base.__name__}", (base,), namespace)
    obj.__class__ = cls


def watch(raw: Any) -> Traffic | None:
    """Start counting the traffic of ``raw``, a connected redis-py connection of either
    flavour, whose session is clean now. Returns its :class:`Traffic`, also kept as
    ``raw._tidepool_traffic``; ``None`` when this connection has nowhere to count (another
    redis-py layout, a client-side cache proxy), and the reset then always runs."""
    parser: Any = getattr(raw, "_parser", None)
    reader = getattr(parser, "read_response", None)
    if reader is None or not hasattr(parser, "__dict__") or not hasattr(raw, "__dict__"):
        return None
    is_async = inspect.iscoroutinefunction(reader)
    packer = None if is_async else getattr(raw, "_command_packer", None)
    if not callable(
        getattr(raw, "pack_command", None) if is_async else getattr(packer, "pack", None)
    ):
        return None
    traffic = Traffic()
    parser_class = type(parser)
    try:
        _count_calls(parser, "read_response", _counting_read_response)
        if is_async:
            _count_calls(raw, "pack_command", _counting_pack_command)
    except TypeError:  # a class that cannot take a subclass: leave the connection as it was
        parser.__class__ = parser_class
        return None
    if not is_async:
        raw._command_packer = _CountingPacker(packer, traffic)
    # Nothing is sent or read between the swaps above and here: this is one step.
    parser._tidepool_traffic = traffic
    raw._tidepool_traffic = traffic
    return traffic


def untouched(raw: Any) -> bool:
    """Whether ``raw`` is counted and its session has nothing to undo."""
    traffic: Traffic | None = getattr(raw, "_tidepool_traffic", None)
    return traffic is not None and traffic.clean


def settle(raw: Any) -> None:
    """After a successful reset of ``raw``: its session is clean again."""
    traffic: Traffic | None = getattr(raw, "_tidepool_traffic", None)
    if traffic is not None:
        traffic.settle()
