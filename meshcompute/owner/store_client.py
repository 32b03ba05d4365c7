"""A process's access to its node's shared-memory store: puts and zero-copy reads.

The daemon keeps the table (where each object is, who pins it); this side maps
the arena once, copies bytes in, and builds values on read-only views of its
mapping.  The pins it holds are kept (owner/pins.py), so a get of an object this
process already read or put sends no message.  Called from user threads (the
driver's code, a worker's executor); it talks to the daemon through callables
the runtime gives it, so it holds no socket.
"""

from __future__ import annotations

import collections
import concurrent.futures
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any

from .. import exceptions as exc
from ..store.layout import (
    encoded_size,
    pwrite_object,
    read_object,
    write_object,
    write_object_behind,
    write_object_split,
)
from ..store.shm import PUT_CHUNK, PopulatedRanges, Prefaulter, mapping_address
from ..store.spill import DISK_FULL
from ..wire.messages import Msg
from ..wire.serialization import INLINE_THRESHOLD, DeserializeContext, Serialized, deserialize
from .pins import PinCache

MAP_AHEAD_MAX = 256 << 20
"""Bytes: after a put, at most this much of the arena beyond its block is mapped ahead (as much
as the object itself below that): enough for the next put of a loop, bounded because the pages
become resident (the daemon's warm pool keeps them while puts go on, docs/store.md)."""


SPLIT_COPY_MIN = 16 << 20
"""Bytes: a put at least this large into pages we have mapped is copied by two threads, half each
(one thread's memcpy into 4 KiB tmpfs pages does ~11 GB/s here, two ~15; below this size the
hand-over to the second thread costs more than it saves)."""
POPULATE_BEHIND_MIN = 4 << 20
"""Bytes: a put at least this large into written pages we have not mapped copies behind a thread
that maps them; a smaller one is written with pwritev (as fast when there is little to overlap)."""


