"""First-fit allocator over the arena, with coalescing of free neighbours.

Pure bookkeeping: offsets and sizes in, offsets out.  No memory is touched here.
Every block is a multiple of ``align`` bytes (a page, so a reader can ``mmap`` one
object on its own).

Allocation picks the free block with the *lowest offset* that fits (first fit):
low offsets are the pages writers have already faulted in, so reusing them keeps
puts at memcpy speed (docs/store.md).  A plain first-fit scan is O(free blocks)
per allocation, which fragmentation turns quadratic; instead free blocks are
kept in segregated size classes (8 classes per power of two, as in TLSF), each a
list sorted by offset.  Every block of a class above the request's class fits,
so the lowest-offset fit is the smallest head of those classes or the first fit
in the request's own class (a bounded scan).  Cost per call: O(number of size
classes in use + ``SCAN``), independent of the number of free blocks, plus a
list insert/delete (a memmove) in one class.

Invariants:
  * free blocks never overlap and never touch (a freed block is merged with an
    adjacent free block at once);
  * ``used + sum(free sizes) == capacity``;
  * every free block is in exactly one class list, the one of its size.
"""

from __future__ import annotations

import bisect

SCAN = 64
"""Blocks of the request's own size class scanned for a fit before taking a
(certain) fit from a larger class; the whole class is scanned only when no
larger class has a block."""


class OutOfSpace(Exception):
    """No free block is large enough for the request."""


def _size_class(pages: int) -> int:
    if pages < 8:
        return pages
    k = pages.bit_length() - 1
    return 8 + (k - 3) * 8 + ((pages >> (k - 3)) & 7)


class Allocator:
    def __init__(self, capacity: int, align: int = 4096) -> None:
        if capacity < align:
            raise ValueError(f"capacity {capacity} is below one block of {align} bytes")
        self.align = align
        self.capacity = capacity - capacity % align
        self._start: dict[int, int] = {}  # free block start -> size
        self._end: dict[int, int] = {}  # free block end -> start
        self._classes: dict[int, list[int]] = {}  # size class -> free block starts, sorted
        self._mask = 0  # bit c set <=> class c has a free block
        self._allocated: dict[int, int] = {}  # allocated block start -> size
        self.used = 0
        self._insert(0, self.capacity)

    # -------------------------------------------------------------- internals

    def _insert(self, start: int, size: int) -> None:
        self._start[start] = size
        self._end[start + size] = start
        c = _size_class(size // self.align)
        lst = self._classes.get(c)
        if lst is None:
            self._classes[c] = [start]
            self._mask |= 1 << c
        else:
            bisect.insort(lst, start)

    def _remove(self, start: int) -> int:
        size = self._start.pop(start)
        del self._end[start + size]
        c = _size_class(size // self.align)
        lst = self._classes[c]
        del lst[bisect.bisect_left(lst, start)]
        if not lst:
            del self._classes[c]
            self._mask &= ~(1 << c)
        return size

    def _find(self, need: int) -> int | None:
        """Lowest-offset free block of at least ``need`` bytes (see the module docstring)."""
        c = _size_class(need // self.align)
        best = None
        higher = self._mask >> (c + 1) << (c + 1)
        classes = self._classes
        while higher:  # each class in use above c: its lowest block fits
            low = higher & -higher
            head = classes[low.bit_length() - 1][0]
            if best is None or head < best:
                best = head
            higher ^= low
        lst = self._classes.get(c)
        if lst:
            sizes = self._start
            for n, off in enumerate(lst):
                if best is not None and (off > best or n >= SCAN):
                    break
                if sizes[off] >= need:
                    return off
        return best

    # -------------------------------------------------------------------- API

    def round_up(self, size: int) -> int:
        return max(self.align, -(-size // self.align) * self.align)

    def allocate(self, size: int) -> int:
        """Return the offset of a new block of at least ``size`` bytes."""
        need = self.round_up(size)
        off = self._find(need)
        if off is None:
            raise OutOfSpace(f"no free block of {need} bytes ({self.capacity - self.used} free, fragmented)")
        have = self._remove(off)
        if have > need:
            self._insert(off + need, have - need)
        self._allocated[off] = need
        self.used += need
        return off

    def free(self, offset: int) -> int:
        """Release the block at ``offset``; returns its size."""
        size = self._allocated.pop(offset)
        self.used -= size
        start, end = offset, offset + size
        if end in self._start:  # the following free block touches
            end += self._remove(end)
        prev = self._end.get(start)  # the preceding free block touches
        if prev is not None:
            self._remove(prev)
            start = prev
        self._insert(start, end - start)
        return size

    def take(self, start: int, offset: int) -> int:
        """Allocate ``[offset, end)`` of the free block ``[start, end)`` (its tail; the head stays
        free); returns the bytes taken.  The page pool reserves what it punches this way."""
        end = start + self._remove(start)
        if not start <= offset < end or offset % self.align:
            self._insert(start, end - start)
            raise ValueError(f"{offset} is not an aligned offset in the free block at {start}")
        if offset > start:
            self._insert(start, offset - start)
        self._allocated[offset] = end - offset
        self.used += end - offset
        return end - offset

    def size_of(self, offset: int) -> int:
        return self._allocated[offset]

    def free_bytes(self) -> int:
        return self.capacity - self.used

    def largest_free(self) -> int:
        if not self._mask:
            return 0
        top = self._mask.bit_length() - 1
        return max(self._start[off] for off in self._classes[top])

    def free_blocks(self) -> list[tuple[int, int]]:
        return sorted(self._start.items())
