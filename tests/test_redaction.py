"""A canary password must never show: not in messages, reprs, exception chains, formatted
tracebacks (with locals too), parsed URL objects or log records (reliability.md 4.1)."""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

import pytest

import tidepool
from tidepool._url import Secret, parse_url, redact_url

CANARY = "Canary-S3cret-7731"

# Every shape in which a URL may carry the secret. The tests take a key into this table, never
# the URL itself, so that no frame of the test holds the canary in a local variable.
BAD_TARGETS: dict[str, str] = {
    # user info
    "userinfo-unsupported-scheme": f"mssql://app:{CANARY}@db.example:1433/app",
    "userinfo-http": f"http://app:{CANARY}@example.com/app",
    "userinfo-bad-port": f"postgresql://app:{CANARY}@db:abc/app",
    "userinfo-port-range": f"postgresql://app:{CANARY}@db:99999/app",
    "userinfo-unescaped-at": f"postgresql://app:{CANARY}@x@db/app",
    # A valid shape since PostgreSQL is supported: an unknown parameter makes it bad.
    "userinfo-unescaped-slash": f"postgresql://app:ab/{CANARY}@db/app?no_such_option=1",
    "userinfo-bad-ipv6": f"postgresql://app:{CANARY}@[::1/app",
    # Redis URLs are supported: a non-integer database index keeps this one bad.
    "userinfo-password-only": f"redis://:{CANARY}@cache:6379/abc",
    "userinfo-sqlite": f"sqlite://app:{CANARY}@/app.db",
    "userinfo-fragment": f"postgresql://app:{CANARY}@db/app#frag",
    # query parameters
    "query-password-sqlite": f"sqlite:////tmp/tidepool-redaction.db?password={CANARY}",
    "query-password": f"postgresql://db/app?user=app&password={CANARY}&no_such_option=1",
    "query-sslpassword-sqlite": f"sqlite:////tmp/tidepool-redaction.db?sslpassword={CANARY}",
    "query-sslpassword": (
        f"postgresql://db/app?sslmode=require&sslpassword={CANARY}&no_such_option=1"
    ),
    "query-token-sqlite": f"sqlite:///tidepool-redaction.db?token={CANARY}",
    "query-token": f"redis://cache:6379/0?token={CANARY}",
    "query-uppercase-key": f"postgresql://db/app?PASSWORD={CANARY}",
    "query-auth-token": f"postgresql://db/app?auth_token={CANARY}",
    "query-client-secret": f"postgresql://db/app?client_secret={CANARY}",
    "query-and-userinfo": (
        f"postgresql://app:{CANARY}@db/app?sslpassword={CANARY}&no_such_option=1"
    ),
    # no scheme: a forgotten 'postgresql://', or a libpq keyword DSN
    "schemeless-userinfo": f"app:{CANARY}@db/app",
    "libpq-keywords": f"host=db user=app password={CANARY} dbname=app",
}

VALID_URLS: dict[str, str] = {
    "userinfo": f"postgresql://app:{CANARY}@db:5432/app",
    "userinfo-escaped": "postgresql://app:" + CANARY.replace("-", "%2D") + "%40x@db/app",
    "password-only": f"redis://:{CANARY}@cache:6379/0",
    "query-password": f"postgresql://db/app?password={CANARY}",
    "query-sslpassword": f"postgresql://db/app?sslmode=verify-full&sslpassword={CANARY}",
    "query-token": f"redis://cache/0?token={CANARY}&db=1",
    "query-secret": f"mysql://db/app?api_secret={CANARY}",
    "multi-host": f"postgresql://app:{CANARY}@h1:5432,h2:5433/app?password={CANARY}",
}

# Shapes without a scheme: their leak in messages is covered by the exception tests above;
# the log test checks logging itself on the URL shapes.
SCHEMELESS = {"schemeless-userinfo", "libpq-keywords"}

POOL_CLASSES = [tidepool.AsyncPool, tidepool.Pool]


