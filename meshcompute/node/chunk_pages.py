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
* once no chunk was read or written for a while and none is in progress,
  everything touched is dropped from the daemon's page table (on a helper
  thread), so an idle node's resident size does not count the objects it moved
  (the file keeps their bytes).  The caller says how long: node/pulls.py keeps
  them as long as the store keeps a burst's pages warm (store/pages.py), so a
  transfer that pauses a few seconds comes back to pages in the page table.

Pure bookkeeping on the loop thread, except ``mapped``, which a helper thread
calls (``PopulatedRanges`` locks).
"""

from __future__ import annotations

from typing import NamedTuple

from ..store.shm import PopulatedRanges


class MapFirst(NamedTuple):
    """A helper thread must map the pages before touching them; ``record`` says whether
    it then notes them as mapped (not while a drop may be zapping them)."""

    epoch: int
    record: bool


class ChunkPages:
    """Invariants: ``populated`` holds only ranges that a populate call mapped after every
    punch up to the epoch recorded with them, and after the last drop had finished (so a
    covered range is mapped, unless punched later, which ``forget_punched`` catches);
    ``[start, end)`` covers every page touched since the last drop began; nothing is
    dropped while a chunk planned here is still in progress."""

    def __init__(self, capacity: int) -> None:
        self.populated = PopulatedRanges(capacity)
        self.start = self.end = 0
        self.used_at = 0.0
        self.in_progress = 0  # chunks planned whose reads or writes have not completed
        self.dropping = False  # a drop's unmap runs on a helper thread now

    def plan(self, start: int, end: int, punch_info: tuple, now: float) -> MapFirst | None:
        """Before a helper thread reads or writes ``[start, end)``: how it maps the pages
        first, or None where they are mapped already.  ``punch_info`` is
        ``PagePool.punch_info`` of the range.  Each plan is ended by ``done``."""
        epoch, punched_at = punch_info[0], punch_info[1]
        self.start, self.end = (start, end) if self.end <= self.start else (min(self.start, start),
                                                                             max(self.end, end))
        self.used_at = now
        self.in_progress += 1
        self.populated.forget_punched(start, end, punched_at)
        if self.populated.covers(start, end):  # (never while dropping: nothing is recorded then)
            return None
        return MapFirst(epoch, record=not self.dropping)

    def mapped(self, start: int, end: int, how: MapFirst) -> None:
        """A helper thread populated ``[start, end)`` as planned."""
        if how.record:
            self.populated.add_at(start, end, how.epoch)

    def done(self, now: float) -> None:
        """A planned chunk's read or write completed (or was given up)."""
        self.in_progress -= 1
        self.used_at = now

    def take_idle(self, now: float, idle_s: float) -> tuple[int, int] | None:
        """The span to drop, once nothing was touched for ``idle_s`` seconds and no chunk is
        in progress; until ``dropped``, chunks map their pages without recording them."""
        if (self.end <= self.start or self.in_progress or self.dropping
                or now - self.used_at < idle_s):
            return None
        span, self.start, self.end = (self.start, self.end), 0, 0
        self.populated.forget_all()
        self.dropping = True
        return span

    def dropped(self) -> None:
        """The drop's unmap has finished."""
        self.dropping = False
