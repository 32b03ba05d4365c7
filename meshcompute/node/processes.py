"""The processes registered with this daemon (drivers and workers) and their task counters."""

from __future__ import annotations

from ..observe.stats import LATENCY_BUCKETS, OTHER

MAX_NODE_FUNCTIONS = 64
"""Function names a node reports separately (metrics); the others are summed under ``OTHER``."""
_COUNTERS = ("finished", "submitted", "failed")

OWNERSHIP_KNOWN_S = 1.0
"""Seconds after a worker's last task by which its TASK_STATS says whether it owns
objects (it reports within 0.5 s of its last activity; the rest is margin)."""


class Processes:
    """Owns who is registered here (address -> pid), which of them are drivers,
    and the last TASK_STATS each sent.

    Invariant: ``base`` plus the counts in ``stats`` is every task finished
    (submitted, failed) on this node, also by processes that are gone (their
    last counts move into ``base`` when they go); likewise ``fn_base`` and the
    processes' ``by_fn`` for the per-function counts.
    """

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}  # every registered process: addr -> pid
        self.drivers: dict[str, int] = {}  # addr -> pid
        self.stats: dict[str, dict] = {}  # addr -> the process's last TASK_STATS
        self.base = dict.fromkeys(_COUNTERS, 0)  # counts of processes that are gone
        self.fn_base: dict[str, list] = {}  # their per-function counts

    def register(self, addr: str, pid: int, driver: bool) -> bool:
        """Record a process; True for a driver seen for the first time."""
        self.pids[addr] = pid
        if not driver:
            return False
        new = addr not in self.drivers
        self.drivers[addr] = pid
        return new

    def pid_of(self, addr: str) -> int | None:
        return self.pids.get(addr)

    def gone(self, addr: str) -> bool:
        """Forget a process; True if it was a driver."""
        self.pids.pop(addr, None)
        stats = self.stats.pop(addr, None)
        if stats:
            for key in _COUNTERS:
                self.base[key] += _count(stats.get(key))
            self.fn_base = _merge_functions([self.fn_base, stats.get("by_fn")])
        return self.drivers.pop(addr, None) is not None

    def on_task_stats(self, sender: str, msg: tuple, frames: list) -> None:
        if isinstance(msg[1], dict) and sender in self.pids:
            self.stats[sender] = msg[1]

    def owns_objects(self, addr: str) -> bool:
        """Whether the process said (in its last TASK_STATS) that it owns objects."""
        return bool(self.stats.get(addr, {}).get("owns_objects"))

    def may_own_objects(self, addr: str, idle_for: float) -> bool:
        """Whether a worker that ran tasks and is idle for ``idle_for`` s may own objects: it
        said so, or its last word on it may still be on the way."""
        return self.owns_objects(addr) or idle_for < OWNERSHIP_KNOWN_S

    def task_totals(self) -> dict:
        """Tasks running, queued and finished on this node, from the processes' TASK_STATS
        (with ``submitted`` by its owners and ``failed``: attempts that raised)."""
        totals = dict(self.base, running=0, queued=0)
        for s in self.stats.values():
            for key in ("running", "queued", *_COUNTERS):
                totals[key] += _count(s.get(key))
        return totals

    def function_totals(self) -> dict[str, list]:
        """``{name: [finished, failed, seconds, [count per LATENCY_BUCKETS bucket]]}`` over every
        process of this node, past ones included; at most MAX_NODE_FUNCTIONS names."""
        return _merge_functions([self.fn_base, *(s.get("by_fn") for s in self.stats.values())])


def _count(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _merge_functions(parts: list) -> dict[str, list]:
    """Sum per-function counts; a malformed entry (a process's report is not trusted) is skipped."""
    out: dict[str, list] = {}
    width = len(LATENCY_BUCKETS) + 1
    for part in parts:
        if not isinstance(part, dict):
            continue
        for name, rec in part.items():
            try:
                finished, failed, seconds, buckets = rec
                if not (isinstance(name, str) and len(buckets) == width):
                    continue
                values = [int(finished), int(failed), float(seconds), [int(b) for b in buckets]]
            except (TypeError, ValueError):
                continue
            if name not in out and len(out) >= MAX_NODE_FUNCTIONS - 1:
                name = OTHER
            cur = out.get(name)
            if cur is None:
                out[name] = values
            else:
                cur[0] += values[0]
                cur[1] += values[1]
                cur[2] += values[2]
                cur[3] = [a + b for a, b in zip(cur[3], values[3])]
    return out
