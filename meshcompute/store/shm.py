"""Keeping arena pages ready to write: page-table population and pre-allocation.

On tmpfs the cost of a put into memory no process has touched yet is not the
copy: it is the kernel allocating and zeroing each 4 KiB page, then installing
it in the writer's page table one fault at a time (docs/store.md has the
figures).  Three things here take that off the put's path:

* :class:`ArenaWarmer` (daemon side) allocates the tmpfs pages of the low part
  of the arena with ``fallocate`` in the background, at low priority, and
  zeroes them: ``fallocate`` leaves a page unwritten until something first
  touches it, and mapping an unwritten page costs a fault and a zeroing each;
* :func:`populate` installs a range of a writer's mapping in one system call
  (``MADV_POPULATE_READ``, Linux 5.14+) instead of a fault per page; on a
  shared mapping of written tmpfs pages it maps them writable, 16 per fault;
* :class:`Prefaulter` (writer side) does that in the background for blocks the
  writer wrote with ``pwritev``, so the next put reusing them is a plain memcpy,
  and, on a thread of normal priority, chunk by chunk ahead of a put that copies
  behind it (:meth:`Prefaulter.populate_now`); once the writer has put nothing
  for ``IDLE_UNMAP_S`` it drops the pages from its page table again (the file
  keeps them: only this process's resident size shrinks);
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
import time
from array import array
from collections.abc import Callable

from .pages import EPOCH_CHUNK, WINDOW_S

log = logging.getLogger("meshcompute.store")

MADV_DONTNEED = 4
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
CHUNK = 8 << 20
"""Background work is done in chunks of this many bytes, so it yields often."""
PUT_CHUNK = 4 << 20
"""Bytes a put's copy trails its populating thread by: small enough that the copy starts
early (populating 4 MiB takes ~0.3 ms), large enough that each step is one system call."""
IDLE_UNMAP_S = WINDOW_S
"""Seconds without a put after which a writer drops the arena pages it populated from its page
table: as long as the daemon keeps a burst's freed pages warm (store/pages.py)."""

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


def _advise(base: int, offset: int, length: int, advice: int) -> int:
    """``madvise`` the whole pages under ``[offset, offset+length)`` of the mapping at ``base``;
    0 or the errno."""
    if length <= 0:
        return 0
    start = offset - offset % mmap.PAGESIZE
    rc = _madvise()(base + start, offset + length - start, advice)
    return 0 if rc == 0 else ctypes.get_errno()


def populate_write(base: int, offset: int, length: int) -> int:
    """Install pages ``[offset, offset+length)`` of the mapping at ``base`` writable.

    Returns 0, or the errno: EINVAL where the kernel lacks MADV_POPULATE_WRITE
    (before 5.14), ENOMEM/EFAULT when tmpfs has no room for the pages.
    """
    return _advise(base, offset, length, MADV_POPULATE_WRITE)


def populate(base: int, offset: int, length: int) -> int:
    """Install pages ``[offset, offset+length)`` of the shared mapping at ``base``.

    ``MADV_POPULATE_READ``: on tmpfs a read fault maps a page that is already
    written (not a hole, not left unwritten by ``fallocate``) writable and maps
    its neighbours with it, about 3x faster than ``MADV_POPULATE_WRITE`` here.
    Returns 0 or the errno, as :func:`populate_write` does.
    """
    return _advise(base, offset, length, MADV_POPULATE_READ)


