"""Capped exponential backoff with jitter: the one retry pace of every loop (pure)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double from ``first`` up to ``cap``, each scaled by a random factor in ``jitter``."""

    def __init__(
        self,
        first: float = 0.2,
        cap: float = 30.0,
        jitter: tuple[float, float] = (0.5, 1.0),
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._uniform = uniform
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.cap, self.first * 2.0**self.attempt)
        self.attempt += 1
        return ceiling * self._uniform(*self.jitter)

    def reset(self) -> None:
        """Start again from the first delay after a success."""
        self.attempt = 0
