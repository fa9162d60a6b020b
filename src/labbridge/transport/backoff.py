"""Exponential backoff with jitter for reconnecting clients."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each with +-``jitter`` spread.

    ``next()`` returns the delay before the next attempt; ``reset()`` after a success.
    """

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.1
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next(self) -> float:
        try:
            base = min(self.maximum, self.initial * (self.factor ** self.attempts))
        except OverflowError:  # maximum (nearly) inf or initial 0: factor**n outgrew a float
            base = self.maximum if self.initial > 0 else 0.0
        if base < self.maximum:
            # once the delay has reached ``maximum`` it stays there: stop counting, so the
            # exponent never grows without bound (``2.0 ** 1024`` raises OverflowError)
            self.attempts += 1
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        self.attempts = 0
