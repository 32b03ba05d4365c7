"""First-fit allocator over the arena, with coalescing of free neighbours.

Pure bookkeeping: offsets and sizes in, offsets out.  No memory is touched here.
Every block is a multiple of ``align`` bytes (a page, so a reader can ``mmap`` one
object on its own).

Invariants:
  * free blocks are sorted by offset, never overlap and never touch (a freed block
    is merged with an adjacent free block at once);
  * ``used + sum(free sizes) == capacity``.
"""

from __future__ import annotations

import bisect


class OutOfSpace(Exception):
    """No free block is large enough for the request."""


class Allocator:
    def __init__(self, capacity: int, align: int = 4096) -> None:
        if capacity < align:
            raise ValueError(f"capacity {capacity} is below one block of {align} bytes")
        self.align = align
        self.capacity = capacity - capacity % align
        self._offsets: list[int] = [0]  # free block starts, sorted
        self._sizes: dict[int, int] = {0: self.capacity}  # free block start -> size
        self._allocated: dict[int, int] = {}  # allocated block start -> size
        self.used = 0

    def round_up(self, size: int) -> int:
        return max(self.align, -(-size // self.align) * self.align)

    def allocate(self, size: int) -> int:
        """Return the offset of a new block of at least ``size`` bytes."""
        need = self.round_up(size)
        for i, off in enumerate(self._offsets):
            have = self._sizes[off]
            if have >= need:
                del self._sizes[off]
                if have == need:
                    del self._offsets[i]
                else:
                    self._offsets[i] = off + need
                    self._sizes[off + need] = have - need
                self._allocated[off] = need
                self.used += need
                return off
        raise OutOfSpace(f"no free block of {need} bytes ({self.capacity - self.used} free, fragmented)")

    def free(self, offset: int) -> int:
        """Release the block at ``offset``; returns its size."""
        size = self._allocated.pop(offset)
        self.used -= size
        i = bisect.bisect_left(self._offsets, offset)
        start, length = offset, size
        # Merge with the following free block if it touches.
        if i < len(self._offsets) and self._offsets[i] == offset + size:
            nxt = self._offsets.pop(i)
            length += self._sizes.pop(nxt)
        # Merge with the preceding free block if it touches.
        if i > 0:
            prev = self._offsets[i - 1]
            if prev + self._sizes[prev] == offset:
                self._sizes[prev] += length
                return size
        self._offsets.insert(i, start)
        self._sizes[start] = length
        return size

    def largest_free(self) -> int:
        return max(self._sizes.values(), default=0)

    def free_blocks(self) -> list[tuple[int, int]]:
        return [(off, self._sizes[off]) for off in self._offsets]
