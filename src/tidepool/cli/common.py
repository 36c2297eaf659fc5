"""What the ``tidepool`` subcommands share: exit codes, one-line connect failures, progress
and colour on terminals.

Exit codes (documented in ``tidepool bench --help`` and ``tidepool check --help``):

====  ==========================================================================
0     success (``check``: the database is reachable)
1     failure not covered below (the benchmark could not run, an unexpected error)
2     bad arguments or a URL that cannot be used
3     connection refused, or the host cannot be resolved or reached
4     authentication failed (password, role or pg_hba.conf)
5     TLS failed (required but refused, certificate not trusted, missing files)
6     timed out (connecting, or the server did not answer)
7     the database does not exist
130   interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from ..errors import ConfigError, PoolTimeout

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_TLS",
    "EXIT_UNKNOWN_DATABASE",
    "EXIT_USAGE",
    "CommandError",
    "Progress",
    "classify_connect_error",
    "color_enabled",
    "connect_failure",
    "paint",
    "scrub",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_AUTH = 4
EXIT_TLS = 5
EXIT_TIMEOUT = 6
EXIT_UNKNOWN_DATABASE = 7
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    other failure (the run could not complete)
  2    bad arguments or an unusable URL
  3    connection refused, or host unknown / unreachable
  4    authentication failed
  5    TLS failed
  6    timed out
  7    unknown database
  130  interrupted"""


class CommandError(Exception):
    """A failure to report as one line on stderr with an exit code; never a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` on one line, with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_AUTH_SQLSTATES = ("28000", "28P01")
_DB_SQLSTATES = ("3D000",)


def classify_connect_error(exc: BaseException) -> tuple[int, str]:
    """The exit code and a short reason (without the driver's text) for a failed connect."""
    chain = _chain(exc)
    if isinstance(exc, (TimeoutError, PoolTimeout)) and not isinstance(exc, ConnectionError):
        return EXIT_TIMEOUT, "timed out"
    texts = " | ".join(str(e) for e in chain).lower()
    for error in chain:
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate in _AUTH_SQLSTATES:
            return EXIT_AUTH, "authentication failed"
        if sqlstate in _DB_SQLSTATES:
            return EXIT_UNKNOWN_DATABASE, "unknown database"
        if sqlstate == "53300":
            return EXIT_FAILURE, "too many connections"
    if (
        "password authentication failed" in texts
        or "no password supplied" in texts
        or ("authentication" in texts and "failed" in texts)
    ):
        return EXIT_AUTH, "authentication failed"
    if "no pg_hba.conf entry" in texts or ("role" in texts and "does not exist" in texts):
        return EXIT_AUTH, "authentication failed"
    if "database" in texts and "does not exist" in texts:
        return EXIT_UNKNOWN_DATABASE, "unknown database"
    if any(isinstance(e, socket.gaierror) for e in chain) or (
        "could not translate host name" in texts or "name or service not known" in texts
    ):
        return EXIT_REFUSED, "unknown host"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or (
        "refused" in texts or "connect call failed" in texts
    ):
        return EXIT_REFUSED, "connection refused"
    if any(isinstance(e, ssl.SSLError) for e in chain) or any(
        word in texts for word in ("ssl", "tls", "certificate")
    ):
        return EXIT_TLS, "TLS failed"
    if any(isinstance(e, (TimeoutError, PoolTimeout)) for e in chain) or "timeout" in texts:
        return EXIT_TIMEOUT, "timed out"
    if "unreachable" in texts or "no route to host" in texts:
        return EXIT_REFUSED, "host unreachable"
    if any(isinstance(e, ConfigError) for e in chain):
        return EXIT_USAGE, "invalid connection settings"
    if any(isinstance(e, (ConnectionError, OSError)) for e in chain):
        return EXIT_REFUSED, "connection failed"
    return EXIT_FAILURE, "connection failed"


def connect_failure(exc: BaseException, where: str, secrets: Iterable[str | None]) -> CommandError:
    """A :class:`CommandError` for a failed connect to ``where`` (already redacted)."""
    code, reason = classify_connect_error(exc)
    root = _chain(exc)[-1]
    detail = str(root) or type(root).__name__
    if code == EXIT_TIMEOUT and isinstance(exc, TimeoutError):
        detail = "no answer in time"
    message = scrub(f"cannot connect to {where}: {reason} ({detail})", secrets)
    return CommandError(message, code)


def color_enabled(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set or ``TERM=dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, code: str, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled else text


class Progress:
    """A live progress line on stderr, only when stderr is a terminal (stdout stays clean).

    ``start`` begins a step, ``update`` rewrites its line in place (at most every 0.1 s),
    ``done`` ends it with a result. With ``NO_COLOR`` the line has no colour.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        try:
            self.enabled = self._stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self._color = self.enabled and color_enabled(self._stream)
        self._label = ""
        self._last = 0.0

    def _write(self, text: str, end: str = "") -> None:
        self._stream.write(f"\r\x1b[2K{text}{end}")
        self._stream.flush()

    def start(self, label: str) -> None:
        self._label = label
        if self.enabled:
            self._write(f"{label} ...")

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._write(f"{self._label} ... {paint(text, '2', self._color)}")

    def done(self, text: str = "done") -> None:
        if self.enabled:
            self._write(f"{self._label} ... {text}", "\n")