def construction_error(pool_cls: Any, case: str) -> BaseException:
    """The exception ``pool_cls(BAD_TARGETS[case])`` raises."""
    try:
        pool_cls(BAD_TARGETS[case])
    except Exception as exc:
        return exc
    raise AssertionError(f"{pool_cls.__name__} accepted the bad target {case!r}")


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception in its ``__cause__`` / ``__context__`` chain."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__])
    return seen


def texts_of(exc: BaseException) -> list[str]:
    texts = []
    for item in chain(exc):
        texts += [str(item), repr(item), repr(item.args)]
        texts += [str(note) for note in getattr(item, "__notes__", [])]
    texts.append("".join(traceback.format_exception(exc)))
    texts.append("".join(traceback.TracebackException.from_exception(exc).format()))
    return texts


def assert_no_canary(texts: list[str]) -> None:
    for text in texts:
        assert CANARY not in text, f"the password leaked into: {text!r}"


# ---------------------------------------------------------------------- exceptions


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
@pytest.mark.parametrize("pool_cls", POOL_CLASSES, ids=["AsyncPool", "Pool"])
def test_construction_errors_never_show_the_password(pool_cls: Any, case: str) -> None:
    exc = construction_error(pool_cls, case)
    assert isinstance(exc, tidepool.ConfigError)
    assert_no_canary(texts_of(exc))


@pytest.mark.parametrize("case", sorted(set(BAD_TARGETS) - SCHEMELESS))
@pytest.mark.parametrize("pool_cls", POOL_CLASSES, ids=["AsyncPool", "Pool"])
def test_message_shows_the_redacted_url(pool_cls: Any, case: str) -> None:
    exc = construction_error(pool_cls, case)
    message = str(exc)
    assert "***" in message, f"no redacted URL in {message!r}"


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_parse_errors_never_show_the_password(case: str) -> None:
    try:
        parsed = parse_url(BAD_TARGETS[case])
    except tidepool.ConfigError as exc:
        assert_no_canary(texts_of(exc))
    else:
        assert_no_canary([repr(parsed), str(parsed), parsed.redacted])
    assert_no_canary([redact_url(BAD_TARGETS[case])])


def test_traceback_with_locals_can_be_formatted() -> None:
    """Formatting a construction error with ``capture_locals=True`` (as Sentry, debuggers
    and ``pytest --showlocals`` do) calls ``repr()`` on the half-built pool: it must work."""
    for pool_cls in POOL_CLASSES:
        try:
            pool_cls("sqlite://:memory:", max_size=0)
        except tidepool.ConfigError as exc:
            text = "".join(
                traceback.TracebackException.from_exception(exc, capture_locals=True).format()
            )
            assert "max_size" in text
        else:
            raise AssertionError("max_size=0 was accepted")


# One case per shape (a single root cause would otherwise fail dozens of cases alike).
LOCALS_CASES = [
    "userinfo-unsupported-scheme",
    "userinfo-bad-port",
    "query-password-sqlite",
    "query-sslpassword",
    "query-token-sqlite",
]


@pytest.mark.parametrize("case", LOCALS_CASES)
@pytest.mark.parametrize("pool_cls", POOL_CLASSES, ids=["AsyncPool", "Pool"])
def test_traceback_with_locals_never_shows_the_password(pool_cls: Any, case: str) -> None:
    exc = construction_error(pool_cls, case)
    formatted = traceback.TracebackException(
        type(exc), exc, exc.__traceback__, capture_locals=True
    ).format()
    assert_no_canary(["".join(formatted)])


# ---------------------------------------------------------------------- parsed URLs, Secret


@pytest.mark.parametrize("case", sorted(VALID_URLS))
def test_parsed_url_repr_never_shows_the_password(case: str) -> None:
    parsed = parse_url(VALID_URLS[case])
    assert_no_canary([repr(parsed), str(parsed), f"{parsed}", parsed.redacted])
    assert "***" in parsed.redacted
    assert_no_canary([redact_url(VALID_URLS[case])])
    if parsed.password is not None:
        assert_no_canary([repr(parsed.password), str(parsed.password), f"{parsed.password}"])
        assert CANARY in parsed.password.value  # still usable by the adapter


