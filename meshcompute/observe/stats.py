"""A process's task counters, reported to its daemon (TASK_STATS) for ``mesh status`` and ``mesh top``.

Driven by activity, never by a message per task: the first task activity arms a
timer, and a report goes out only when the counters changed since the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STATS_PERIOD_S = 0.5
"""A process reports its task counters (TASK_STATS) at most this often, and only
while they change: a timer armed by task activity, never a message per task."""


class StatsReporter:
    def __init__(self, call_later: Callable[..., None], counters: Callable[[], dict],
                 report: Callable[[dict], None]) -> None:
        self.call_later = call_later  # the I/O thread's timer
        self.counters = counters  # the process's current counters
        self.report = report  # sends TASK_STATS to the daemon
        self._armed = False
        self._sent: Any = None

    def note_activity(self) -> None:
        if not self._armed:
            self._armed = True
            self.call_later(STATS_PERIOD_S, self._send)

    def _send(self) -> None:
        self._armed = False
        stats = self.counters()
        if stats != self._sent:
            self._sent = stats
            self.report(stats)
            self.note_activity()  # look once more: the counters are still moving
