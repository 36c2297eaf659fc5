"""Database URL parsing and redaction.

Every URL that may appear in a message, a log record or a repr goes through :func:`redact_url`
first; a parse error never echoes the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from .errors import ConfigError

__all__ = ["ParsedURL", "Secret", "parse_url", "redact_url"]

_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|credential|key$", re.IGNORECASE)
_SECRET_KEYWORD = re.compile(
    r"\b(\w*(?:pass|secret|token|credential)\w*)\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9.+-]*)://")


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never shows itself in ``repr()`` or ``str()``."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A database URL split into parts; ``password`` is a :class:`Secret`."""

    scheme: str
    driver: str | None
    username: str | None
    password: Secret | None
    hosts: tuple[tuple[str, int | None], ...]
    path: str
    query: dict[str, str]
    redacted: str

    def __repr__(self) -> str:
        return f"ParsedURL({self.redacted!r})"


def redact_url(url: str) -> str:
    """Return ``url`` with its password and password-like query values replaced by ``***``.

    Works on malformed URLs too (it is used in error messages about them) and never raises.
    """
    match = _SCHEME.match(url)
    if match is None:
        # Not a URL: maybe a libpq "key=value" string, or a URL missing its scheme.
        text = _SECRET_KEYWORD.sub(lambda m: f"{m.group(1)}=***", url)
        if "@" in text:
            userinfo, _, host = text.rpartition("@")
            if ":" in userinfo:
                text = f"{userinfo.split(':', 1)[0]}:***@{host}"
        return text
    rest = url[match.end() :]
    # The authority ends at the first '/', '?' or '#' after the *last* '@', so a password with an
    # unescaped '@' or '/' is still hidden whole.
    at = rest.rfind("@", 0, _authority_end(rest))
    if at != -1:
        userinfo = rest[:at]
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:***@{rest[at + 1 :]}" if ":" in userinfo else rest
    base, sep, query = rest.partition("?")
    if sep:
        parts = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            parts.append(f"{key}=***" if eq and _SECRET_QUERY_KEY.search(key) else item)
        rest = base + "?" + "&".join(parts)
    return match.group(0) + rest


def _authority_end(rest: str) -> int:
    """Index where the authority part of ``rest`` (after ``scheme://``) surely ends."""
    last_at = rest.rfind("@")
    start = last_at + 1 if last_at != -1 else 0
    ends = [i for i in (rest.find(c, start) for c in "/?#") if i != -1]
    return min(ends) if ends else len(rest)


def parse_url(url: str) -> ParsedURL:
    """Split a ``scheme[+driver]://[user[:password]@]host[:port][,host2...]/path?query`` URL.

    Raises:
        ConfigError: unknown shape, unescaped reserved characters in the user info, malformed
            IPv6 host, non-numeric or out-of-range port. The message shows the URL redacted.
    """
    redacted = redact_url(url)
    match = _SCHEME.match(url)
    if match is None:
        raise ConfigError(
            f"invalid database URL {redacted!r}: expected 'scheme://...' "
            "(for example 'sqlite:///app.db' or 'postgresql://user@host/db')"
        )
    scheme, _, driver = match.group(1).lower().partition("+")
    rest = url[match.end() :]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ConfigError(f"invalid database URL {redacted!r}: a '#fragment' is not allowed")
    rest, _, query_text = rest.partition("?")
    # A password may hold an unescaped '/': the host part starts after the last '@'.
    end = _authority_end(rest)
    netloc, path = rest[:end], rest[end + 1 :]
    slash = end < len(rest)
    if netloc.count("@") > 1:
        raise ConfigError(
            f"invalid database URL {redacted!r}: the user info contains an unescaped '@'; "
            "percent-encode reserved characters in the password ('@' -> %40, ':' -> %3A, "
            "'/' -> %2F)"
        )
    userinfo, at, hostinfo = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = Secret(unquote(password_text)) if colon else None
    hosts = tuple(_parse_host(part, redacted) for part in hostinfo.split(",")) if hostinfo else ()
    query: dict[str, str] = {}
    for key, value in parse_qsl(query_text, keep_blank_values=True):
        if key in query:
            raise ConfigError(f"invalid database URL {redacted!r}: query key {key!r} is repeated")
        query[key] = value
    return ParsedURL(
        scheme=scheme,
        driver=driver or None,
        username=username,
        password=password,
        hosts=hosts,
        path=unquote(path) if slash else "",
        query=query,
        redacted=redacted,
    )


def _parse_host(text: str, redacted: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ConfigError(
                f"invalid database URL {redacted!r}: malformed IPv6 host (missing ']')"
            )
        host, port_text = text[1:end], text[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ConfigError(f"invalid database URL {redacted!r}: unexpected text after ']'")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return unquote(host), None
    if not port_text.isdigit():
        raise ConfigError(
            f"invalid port {port_text!r} in database URL {redacted!r} (must be an integer 1-65535)"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} out of range 1-65535 in database URL {redacted!r}")
    return unquote(host), port