def unmap_pages(base: int, offset: int, length: int) -> None:
    """Drop pages ``[offset, offset+length)`` from this process's page table
    (``MADV_DONTNEED`` on a shared file mapping: the file keeps them and their bytes;
    touching them again maps them back)."""
    _advise(base, offset, length, MADV_DONTNEED)


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

    def spans(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(zip(self._starts, self._ends))

    def total(self) -> int:
        with self._lock:
            return sum(e - s for s, e in zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)


class PopulatedRanges(Ranges):
    """The pages of a writer's arena mapping that are populated, and since which punch epoch
    (also the daemon's own mapping, for the chunks it moves: node/chunk_pages.py).

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
        # Several threads update (a writer's and its prefaulter's; the daemon's copier threads):
        # ranges and epochs change together.
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

    def forget_all(self) -> list[tuple[int, int]]:
        """Forget every populated range; returns them."""
        with self._epochs_lock:
            spans = self.spans()
            for start, end in spans:
                self.remove(start, end)
                first, last = start // EPOCH_CHUNK, (end - 1) // EPOCH_CHUNK + 1
                self.since[first:last] = array("q", [self.NEVER]) * (last - first)
            return spans

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


class PopulateJob:
    """One put's block being populated ahead of its copy: :meth:`wait` blocks until the
    block's first bytes are in the page table, or the populating failed."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.end = offset + length
        self.done_upto = offset  # [offset, done_upto) is populated
        self.failed = False  # populating failed, or the put stopped waiting: stop populating
        self._cv = threading.Condition()

    def advance(self, upto: int) -> None:
        with self._cv:
            self.done_upto = upto
            self._cv.notify()

    def fail(self) -> None:
        with self._cv:
            self.failed = True
            self._cv.notify()

    def wait(self, length: int, timeout: float = 5.0) -> bool:
        """True once the block's first ``length`` bytes are populated; False if that failed
        or took over ``timeout`` seconds (the writer then writes with ``pwritev``, and the
        rest of the block is not populated: it may be freed and punched meanwhile)."""
        upto = self.offset + length
        with self._cv:
            if self._cv.wait_for(lambda: self.done_upto >= upto or self.failed, timeout) and not self.failed:
                return True
            self.failed = True
            return False


class Prefaulter:
    """Populates ranges of a writer's arena mapping: in the background, and ahead of a put.

    ``touched`` records what is populated; a put into a covered block copies
    through the mapping at memcpy speed.  Two daemon threads, each started at
    its first use and stopped by ``close`` between chunks:

    * a low-priority one serves :meth:`request` in order, except that one marked
      ``ahead`` (the range a writer's next put most likely lands in) goes before
      all others; it also unmaps what is populated once the writer has put
      nothing for ``idle_unmap_s`` (a process that put 2 GiB once does not keep
      it resident; the daemon's warm pool keeps the pages themselves);
    * one of normal priority serves :meth:`populate_now`, the block a put is
      copying into right now, chunk by chunk ahead of the copy.

    The two never wait for each other: each counts itself in ``_busy`` while it
    touches the mapping, and ``close`` waits for that count to reach 0 (the
    mapping may be closed once it returns).
    """

    def __init__(self, base: int, touched: PopulatedRanges, idle_unmap_s: float | None = IDLE_UNMAP_S) -> None:
        self.base = base
        self.touched = touched
        self.idle_unmap_s = idle_unmap_s
        self.last_put = time.monotonic()
        self.unmapped_bytes = 0  # dropped from the page table after idle periods (statistics, tests)
        self._queue: collections.deque[tuple[int, int, int]] = collections.deque()
        self._jobs: collections.deque[PopulateJob] = collections.deque()
        self._cv = threading.Condition()
        self._busy = 0  # threads touching the mapping now
        self._waiting_for_put = False  # the background thread sleeps until note_put wakes it
        self._thread: threading.Thread | None = None
        self._put_thread: threading.Thread | None = None
        self._closed = False
        self.supported = True

    def request(self, offset: int, length: int, epoch: int, ahead: bool = False) -> None:
        """Populate ``[offset, offset+length)``, a range whose pages are as of punch epoch ``epoch``."""
        with self._cv:
            if self._closed or not self.supported or not self._start_background():
                return
            if ahead:
                self._queue.appendleft((offset, length, epoch))
            else:
                self._queue.append((offset, length, epoch))
            self._cv.notify_all()

    def note_put(self) -> None:
        """The writer puts something now: what it populated stays mapped ``idle_unmap_s`` longer."""
        self.last_put = time.monotonic()
        if self.idle_unmap_s is not None:
            with self._cv:
                # Wake the thread only where it waits for a put (nothing mapped); otherwise its
                # timed wait sees ``last_put`` when it ends: no wake-up per put.
                if self._start_background() and self._waiting_for_put:
                    self._cv.notify_all()

    def unmap_when_idle_for(self, seconds: float | None) -> None:
        """Unmap what is populated after ``seconds`` without a put (None: never)."""
        with self._cv:
            self.idle_unmap_s = seconds
            self._cv.notify_all()

    def populate_now(self, offset: int, length: int) -> PopulateJob:
        """Start populating a put's block; the put copies behind it (:meth:`PopulateJob.wait`)."""
        job = PopulateJob(offset, length)
        with self._cv:
            if self._closed or not self.supported:
                job.fail()
                return job
            if self._put_thread is None:
                thread = threading.Thread(target=self._serve_puts, name="meshcompute-populate", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had (limits, interpreter exit): pwritev
                    job.fail()
                    return job
                self._put_thread = thread
            self._jobs.append(job)
            self._cv.notify_all()
        return job

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._queue.clear()
            for job in self._jobs:
                job.fail()
            self._jobs.clear()
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._busy == 0, 5)

    def _start_background(self) -> bool:  # with self._cv held
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="meshcompute-prefault", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: puts write with pwritev, nothing is queued
                return False
            self._thread = thread
        return True

    def _enter(self) -> bool:
        with self._cv:
            if self._closed:
                return False
            self._busy += 1
            return True

    def _leave(self) -> None:
        with self._cv:
            self._busy -= 1
            if self._closed:
                self._cv.notify_all()

    def _populate(self, pos: int, n: int) -> int:
        if not self._enter():
            return errno.ESHUTDOWN
        try:
            err = populate(self.base, pos, n)
        finally:
            self._leave()
        if err == errno.EINVAL:  # an old kernel: writers use their mapping
            self.supported = False
        return err

    def _serve_puts(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job = self._jobs.popleft()
            pos = job.offset
            while pos < job.end and not job.failed:  # (a put that stopped waiting wants no more)
                n = min(PUT_CHUNK, job.end - pos)
                if self._populate(pos, n):
                    job.fail()  # no room in /dev/shm, or closing: the put writes with pwritev
                    break
                pos += n
                job.advance(pos)

    def _idle_wait(self) -> float | None:
        """Wait for a request (None), or until the writer has been idle long enough that
        its populated pages should go (returns how long that is).  With ``self._cv`` held."""
        while not self._queue and not self._closed:
            idle = self.idle_unmap_s
            if idle is None:
                self._cv.wait()
                continue
            left = self.last_put + idle - time.monotonic()
            if left > 0:
                self._cv.wait(left)
            elif len(self.touched):
                return idle
            else:  # nothing mapped: until the next put (note_put wakes us)
                self._waiting_for_put = True
                try:
                    self._cv.wait()
                finally:
                    self._waiting_for_put = False
        return None

    def _unmap_idle(self, idle: float) -> None:
        if time.monotonic() - self.last_put < idle or not self._enter():
            return
        try:
            for start, end in self.touched.forget_all():
                unmap_pages(self.base, start, end - start)
                self.unmapped_bytes += end - start
        finally:
            self._leave()

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            with self._cv:
                idle = self._idle_wait()
                if self._closed:
                    return
                if idle is None:
                    offset, length, epoch = self._queue.popleft()
            if idle is not None:
                self._unmap_idle(idle)
                continue
            end = offset + length
            pos = offset
            while pos < end:
                n = min(CHUNK, end - pos)
                if self._populate(pos, n):  # no room in /dev/shm: leave the rest to pwritev
                    break
                self.touched.add_at(pos, pos + n, epoch)
                pos += n


class ArenaWarmer:
    """Allocates and zeroes the tmpfs pages of ``[0, length)`` of the arena in the background.

    ``fallocate`` on pages that hold data already changes nothing, so it runs
    regardless of what is allocated.  It leaves new pages unwritten, though:
    the first process to map one pays a fault and the zeroing.  So each chunk
    is then read through a mapping of this thread's own (reading changes no
    byte), which zeroes the pages once, and unmapped again.  ``zeroed`` grows as
    that goes; blocks below it are ready to be populated and copied into at
    memory speed (the STORE_CREATE reply says so).  The region is the warm
    pool's floor (store/pages.py): freed pages beyond the pool go back to the
    kernel, these stay.
    """

    def __init__(self, path: str, length: int, delay: float = 0.5,
                 on_zeroed: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.length = length
        self.delay = delay
        self.done = 0
        self.zeroed = 0
        self.on_zeroed = on_zeroed
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
                if self.zeroed == self.done and self._zero(fd, self.done, n):
                    self.zeroed += n
                    if self.on_zeroed is not None:
                        self.on_zeroed(self.zeroed)
                self.done += n
                # Yield between chunks: on a small machine a tight loop of
                # fallocate starves the node's own loop (gossip answers late).
                if self._stop.wait(0.02):
                    break
        except OSError as err:  # /dev/shm full: not fatal, puts fault pages in themselves
            log.info("stopped pre-allocating the arena at %d bytes: %s", self.done, err)
        finally:
            os.close(fd)

    @staticmethod
    def _zero(fd: int, offset: int, length: int) -> bool:
        """Read ``[offset, offset+length)`` (whole pages) through a mapping of its own, which
        makes tmpfs zero the pages ``fallocate`` left unwritten; False if that failed."""
        try:
            view = mmap.mmap(fd, length, offset=offset)
        except (OSError, ValueError):
            return False
        try:
            base = mapping_address(view)
            if populate(base, 0, length):
                return False
            unmap_pages(base, 0, length)
            return True
        finally:
            view.close()
