"""A process's access to its node's shared-memory store: puts and zero-copy reads.

The daemon keeps the table (where each object is, who pins it); this side maps
the arena and copies bytes.  Called from user threads (the driver's code, a
worker's executor); it talks to the daemon through two callables the runtime
gives it, so it holds no socket.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable
from typing import Any

from .. import exceptions as exc
from ..store.layout import encoded_size, pwrite_object, read_object, write_object
from ..store.shm import PopulatedRanges, Prefaulter, mapping_address
from ..store.spill import DISK_FULL
from ..wire.messages import Msg
from ..wire.serialization import INLINE_THRESHOLD, DeserializeContext, Serialized, deserialize

MAP_AHEAD_MAX = 256 << 20
"""Bytes: after a put, at most this much of the arena beyond its block is mapped ahead (as much
as the object itself below that): enough for the next put of a loop, bounded because the pages
become resident (the daemon's warm pool keeps them while puts go on, docs/store.md)."""


class _Unpinner:
    """Sends STORE_UNPIN when the read-only mapping of an object is unmapped."""

    __slots__ = ("unpin", "object_id")

    def __init__(self, unpin: Callable[[bytes], None], object_id: bytes) -> None:
        self.unpin = unpin
        self.object_id = object_id

    def __call__(self) -> None:
        self.unpin(self.object_id)


class StoreClient:
    def __init__(self, store_path: str, capacity: int, node_id: str,
                 request: Callable[..., Any], unpin: Callable[[bytes], None],
                 seal: Callable[[bytes], None]) -> None:
        self.node_id = node_id
        self._request = request  # request_daemon(msg_type, *fields, timeout=...) -> answer
        self._unpin = unpin  # sends STORE_UNPIN (any thread)
        self._seal = seal  # sends STORE_SEAL (any thread)
        self.fd = os.open(store_path, os.O_RDWR)
        self.capacity = capacity
        self.arena = mmap.mmap(self.fd, capacity)
        self.arena_mv = memoryview(self.arena)
        # Pages of our mapping that are populated: puts there are a plain memcpy.
        self.touched = PopulatedRanges(capacity)
        self.prefaulter = Prefaulter(mapping_address(self.arena), self.touched)

    def put(self, ser: Serialized, owner: str, object_id: bytes | None) -> tuple:
        """Store a value; returns ("v", ser) for small values or ("s", offset, size)."""
        if ser.size <= INLINE_THRESHOLD:
            return ("v", ser)
        lens = [memoryview(b).nbytes for b in ser.buffers]
        size = encoded_size(len(ser.meta), lens)
        answer = self._request(Msg.STORE_CREATE, object_id, size, owner)
        if answer[0] != "ok":
            raise store_full(answer[1])
        _, offset, epoch, punched_at = answer
        # Pages the daemon punched out of the arena since we mapped them are gone from our mapping.
        self.touched.forget_punched(offset, offset + size, punched_at)
        if self.touched.covers(offset, offset + size) or not self.prefaulter.supported:
            # Pages already in our page table: one memcpy per buffer.
            write_object(self.arena_mv[offset: offset + size], ser.meta, ser.buffers, ser.is_error)
            self.touched.add_at(offset, offset + size, epoch)
        else:
            # Pages we never mapped: faulting them in one by one costs several
            # times the copy; pwritev fills them without faults (docs/store.md).
            # Map them in the background so the next put reusing them is a memcpy.
            pwrite_object(self.fd, offset, ser.meta, ser.buffers, ser.is_error)
            self.prefaulter.request(offset, size, epoch)
        # The next block handed out is most likely the one right after this (lowest offsets go
        # first): map it ahead in the background, so that a loop that keeps what it puts
        # writes with memcpy too.  Pages punched meanwhile are forgotten at that put.
        end = -(-(offset + size) // mmap.PAGESIZE) * mmap.PAGESIZE
        ahead = min(size, MAP_AHEAD_MAX, self.capacity - end)
        if ahead > 0 and not self.touched.covers(end, end + ahead):
            self.prefaulter.request(end, ahead, epoch, ahead=True)
        self._seal(object_id)
        return ("s", offset, size)

    def read(self, oid: bytes, node: str, size: int, timeout: float | None,
             on_late: Callable[[Any], None] | None = None) -> tuple[Any, list]:
        """Map an object read-only and deserialize it; returns (value, refs found inside).

        The pin answers where the object is now (it may have moved through a
        spill and restore) and keeps that block from reuse while mapped.  A copy
        on another node is pulled into ours first (the daemon does it).  A pin
        answered after ``timeout`` is handed to ``on_late`` (to unpin it).
        """
        source = (node, size) if node and node != self.node_id else None
        answer = self._request(Msg.STORE_PIN, oid, source, timeout=timeout, on_late=on_late)
        if answer is None:
            raise exc.ObjectLostError(object_id=oid.hex())
        if isinstance(answer[0], str):  # ("full", why): spilled, and no room to read it back
            raise store_full(answer[1])
        offset, size = answer
        mm = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ, offset=offset)
        weakref.finalize(mm, _Unpinner(self._unpin, oid))
        meta, bufs, _ = read_object(memoryview(mm))
        with DeserializeContext() as ctx:
            value = deserialize(meta, bufs)
        del meta, bufs
        return value, ctx.new_borrows

    def close(self) -> None:
        self.prefaulter.close()
        try:
            self.arena_mv.release()
            self.arena.close()
        except Exception:  # views handed to the user are still alive; the OS unmaps at exit
            pass


def store_full(why: str) -> exc.ObjectStoreFullError:
    """The error of an allocation the store refused: OutOfDiskError when a spill ran out of disk."""
    return (exc.OutOfDiskError if str(why).startswith(DISK_FULL) else exc.ObjectStoreFullError)(why)
