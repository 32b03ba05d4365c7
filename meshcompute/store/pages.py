"""Which free pages of the arena stay resident (the warm pool) and which go back to the kernel.

The arena is one tmpfs file: a page written once stays allocated until a hole
is punched there, whichever block it belongs to now.  Keeping freed pages is
what makes the next put into them fast (a writer whose page table holds them
copies at memcpy speed, docs/store.md), but a node that put and freed 2 GiB
would hold 2 GiB of RAM forever.  So the daemon keeps a bounded *warm pool* of
free resident pages, about as many bytes as were allocated in the last
``window`` seconds (a put loop finds its pages warm), at least ``floor`` (the
region pre-allocated at start) and at most ``pool_max``, and punches the rest
out of the file (``fallocate(PUNCH_HOLE)``), highest offsets first: the
allocator hands out the lowest offsets first, so those are the warm ones.
Above the floor it also keeps, for ``linger_s`` after they were allocated, up to
``linger`` bytes: work that pauses a few seconds between bursts (a transfer, a
put loop with a pause) comes back to resident pages instead of paying for fresh
zeroed ones (a 256 MiB pull into fresh pages ran at two thirds of its speed).

A punched range is reserved in the allocator while the punch runs (on a
helper thread), so no object is written there meanwhile; it is free again when
the punch is done.

Punching frees the pages in every process's mapping.  Writers remember which
pages of their mapping are populated (``shm.PopulatedRanges``), so they must
learn of punches: each punch that completes gets the next *epoch*, recorded per
``EPOCH_CHUNK`` of the arena, and the reply to STORE_CREATE carries the epoch
now and the latest punch epoch of the block's chunks.  A writer that populated
a chunk at an epoch older than a later punch there forgets that chunk.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
from array import array
from collections.abc import Callable
from typing import Any

from .allocator import Allocator

log = logging.getLogger("meshcompute.store")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
EPOCH_CHUNK = 64 << 10
"""Punches are recorded per 64 KiB of the arena (and punch whole ones): a 100 MiB block checks
1600 entries, and a punch next to a block costs its writer at most 64 KiB of its mapping."""
WINDOW_S = 2.0
"""The warm pool holds about the bytes allocated in this many seconds: a loop that puts and
frees keeps its pages; a burst that stopped gives them back this long after."""
PUNCH_MIN = 2 << 20
"""Free resident bytes beyond the pool's target are returned only from this much on: a page
or two over the target is not worth a punch, nor the mappings its writers would lose."""
LINGER_S = 30.0
"""Seconds for which up to ``linger`` bytes above the floor stay after their allocation."""
CHECK_PERIOD_S = 0.25
"""How often the daemon compares the free resident bytes with the pool's target."""

_fallocate = None


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Return the pages of ``[offset, offset+length)`` of a tmpfs file to the kernel (they read as zeros)."""
    global _fallocate
    if _fallocate is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        _fallocate = libc.fallocate
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def resident_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The ranges of ``[start, end)`` of a file that hold allocated pages (SEEK_DATA/SEEK_HOLE)."""
    out = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole))
        pos = hole
    return out


def allocated_bytes(fd: int) -> int:
    """Bytes of pages the file holds (tmpfs: its share of RAM)."""
    return os.fstat(fd).st_blocks * 512


