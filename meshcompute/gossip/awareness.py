"""Lifeguard local health awareness (pure).

A node that keeps missing acks and nacks is more likely slow itself than
surrounded by failures.  The awareness score counts that evidence; probe
timeouts and intervals are multiplied by ``score + 1`` so a degraded node
slows down its own accusations instead of flooding the cluster with false
suspicions.

Deltas applied by the SWIM core (as in memberlist):

* successful probe (ack received):                       -1
* failed probe with nack-capable helpers:   + (expected nacks - nacks received)
* failed probe with no helpers to ask:                   +1
* had to refute a suspicion/death rumour about ourselves: +1
"""

from __future__ import annotations

__all__ = ["clamp_score", "scale_timeout", "Awareness"]


def clamp_score(score: int, delta: int, max_multiplier: int) -> int:
    """New score after ``delta``, clamped to ``[0, max_multiplier - 1]``."""
    return min(max(score + delta, 0), max_multiplier - 1)


def scale_timeout(timeout: float, score: int) -> float:
    """Timeout (seconds) scaled by health score: ``timeout * (score + 1)``."""
    return timeout * (score + 1)


class Awareness:
    """Mutable holder of the score; all arithmetic is in the pure functions above."""

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        self.score = clamp_score(self.score, delta, self.max_multiplier)
        return self.score

    def scale(self, timeout: float) -> float:
        return scale_timeout(timeout, self.score)
