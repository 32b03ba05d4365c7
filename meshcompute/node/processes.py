"""The processes registered with this daemon (drivers and workers) and their task counters."""

from __future__ import annotations


class Processes:
    """Owns who is registered here (address -> pid), which of them are drivers,
    and the last TASK_STATS each sent.

    Invariant: ``finished_base`` plus the ``finished`` counts in ``stats`` is
    every task finished on this node, also by processes that are gone (their
    last count moves into ``finished_base`` when they go).
    """

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}  # every registered process: addr -> pid
        self.drivers: dict[str, int] = {}  # addr -> pid
        self.stats: dict[str, dict] = {}  # addr -> the process's last TASK_STATS
        self.finished_base = 0  # tasks finished by processes that are gone

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
            self.finished_base += int(stats.get("finished", 0))
        return self.drivers.pop(addr, None) is not None

    def on_task_stats(self, sender: str, msg: tuple, frames: list) -> None:
        if isinstance(msg[1], dict) and sender in self.pids:
            self.stats[sender] = msg[1]

    def task_totals(self) -> dict:
        """Tasks running, queued and finished on this node, from the processes' TASK_STATS."""
        running = queued = 0
        finished = self.finished_base
        for s in self.stats.values():
            running += int(s.get("running", 0))
            queued += int(s.get("queued", 0))
            finished += int(s.get("finished", 0))
        return {"running": running, "queued": queued, "finished": finished}
