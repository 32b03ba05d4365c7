"""A process's task counters, reported to its daemon (TASK_STATS) for ``mesh status`` and ``mesh top``.

Driven by activity, never by a message per task: the first task activity arms a
timer, and a report goes out only when the counters changed since the last one.
"""

from __future__ import annotations

import bisect
import threading
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


LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
"""Upper bounds (s) of the task-duration histogram's buckets (one more bucket: above them all)."""
MAX_FUNCTIONS = 32
"""Function names a process counts separately; the others are counted under ``OTHER``."""
OTHER = "(other)"


class FunctionStats:
    """Finished and failed tasks and a duration histogram, by function name (a worker's executor).

    ``record`` is called once per task, on the thread that ran it (a lock: async and threaded
    actors finish calls on several threads); ``snapshot`` on the I/O thread for TASK_STATS:
    ``{name: [finished, failed, seconds, [count per bucket]]}``.  At most ``MAX_FUNCTIONS``
    names, so that a process calling many distinct functions cannot grow a report without bound.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, list] = {}
        self._lock = threading.Lock()
        self.failed = 0

    def record(self, name: str, seconds: float, failed: bool) -> None:
        with self._lock:
            rec = self._by_name.get(name)
            if rec is None:
                if len(self._by_name) >= MAX_FUNCTIONS - 1:
                    name = OTHER  # the last slot: every name that comes after the first ones
                rec = self._by_name.get(name)
                if rec is None:
                    rec = self._by_name[name] = [0, 0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            rec[0] += 1
            if failed:
                rec[1] += 1
                self.failed += 1
            rec[2] += seconds
            rec[3][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def snapshot(self) -> dict[str, list]:
        with self._lock:
            return {name: [r[0], r[1], r[2], list(r[3])] for name, r in self._by_name.items()}
