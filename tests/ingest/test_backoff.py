"""Reconnect backoff: exponential growth to a cap, bounded jitter, reset after success, attempt limit."""

from __future__ import annotations

import random

import pytest

from vstmon.ingest.backoff import Backoff


def test_delays_double_up_to_the_maximum_without_jitter() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.0)
    assert [backoff.next_delay_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert backoff.attempts == 7


def test_jitter_adds_at_most_the_given_fraction() -> None:
    backoff = Backoff(0.5, 8.0, jitter=0.25, rng=random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(200)]
    bases = [min(8.0, 0.5 * 2**i) for i in range(200)]
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base * 1.25
    capped = delays[10:]
    assert max(capped) - min(capped) > 0.5  # the jitter really spreads the capped delays


def test_jittered_delays_never_shrink_below_the_previous_base() -> None:
    backoff = Backoff(0.1, 100.0, jitter=1.0, rng=random.Random(7))
    previous_base = 0.0
    for attempt in range(10):
        delay = backoff.next_delay_s()
        assert delay >= backoff.base_delay_s(attempt) >= previous_base
        previous_base = backoff.base_delay_s(attempt)


def test_reset_after_success_starts_from_the_initial_delay() -> None:
    backoff = Backoff(0.2, 5.0, jitter=0.0)
    for _ in range(5):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay_s() == 0.2


def test_unlimited_by_default_and_exhausted_after_max_attempts() -> None:
    unlimited = Backoff(0.1, 1.0)
    for _ in range(1000):
        unlimited.next_delay_s()
    assert not unlimited.exhausted
    limited = Backoff(0.1, 1.0, max_attempts=3)
    for _ in range(3):
        assert not limited.exhausted
        limited.next_delay_s()
    assert limited.exhausted
    limited.reset()
    assert not limited.exhausted


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0)
    for _ in range(5000):
        assert backoff.next_delay_s() <= 30.0


@pytest.mark.parametrize(
    ("initial", "maximum", "jitter"), [(0.0, 1.0, 0.1), (2.0, 1.0, 0.1), (0.1, 1.0, 1.5)]
)
def test_bad_settings_are_rejected(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, jitter)
