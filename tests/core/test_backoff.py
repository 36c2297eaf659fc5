"""Tests of the jittered exponential backoff used between connect retries."""

from __future__ import annotations

import random

import pytest

from tidepool._core.backoff import Backoff


def jitter_factors(seed: int, n: int) -> list[float]:
    """The factors a Backoff seeded with ``seed`` must apply: 0.5 + U[0, 1) / 2."""
    rng = random.Random(seed)
    return [0.5 + rng.random() / 2 for _ in range(n)]


def test_delays_double_from_base_with_jitter() -> None:
    backoff = Backoff(base=0.1, cap=100.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1 * 2**i for i in range(8)]
    for delay, ceiling, factor in zip(delays, ceilings, jitter_factors(7, 8), strict=True):
        assert delay == pytest.approx(ceiling * factor)
        assert 0.5 * ceiling <= delay < ceiling


def test_jitter_stays_in_half_open_range_of_the_ceiling() -> None:
    rng = random.Random(12345)
    factors = []
    for _ in range(2000):
        backoff = Backoff(base=1.0, cap=1.0, rng=rng)
        factors.append(backoff.next_delay())
    assert all(0.5 <= f < 1.0 for f in factors)
    # Really jittered: spread over the range, not one value.
    assert min(factors) < 0.55
    assert max(factors) > 0.95
    assert len(set(factors)) > 1900


def test_delays_are_capped() -> None:
    backoff = Backoff(base=0.05, cap=2.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(40)]
    assert all(d < 2.0 for d in delays)
    # From the 7th failure on (0.05 * 2**6 = 3.2 > 2.0) the ceiling is the cap.
    factors = jitter_factors(3, 40)
    for delay, factor in zip(delays[6:], factors[6:], strict=True):
        assert delay == pytest.approx(2.0 * factor)
    assert delays[5] == pytest.approx(0.05 * 32 * factors[5])


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(base=1e-3, cap=5.0, rng=random.Random(0))
    for _ in range(2000):
        delay = backoff.next_delay()
    assert 2.5 <= delay < 5.0
    assert backoff.failures == 2000


def test_failures_counts_and_reset_restarts() -> None:
    backoff = Backoff(base=0.5, cap=60.0, rng=random.Random(11))
    assert backoff.failures == 0
    first = [backoff.next_delay() for _ in range(5)]
    assert backoff.failures == 5
    assert first[4] >= 0.5 * 0.5 * 16  # grew: the 5th ceiling is 8.0
    backoff.reset()
    assert backoff.failures == 0
    again = backoff.next_delay()
    assert 0.25 <= again < 0.5  # back at base
    assert backoff.failures == 1


def test_same_seed_same_delays() -> None:
    one = Backoff(rng=random.Random(99))
    two = Backoff(rng=random.Random(99))
    assert [one.next_delay() for _ in range(10)] == [two.next_delay() for _ in range(10)]


def test_default_rng_and_defaults() -> None:
    backoff = Backoff()
    first = backoff.next_delay()
    assert 0.025 <= first < 0.05
    for _ in range(20):
        last = backoff.next_delay()
    assert 1.0 <= last < 2.0


def test_base_equal_to_cap_is_allowed() -> None:
    backoff = Backoff(base=0.3, cap=0.3, rng=random.Random(5))
    assert all(0.15 <= backoff.next_delay() < 0.3 for _ in range(10))


@pytest.mark.parametrize(
    ("base", "cap"),
    [(0.0, 1.0), (-0.1, 1.0), (1.0, 0.5), (2.0, 1.9999), (-1.0, -0.5)],
)
def test_invalid_arguments_raise_value_error(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=base, cap=cap)