class PagePool:
    """The warm pool's size, the punches to make, and the punch epochs of the arena.

    Invariants: ``punching`` is the size of the ranges reserved for punches in
    flight; ``epochs[c]`` is the epoch of the last completed punch touching
    chunk ``c`` (0: never); ``epoch`` is the latest of them.
    """

    def __init__(self, capacity: int, floor: int = 0, pool_max: int = 1 << 30,
                 window_s: float = WINDOW_S, min_punch: int = PUNCH_MIN, align: int = EPOCH_CHUNK,
                 linger: int = 0, linger_s: float = LINGER_S) -> None:
        self.floor = floor
        self.linger = linger  # bytes above the floor kept for linger_s after allocation
        self.linger_s = linger_s
        self.min_punch = min_punch
        self.align = align
        self.pool_max = max(pool_max, floor)
        self.window_s = window_s
        self.epoch = 0
        self.epochs = array("q", [0]) * (capacity // EPOCH_CHUNK + 1)
        self.punching = 0
        self.zeroed = 0  # [0, zeroed) was allocated and zeroed at start (shm.ArenaWarmer), not punched since unless epochs say so
        self.punched_bytes = 0  # bytes of resident pages returned so far (statistics)
        self.allocated_total = 0  # bytes of blocks handed out, ever
        # (time, allocated_total) at each check of the last window (or linger_s), after a sample
        # of 0 at the start.
        self._samples: collections.deque = collections.deque([(float("-inf"), 0)])

    # ------------------------------------------------------------- accounting

    def note_allocated(self, size: int) -> None:
        self.allocated_total += size

    def target(self, now: float) -> int:
        """Free resident bytes to keep, within [floor, pool_max]: twice those allocated in the
        last window, and at least the floor plus those allocated in the last ``linger_s``, up
        to ``linger`` of them."""
        samples = self._samples
        samples.append((now, self.allocated_total))
        horizon = now - max(self.window_s, self.linger_s if self.linger else 0.0)
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        # Twice the recent bytes: a writer maps the block after its last one ahead (store_client).
        recent = self._allocated_since(now - self.window_s)
        lingering = min(self.linger, self._allocated_since(now - self.linger_s)) if self.linger else 0
        return max(self.floor, min(self.pool_max, max(2 * recent, self.floor + lingering)))

    def _allocated_since(self, since: float) -> int:
        """Bytes allocated after ``since``, as of the checks (the last check at or before it)."""
        base = self._samples[0][1]
        for t, total in self._samples:
            if t > since:
                break
            base = total
        return self.allocated_total - base

    def punch_info(self, offset: int, size: int) -> tuple[int, int, bool]:
        """(epoch now, latest punch epoch of the chunks of ``[offset, offset+size)``, whether
        every page there is written): the writer's populated pages there older than the
        second are gone; where the third is true, populating the block costs no zeroing.

        "Written" is known for the region zeroed at start and never punched; a block
        elsewhere may be all written too (freed pages the pool kept), but asking the
        kernel page by page costs ~1 ms per 100 MiB, so such a block counts as not.
        """
        first, last = offset // EPOCH_CHUNK, (offset + max(size, 1) - 1) // EPOCH_CHUNK
        punched_at = max(self.epochs[first:last + 1])
        return self.epoch, punched_at, punched_at == 0 and offset + size <= self.zeroed

    # --------------------------------------------------------------- punching

    def plan(self, now: float, free_blocks: Callable[[], list[tuple[int, int]]], used: int, file_bytes: int,
             extents: Callable[[int, int], list[tuple[int, int]]]) -> list[tuple[int, int, int, int]]:
        """Ranges to punch now, highest first, until the free resident bytes fit the target:
        ``(free block start, from, to, resident bytes there)``, where ``[from, block end)`` is the
        tail of that free block to reserve and ``[from, to)`` the part to punch, whole ``align``
        units (so that a punch never marks the chunk of a neighbouring block as punched).

        ``file_bytes``: what the arena file holds; ``used``: bytes in allocated blocks (held by
        objects, so resident or about to be); ``free_blocks()``: the allocator's, by offset;
        ``extents(start, end)``: the resident parts of a range.
        """
        excess = file_bytes - used - self.target(now)
        out: list[tuple[int, int, int, int]] = []
        if excess < self.min_punch:
            return out
        for start, size in reversed(free_blocks()):
            if excess <= 0:
                break
            stop = (start + size) - (start + size) % self.align
            cut = stop
            resident = extents(start, stop)
            for lo, hi in reversed(resident):
                if hi - lo >= excess:  # punched enough: keep the low part of this extent
                    cut, excess = hi - excess, 0
                    break
                cut, excess = lo, excess - (hi - lo)
            cut += -cut % self.align
            if cut < stop:
                out.append((start, cut, stop, sum(max(0, hi - max(lo, cut)) for lo, hi in resident)))
        return out

    def return_pages(self, allocator: Allocator, fd: int, now: float,
                     start_copy: Callable[[Callable[[], Any], Callable[[Any, BaseException | None], None]], None]
                     ) -> None:
        """Start the punches ``plan`` asks for: each range reserved in ``allocator`` (the
        table's) until its punch, run by ``start_copy`` (on a helper thread), is done."""
        for start, cut, end, resident in self.plan(now, allocator.free_blocks, allocator.used,
                                                   allocated_bytes(fd), lambda s, e: resident_extents(fd, s, e)):
            taken = allocator.take(start, cut)
            self.punching += taken

            def done(_: Any, error: BaseException | None, r=(cut, end, taken, resident)) -> None:
                allocator.free(r[0])
                self.done(*r, ok=error is None)
                if error is not None:
                    # Not tmpfs, or a kernel without hole punching: keep every page from now on.
                    log.warning("could not return arena pages to the kernel (%s); they stay", error)
                    self.floor = self.pool_max = allocator.capacity

            start_copy(lambda cut=cut, end=end: punch_hole(fd, cut, end - cut), done)

    def done(self, start: int, end: int, reserved: int, resident: int, ok: bool) -> None:
        """A punch of ``[start, end)`` finished (or failed: its pages stay, its chunks are
        marked all the same); ``reserved``: the bytes it held in the allocator; ``resident``:
        the bytes of pages it returned."""
        self.punching -= reserved
        self.epoch += 1
        if ok:
            self.punched_bytes += resident
        first, last = start // EPOCH_CHUNK, (end - 1) // EPOCH_CHUNK
        self.epochs[first:last + 1] = array("q", [self.epoch]) * (last - first + 1)

    def statistics(self) -> dict[str, Any]:
        return {"punching_bytes": self.punching, "punched_bytes": self.punched_bytes, "punch_epoch": self.epoch}