def test_parsed_url_keeps_the_parts() -> None:
    parsed = parse_url(VALID_URLS["userinfo"])
    assert parsed.username == "app"
    assert parsed.password == Secret(CANARY)
    assert parsed.hosts == (("db", 5432),)
    assert parsed.redacted == "postgresql://app:***@db:5432/app"
    escaped = parse_url(VALID_URLS["userinfo-escaped"])
    assert escaped.password is not None
    assert escaped.password.value == CANARY + "@x"


def test_secret() -> None:
    secret = Secret(CANARY)
    assert secret.value == CANARY
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert_no_canary([repr(secret), str(secret), f"{secret}", repr([secret]), repr({"p": secret})])


def test_redact_url_shapes() -> None:
    assert redact_url(f"postgresql://app:{CANARY}@db/app") == "postgresql://app:***@db/app"
    assert redact_url(f"redis://:{CANARY}@cache/0") == "redis://:***@cache/0"
    assert (
        redact_url(f"postgresql://db/app?sslpassword={CANARY}&sslmode=require")
        == "postgresql://db/app?sslpassword=***&sslmode=require"
    )
    assert redact_url(f"redis://cache/0?token={CANARY}") == "redis://cache/0?token=***"
    # Nothing secret: unchanged.
    assert redact_url("postgresql://app@db:5432/app?sslmode=require") == (
        "postgresql://app@db:5432/app?sslmode=require"
    )


# ---------------------------------------------------------------------- connect_kwargs, repr


@pytest.mark.parametrize("pool_cls", POOL_CLASSES, ids=["AsyncPool", "Pool"])
def test_connect_kwargs_password_not_in_reprs(pool_cls: Any) -> None:
    pool = pool_cls("sqlite://:memory:", connect_kwargs={"password": CANARY}, name="secretive")
    assert pool.options.connect_kwargs["password"] == CANARY
    texts = [repr(pool.options), str(pool.options), repr(pool), str(pool), repr(pool.stats())]
    assert_no_canary(texts)
    assert "password" in repr(pool.options)  # the key is shown, not its value
    assert "secretive" in repr(pool)


def test_connect_kwargs_password_not_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The driver refuses the unknown keyword: the timeout, its cause and the logs name the
    problem but never the value."""
    caplog.set_level(logging.DEBUG, logger="tidepool")

    async def main() -> BaseException:
        pool = tidepool.AsyncPool(
            "sqlite://:memory:", connect_kwargs={"password": CANARY}, acquire_timeout=0.5
        )
        try:
            await pool.open()
        except tidepool.PoolError as exc:
            assert_no_canary([repr(pool), repr(pool.options)])
            return exc
        finally:
            await pool.aclose()
        raise AssertionError("connect with an unknown keyword succeeded")

    exc = asyncio.run(main())
    assert_no_canary([str(item) for item in chain(exc)] + [repr(item) for item in chain(exc)])
    assert_no_canary(["".join(traceback.format_exception(exc))])
    assert caplog.records, "the failed connects were not logged"
    assert_no_canary(record_texts(caplog.records))


# ---------------------------------------------------------------------- logs


def record_texts(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = []
    for record in records:
        texts += [record.getMessage(), repr(record.args), formatter.format(record)]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return texts


def test_logs_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidepool")
    for pool_cls in POOL_CLASSES:
        for case in sorted(set(BAD_TARGETS) - SCHEMELESS):
            exc = construction_error(pool_cls, case)
            # Applications log what they catch: tidepool's text must be safe to log.
            logging.getLogger("tidepool.test").debug("caught %s", exc, exc_info=exc)
    for case in VALID_URLS:
        logging.getLogger("tidepool.test").debug("parsed %r", parse_url(VALID_URLS[case]))

    # A whole lifecycle, with a pool name derived from nothing secret.
    with tidepool.Pool("sqlite://:memory:", max_size=2, min_size=1) as pool:
        pool.execute("CREATE TABLE t (x)")
        with pool.acquire():
            pass
    assert any(record.name.startswith("tidepool.pool") for record in caplog.records)
    assert_no_canary(record_texts(caplog.records))
