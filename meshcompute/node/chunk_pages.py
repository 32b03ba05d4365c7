"""Which arena pages the daemon's helper threads have mapped to read or write chunks.

A holder seals a chunk it serves straight from the arena, and a puller opens a
chunk straight into the object's block, both through the daemon's mapping of
the arena.  Mapping a chunk's pages in one call (``MADV_POPULATE_READ``) is far
cheaper than a fault per 64 KiB, but the call walks every page's entry even
when all are mapped already (about a seventh of a chunk's sealing time), and
dropping the pages after each chunk costs a zap and a TLB flush on every core
the daemon runs on.  So:

* pages stay mapped while chunks flow, and a chunk whose pages were mapped
  after the last punch of their part of the arena (store/pages.py's punch
  epochs: a punch takes pages out of every mapping) is not mapped again;
* once no chunk was read or written for ``idle_s`` seconds, everything touched
  is dropped from the daemon's page table, so an idle node's resident size does
  not count the objects it moved (the file keeps their bytes).

Pure bookkeeping: the loop plans, a helper thread records what it mapped.
"""

from __future__ import annotations

from ..store.shm import IDLE_UNMAP_S, PopulatedRanges


class ChunkPages:
    """Invariants: ``populated`` holds only ranges that a populate call mapped after every
    punch up to the epoch recorded with them (so a covered range is mapped, unless it was
    punched later, which ``forget_punched`` catches); ``[start, end)`` covers every page
    touched since the last drop, populated or faulted in."""

    def __init__(self, capacity: int, idle_s: float = IDLE_UNMAP_S) -> None:
        self.idle_s = idle_s
        self.populated = PopulatedRanges(capacity)
        self.start = self.end = 0
        self.used_at = 0.0

    def plan(self, start: int, end: int, punch_info: tuple, now: float) -> int | None:
        """On the loop, before a helper thread reads or writes ``[start, end)``: the punch
        epoch to record once it has mapped them (``mapped``), or None where they are mapped
        already.  ``punch_info`` is ``PagePool.punch_info`` of the range."""
        epoch, punched_at = punch_info[0], punch_info[1]
        self.start, self.end = (start, end) if self.end <= self.start else (min(self.start, start),
                                                                             max(self.end, end))
        self.used_at = now
        self.populated.forget_punched(start, end, punched_at)
        return None if self.populated.covers(start, end) else epoch

    def mapped(self, start: int, end: int, epoch: int) -> None:
        """A helper thread populated ``[start, end)`` (planned at ``epoch``)."""
        self.populated.add_at(start, end, epoch)

    def take_idle(self, now: float) -> tuple[int, int] | None:
        """The span to drop, once nothing was touched for ``idle_s``; then nothing is
        recorded (the next chunk there is mapped again)."""
        if self.end <= self.start or now - self.used_at < self.idle_s:
            return None
        span, self.start, self.end = (self.start, self.end), 0, 0
        self.populated.forget_all()
        return span
