"""Lifeguard suspicion timers (pure).

A suspicion starts at ``max`` seconds and shrinks logarithmically towards
``min`` as *independent* confirmations (suspect rumours from other members)
arrive, exactly as memberlist's ``remainingSuspicionTime``::

    timeout(n) = max(min, max - (max - min) * log(n + 1) / log(k + 1))

where ``n`` is the number of confirmations so far and ``k`` the number
expected.  With ``k < 1`` the timeout is ``min`` from the start.
Timeouts are floored to whole milliseconds (as memberlist does) so that replays
are bit-identical regardless of float noise in the log terms.
"""

from __future__ import annotations

import math

__all__ = ["suspicion_timeout", "remaining_suspicion_time", "Suspicion"]


def _floor_ms(seconds: float) -> float:
    """Floor to whole milliseconds, tolerant of float noise (0.39999999 -> 0.4)."""
    return math.floor(seconds * 1000.0 + 1e-6) / 1000.0


def suspicion_timeout(mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout in seconds: ``mult * max(1, log10(n)) * interval``.

    ``n`` is the number of live members; the log10 factor lets a rumour reach
    everyone (O(log N) rounds) before anyone acts on the timeout.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return _floor_ms(mult * node_scale * interval)


def remaining_suspicion_time(n: int, k: int, elapsed: float, min_t: float, max_t: float) -> float:
    """Seconds left before a suspicion with ``n`` of ``k`` confirmations expires.

    ``elapsed`` is the time since the suspicion started.  May be negative when
    the (shrunk) timeout already passed.
    """
    if k < 1:
        return min_t - elapsed
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_t - frac * (max_t - min_t)
    timeout = max(min_t, _floor_ms(raw))
    return timeout - elapsed


class Suspicion:
    """State of one suspicion about one member (held by the observer).

    ``source`` is the member whose rumour started it; it does not count as a
    confirmation.  Each distinct later accuser counts once, up to ``k``.
    """

    __slots__ = ("k", "n", "min_t", "max_t", "start", "_accusers")

    def __init__(self, source: str, k: int, min_t: float, max_t: float, start: float) -> None:
        if min_t <= 0 or max_t < min_t:
            raise ValueError("need 0 < min_t <= max_t")
        self.k = max(0, k)
        self.n = 0
        self.min_t = min_t
        self.max_t = max_t
        self.start = start
        # dict used as an insertion-ordered set (deterministic iteration)
        self._accusers: dict[str, None] = {source: None}

    def confirm(self, source: str) -> bool:
        """Record an independent confirmation. True if it was new (and counted)."""
        if self.n >= self.k or source in self._accusers:
            return False
        self._accusers[source] = None
        self.n += 1
        return True

    @property
    def timeout(self) -> float:
        """Current total timeout in seconds (from ``start``)."""
        return remaining_suspicion_time(self.n, self.k, 0.0, self.min_t, self.max_t)

    @property
    def deadline(self) -> float:
        """Absolute time at which the suspected member is to be declared dead."""
        return self.start + self.timeout

    def remaining(self, now: float) -> float:
        return remaining_suspicion_time(self.n, self.k, now - self.start, self.min_t, self.max_t)
