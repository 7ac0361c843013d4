"""Exponential reconnect backoff with bounded jitter."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial * 2**n`` capped at ``max_delay_s``, each plus up to ``jitter * delay`` at random.

    ``next_delay_s()`` returns the delay before the next attempt and counts the attempt; ``reset()`` after a
    success starts again from ``initial_delay_s``. ``exhausted`` is True once ``max_attempts`` delays have
    been handed out (never when ``max_attempts`` is None).
    """

    def __init__(
        self,
        initial_delay_s: float,
        max_delay_s: float,
        jitter: float = 0.0,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if initial_delay_s <= 0 or max_delay_s < initial_delay_s:
            raise ValueError("need 0 < initial_delay_s <= max_delay_s")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self.jitter = jitter
        self.max_attempts = max_attempts
        self.attempts = 0  # consecutive failures since the last reset
        self._rng = rng or random.Random()

    @property
    def exhausted(self) -> bool:
        return self.max_attempts is not None and self.attempts >= self.max_attempts

    def base_delay_s(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (0-based) without jitter."""
        return min(self.max_delay_s, self.initial_delay_s * 2.0 ** min(attempt, 62))

    def next_delay_s(self) -> float:
        base_s = self.base_delay_s(self.attempts)
        self.attempts += 1
        return base_s * (1.0 + self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
