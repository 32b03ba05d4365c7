"""Keeping arena pages ready to write: page-table population and pre-allocation.

On tmpfs the cost of a put into memory no process has touched yet is not the
copy: it is the kernel allocating and zeroing each 4 KiB page, then installing
it in the writer's page table one fault at a time (docs/store.md has the
figures).  Three things here take that off the put's path:

* :class:`ArenaWarmer` (daemon side) allocates the tmpfs pages of the low part
  of the arena with ``fallocate`` in the background, at low priority;
* :func:`populate_write` installs a range of a writer's mapping in one system
  call (``MADV_POPULATE_WRITE``, Linux 5.14+) instead of a fault per page;
* :class:`Prefaulter` (writer side) does that in the background for blocks the
  writer wrote with ``pwritev``, so the next put reusing them is a plain memcpy;
  :class:`PopulatedRanges` remembers which pages of the writer's mapping are
  populated, and forgets those the daemon punched out of the arena since
  (store/pages.py: freed pages beyond the warm pool go back to the kernel).
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import errno
import logging
import mmap
import os
import threading
from array import array

from .pages import EPOCH_CHUNK

log = logging.getLogger("meshcompute.store")

MADV_POPULATE_WRITE = 23
CHUNK = 8 << 20
"""Background work is done in chunks of this many bytes, so it yields often."""

_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise


def mapping_address(mm: mmap.mmap) -> int:
    buf = (ctypes.c_char * 1).from_buffer(mm)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf


def populate_write(base: int, offset: int, length: int) -> int:
    """Install pages ``[offset, offset+length)`` of the mapping at ``base`` writable.

    Returns 0, or the errno: EINVAL where the kernel lacks MADV_POPULATE_WRITE
    (before 5.14), ENOMEM/EFAULT when tmpfs has no room for the pages.
    """
    if length <= 0:
        return 0
    start = offset - offset % mmap.PAGESIZE
    rc = _madvise()(base + start, offset + length - start, MADV_POPULATE_WRITE)
    return 0 if rc == 0 else ctypes.get_errno()


def lower_thread_priority(nice: int = 10) -> None:
    """Make the calling thread yield the CPU to everything else (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        pass


class Ranges:
    """A set of byte ranges ``[start, end)`` kept merged and sorted (thread-safe)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._lock = threading.Lock()

    def add(self, start: int, end: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._ends, start)  # first range ending at or after start
            j = bisect.bisect_right(self._starts, end)  # ranges starting after end stay
            if i < j:
                start = min(start, self._starts[i])
                end = max(end, self._ends[j - 1])
            self._starts[i:j] = [start]
            self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        with self._lock:
            i = bisect.bisect_right(self._ends, start)  # first range ending after start
            j = bisect.bisect_left(self._starts, end)  # ranges starting at or after end stay
            keep_s: list[int] = []
            keep_e: list[int] = []
            if i < j:
                if self._starts[i] < start:
                    keep_s.append(self._starts[i])
                    keep_e.append(start)
                if self._ends[j - 1] > end:
                    keep_s.append(end)
                    keep_e.append(self._ends[j - 1])
            self._starts[i:j] = keep_s
            self._ends[i:j] = keep_e

    def covers(self, start: int, end: int) -> bool:
        with self._lock:
            i = bisect.bisect_right(self._starts, start) - 1
            return i >= 0 and self._ends[i] >= end

    def total(self) -> int:
        with self._lock:
            return sum(e - s for s, e in zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)


class PopulatedRanges(Ranges):
    """The pages of a writer's arena mapping that are populated, and since which punch epoch.

    ``since[c]``: the daemon's punch epoch (store/pages.py) when the oldest
    populated range still recorded in chunk ``c`` was recorded, ``NEVER`` for
    none.  A punch later than that in the chunk may have taken those pages out
    of the mapping: :meth:`forget_punched` drops the whole chunk (a put there
    then uses ``pwritev`` and maps it again), so a put never copies through a
    mapping it only believes populated.
    """

    NEVER = 1 << 62

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.since = array("q", [self.NEVER]) * (capacity // EPOCH_CHUNK + 1)
        # The writer's thread and the prefaulter's both update: ranges and epochs change together.
        self._epochs_lock = threading.Lock()

    def add_at(self, start: int, end: int, epoch: int) -> None:
        """Pages ``[start, end)`` were populated after every punch up to ``epoch`` (the
        epoch the daemon reported when it granted their block)."""
        first, last = start // EPOCH_CHUNK, (end - 1) // EPOCH_CHUNK + 1
        with self._epochs_lock:
            chunks = self.since[first:last]
            if max(chunks) > epoch:  # (a put loop over the same block skips this)
                self.since[first:last] = array("q", [min(s, epoch) for s in chunks])
            self.add(start, end)

    def forget_punched(self, start: int, end: int, punched_at: int) -> None:
        """The block ``[start, end)``'s chunks were last punched at epoch ``punched_at``."""
        first, last = start // EPOCH_CHUNK, (end - 1) // EPOCH_CHUNK + 1
        with self._epochs_lock:
            if min(self.since[first:last]) >= punched_at:  # nothing punched since we mapped it
                return
            for c in range(first, last):
                if self.since[c] < punched_at:
                    self.since[c] = self.NEVER
                    self.remove(c * EPOCH_CHUNK, (c + 1) * EPOCH_CHUNK)


class Prefaulter:
    """Populates ranges of a writer's arena mapping in a background thread.

    ``touched`` records what is populated; a put into a covered block copies
    through the mapping at memcpy speed.  The thread starts at the first request
    and is a daemon thread; ``close`` stops it between chunks.  Requests are
    served in order, except that one marked ``ahead`` (the range a writer's
    next put most likely lands in) goes before all others.
    """

    def __init__(self, base: int, touched: PopulatedRanges) -> None:
        self.base = base
        self.touched = touched
        self._queue: collections.deque[tuple[int, int, int]] = collections.deque()
        self._cv = threading.Condition()
        self._map_lock = threading.Lock()  # held while touching the mapping
        self._thread: threading.Thread | None = None
        self._closed = False
        self.supported = True

    def request(self, offset: int, length: int, epoch: int, ahead: bool = False) -> None:
        """Populate ``[offset, offset+length)``, a range whose pages are as of punch epoch ``epoch``."""
        with self._cv:
            if self._closed or not self.supported:
                return
            if ahead:
                self._queue.appendleft((offset, length, epoch))
            else:
                self._queue.append((offset, length, epoch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meshcompute-prefault", daemon=True)
                self._thread.start()
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify()
        with self._map_lock:  # the mapping may be closed once this returns
            pass

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                offset, length, epoch = self._queue.popleft()
            end = offset + length
            pos = offset
            while pos < end:
                n = min(CHUNK, end - pos)
                with self._map_lock:
                    if self._closed:
                        return
                    err = populate_write(self.base, pos, n)
                if err == errno.EINVAL:  # an old kernel: writers use their mapping
                    self.supported = False
                    return
                if err:  # no room in /dev/shm: leave the rest to pwritev
                    break
                self.touched.add_at(pos, pos + n, epoch)
                pos += n


class ArenaWarmer:
    """Allocates the tmpfs pages of ``[0, length)`` of the arena in the background.

    ``fallocate`` on pages that hold data already changes nothing, so it runs
    regardless of what is allocated.  The region is the warm pool's floor
    (store/pages.py): freed pages beyond the pool go back to the kernel, these stay.
    """

    def __init__(self, path: str, length: int, delay: float = 0.5) -> None:
        self.path = path
        self.length = length
        self.delay = delay
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshcompute-warm", daemon=True)

    def start(self) -> None:
        if self.length > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        lower_thread_priority(19)
        if self._stop.wait(self.delay):  # let the node's own start-up go first
            return
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return
        try:
            while self.done < self.length and not self._stop.is_set():
                n = min(CHUNK, self.length - self.done)
                os.posix_fallocate(fd, self.done, n)
                self.done += n
                # Yield between chunks: on a small machine a tight loop of
                # fallocate starves the node's own loop (gossip answers late).
                if self._stop.wait(0.02):
                    break
        except OSError as err:  # /dev/shm full: not fatal, puts fault pages in themselves
            log.info("stopped pre-allocating the arena at %d bytes: %s", self.done, err)
        finally:
            os.close(fd)