class StoreClient:
    def __init__(self, store_path: str, capacity: int, node_id: str,
                 request: Callable[..., Any], unpin: Callable[..., None],
                 seal: Callable[..., None], post: Callable[..., None],
                 referenced: Callable[[bytes], bool]) -> None:
        self.node_id = node_id
        self._request = request  # request_daemon(msg_type, *fields, timeout=...) -> answer
        self._unpin = unpin  # unpin(object_ids, reason): sends STORE_UNPIN (any thread)
        self._seal = seal  # seal(object_id, keep_pinned): sends STORE_SEAL (any thread)
        self.fd = os.open(store_path, os.O_RDWR)
        self.capacity = capacity
        self.arena = mmap.mmap(self.fd, capacity)
        self.arena_mv = memoryview(self.arena)
        self.closed = False
        # Values are built on read-only views of this one mapping: no mmap per get.
        self.pins = PinCache(self.arena_mv.toreadonly(), referenced,
                             lambda oid, ref: None if self.closed else post(self.pins.value_gone, oid, ref))
        # Pages of our mapping that are populated: puts there are a plain memcpy.
        self.touched = PopulatedRanges(capacity)
        self.prefaulter = Prefaulter(mapping_address(self.arena), self.touched)
        # How puts were written: "mapped" (pages in our page table), "populated" (mapped
        # while copying), "pwritev" (statistics; tests count them).
        self.writes: collections.Counter = collections.Counter()
        self._two_cores = len(os.sched_getaffinity(0)) >= 2
        self._last_put_end: int | None = None  # where our last put's block ended (mapping ahead)
        self._copier: concurrent.futures.ThreadPoolExecutor | None = None
        self._copier_lock = threading.Lock()

    def _run_on_copier(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Start ``fn`` on this process's copy thread; returns a call that waits for it.
        Where no thread can start (interpreter exit), runs ``fn`` here first."""
        try:
            with self._copier_lock:
                if self._copier is None:
                    self._copier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="meshcompute-copy")
                return self._copier.submit(fn).result
        except RuntimeError:
            fn()
            return lambda: None

    def put(self, ser: Serialized, owner: str, object_id: bytes | None, keep_pinned: bool = False) -> tuple:
        """Store a value; returns ("v", ser) for small values or ("s", offset, size).

        With ``keep_pinned`` (a put by the process that will hold the ref) the seal
        pins the object for this process, and gets of it here need no message."""
        if ser.size <= INLINE_THRESHOLD:
            return ("v", ser)
        lens = [memoryview(b).nbytes for b in ser.buffers]
        size = encoded_size(len(ser.meta), lens)
        answer = self._request(Msg.STORE_CREATE, object_id, size, owner)
        if answer[0] != "ok":
            raise store_full(answer[1])
        _, offset, epoch, punched_at, written = answer
        self.prefaulter.note_put()
        # Pages the daemon punched out of the arena since we mapped them are gone from our mapping.
        self.touched.forget_punched(offset, offset + size, punched_at)
        if self.touched.covers(offset, offset + size) or not self.prefaulter.supported:
            # Pages already in our page table: one memcpy per buffer (a large object's on two cores).
            if size >= SPLIT_COPY_MIN and self._two_cores:
                write_object_split(self.arena_mv[offset: offset + size], ser.meta, ser.buffers, ser.is_error,
                                   self._run_on_copier)
            else:
                write_object(self.arena_mv[offset: offset + size], ser.meta, ser.buffers, ser.is_error)
            self.touched.add_at(offset, offset + size, epoch)
            self.writes["mapped"] += 1
        elif written and size >= POPULATE_BEHIND_MIN:
            # Pages in memory but not in our page table: a thread maps them chunk by
            # chunk while this one copies behind it, so mapping costs no time of its own.
            job = self.prefaulter.populate_now(offset, size)
            if write_object_behind(self.arena_mv[offset: offset + size], ser.meta, ser.buffers, ser.is_error,
                                   job.wait, PUT_CHUNK):
                self.touched.add_at(offset, offset + size, epoch)
                self.writes["populated"] += 1
            else:  # no room in /dev/shm to map them (or closing): write the whole object again
                pwrite_object(self.fd, offset, ser.meta, ser.buffers, ser.is_error)
                self.writes["pwritev"] += 1
        else:
            # Pages we never mapped, possibly never written (mapping each would cost a fault
            # and its zeroing): pwritev fills them without faults (docs/store.md).
            # Map them in the background so the next put reusing them is a memcpy.
            pwrite_object(self.fd, offset, ser.meta, ser.buffers, ser.is_error)
            self.prefaulter.request(offset, size, epoch)
            self.writes["pwritev"] += 1
        # Where our blocks march up the arena (this one starts past the last one: we keep what
        # we put), the next block handed out is most likely the one right after this (lowest
        # offsets go first): map it ahead in the background, so that a loop that keeps what it
        # puts writes with memcpy too.  A put that reuses an earlier block (a loop that frees
        # what it put) will most likely reuse this one, mapped now; a put alone says nothing
        # yet.  Mapping ahead competes for the CPU with whatever reads the object meanwhile.
        # Pages punched meanwhile are forgotten at that put.
        end = -(-(offset + size) // mmap.PAGESIZE) * mmap.PAGESIZE
        marching, self._last_put_end = self._last_put_end is not None and offset >= self._last_put_end, end
        ahead = min(size, MAP_AHEAD_MAX, self.capacity - end)
        if marching and ahead > 0 and not self.touched.covers(end, end + ahead):
            self.prefaulter.request(end, ahead, epoch, ahead=True)
        if keep_pinned:
            self.pins.add(object_id, offset, size, use=False)
        self._seal(object_id, keep_pinned)
        return ("s", offset, size)

    def read(self, oid: bytes, node: str, size: int, timeout: float | None) -> tuple[Any, list]:
        """Deserialize a stored object on a read-only view of the arena; returns (value, refs found inside).

        An object this process holds a pin of is read at once.  Otherwise the pin
        answers where the object is now (it may have moved through a spill and
        restore) and keeps it there while the pin is held; a copy on another node
        is pulled into ours first (the daemon does it).  A pin answered after
        ``timeout`` is unpinned.
        """
        view = self.pins.view(oid)
        if view is None:
            source = (node, size) if node and node != self.node_id else None
            unpin = self._unpin
            answer = self._request(
                Msg.STORE_PIN, oid, source, timeout=timeout,
                on_late=lambda late: unpin([oid], "unused") if isinstance(late, tuple) and not isinstance(
                    late[0], str) else None)
            if answer is None:
                raise exc.ObjectLostError(object_id=oid.hex())
            if isinstance(answer[0], str):  # ("full", why): spilled, and no room to read it back
                raise store_full(answer[1])
            view, kept = self.pins.add(oid, answer[0], answer[1], use=True)
            if not kept:
                self._unpin([oid], "unused")
        meta, bufs, _ = read_object(memoryview(view))
        del view  # the views sliced from it hold it: the pin is idle once the value is gone
        with DeserializeContext() as ctx:
            value = deserialize(meta, bufs)
        del meta, bufs
        return value, ctx.new_borrows

    def flush_unpins(self) -> None:
        """Send the unpins decided this turn, in one STORE_UNPIN (I/O thread, after each turn)."""
        oids = self.pins.take_unpins()
        if oids:
            self._unpin(oids, "unused")

    def on_store_release(self, oids: list) -> None:
        """The daemon needs room (STORE_RELEASE): let go of the idle pins among ``oids``
        and answer, even with none, so that it stops waiting for us."""
        self._unpin(self.pins.release_idle(oids), "asked")

    def close(self) -> None:
        self.closed = True  # values that die from now on unpin nothing: the daemon drops our pins when we exit
        self.prefaulter.close()
        if self._copier is not None:
            self._copier.shutdown(wait=True)
        try:
            self.pins.close()
            self.arena_mv.release()
            self.arena.close()
        except Exception:  # views handed to the user are still alive; the OS unmaps at exit
            pass
        # self.fd stays open: a put still running on another thread writes with it, and a
        # number closed here could be some other file's by then.  One per init(), closed at exit.


def store_full(why: str) -> exc.ObjectStoreFullError:
    """The error of an allocation the store refused: OutOfDiskError when a spill ran out of disk."""
    return (exc.OutOfDiskError if str(why).startswith(DISK_FULL) else exc.ObjectStoreFullError)(why)
