"""Object pulls between nodes: copying an object into this store, and serving ours.

One pull per object however many readers wait; chunks travel with a credit
window of PULL_WINDOW requests in flight (the ZeroMQ guide's file-transfer
pattern), so a large object neither stalls the link nor floods memory.  The
copy is *secondary*: evicted first when room is needed, and freed when its
primary is.  Chunks of compressible objects travel lz4-compressed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import lz4.block

from ..store.table import StoreFull
from ..wire.messages import Msg
from ..wire.transport import node_of
from .store_service import StoreService

log = logging.getLogger("meshcompute.daemon")

PULL_CHUNK_BYTES = 8 << 20
"""Bytes per chunk of an object pull: large enough to amortise a message, small
enough that a window of them stays modest."""
PULL_WINDOW = 4
"""Chunk requests a pull keeps in flight (the credit window)."""
SAMPLE_BYTES = 65536
"""The start of an object compressed to decide whether its chunks travel compressed."""


@dataclass
class Pull:
    """An object being copied into this node's store from another node."""

    oid: bytes
    source: str  # the daemon that holds it
    offset: int  # where it goes in our arena
    size: int
    next_offset: int = 0
    inflight: int = 0
    received: int = 0
    waiters: list = field(default_factory=list)  # (reader, req_id) to answer when done


class Pulls:
    """Owns the pulls in progress here and the per-object choice of compression for serving.

    Invariants:
      * at most one Pull per object; its block in our arena is an unsealed
        secondary copy that only the pull writes, and it is sealed (then the
        waiters pinned) only once every byte arrived, or freed on any failure;
      * a peer pulling one of ours holds a pin on it from its first chunk
        request until PULL_DONE (or until it is gone), so the block does not
        move while chunks are read from it.
    """

    def __init__(self, store: StoreService, arena: memoryview, address: Callable[[], str],
                 peer_views: Callable[[], dict], send: Callable[..., None]) -> None:
        self.store = store
        self.arena = arena  # the daemon's read-only view of its arena
        self.address = address
        self.peer_views = peer_views
        self.send = send
        self.pulls: dict[bytes, Pull] = {}
        self.compressed: dict[bytes, bool] = {}  # objects we send lz4-compressed

    # ------------------------------------------------------------ pulling in

    def pull(self, oid: bytes, node_id: str, size: int, reader: str, req_id: int | None) -> None:
        """Copy an object from another node's store into ours, then answer the pin."""
        p = self.pulls.get(oid)
        if p is not None:
            p.waiters.append((reader, req_id))
            return
        peer = self.peer_views().get(node_id)
        if peer is None or peer.state not in ("alive", "suspect") or not peer.address:
            if req_id is not None:
                self.send(reader, Msg.REPLY, req_id, None)
            return
        try:
            offset = self.store.table.create(oid, size, peer.address, self.address(), primary=False)
        except StoreFull as err:
            if req_id is not None:
                self.send(reader, Msg.REPLY, req_id, ("full", str(err)))
            return
        p = Pull(oid, peer.address, offset, size, waiters=[(reader, req_id)])
        self.pulls[oid] = p
        self._request_chunks(p)

    def _request_chunks(self, p: Pull) -> None:
        while p.inflight < PULL_WINDOW and p.next_offset < p.size:
            length = min(PULL_CHUNK_BYTES, p.size - p.next_offset)
            self.send(p.source, Msg.PULL_CHUNK, p.oid, p.next_offset, length)
            p.next_offset += length
            p.inflight += 1

    def on_chunk_data(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, compressed, error = msg
        p = self.pulls.get(oid)
        if p is None:
            return
        if error is not None or not frames:
            self._finish(p, ok=False)
            return
        data = memoryview(frames[0])
        try:
            if compressed:
                data = memoryview(lz4.block.decompress(data))
        except lz4.block.LZ4BlockError:
            log.warning("a corrupt chunk of object %s came from %s", oid.hex(), sender)
            self._finish(p, ok=False)
            return
        n = data.nbytes
        if offset + n > p.size:
            self._finish(p, ok=False)
            return
        # pwrite, not the mapping: no page faults on fresh tmpfs pages, which would
        # also queue behind the arena warmer's fallocate.
        written = os.pwrite(self.store.table.arena_fd, data, p.offset + offset)
        if written != n:
            self._finish(p, ok=False)
            return
        p.received += n
        p.inflight -= 1
        if p.received >= p.size:
            self.send(p.source, Msg.PULL_DONE, oid)
            self._finish(p, ok=True)
        else:
            self._request_chunks(p)

    def _finish(self, p: Pull, ok: bool) -> None:
        self.pulls.pop(p.oid, None)
        table = self.store.table
        if not ok:
            self.store.send_replies(table.free([p.oid]))
            for reader, req_id in p.waiters:
                if req_id is not None:
                    self.send(reader, Msg.REPLY, req_id, None)
            return
        self.store.send_replies(table.seal(p.oid))
        for reader, req_id in p.waiters:
            self.store.send_replies(table.pin(p.oid, reader, req_id))

    def node_gone(self, node_id: str) -> None:
        """Pulls from a node that died or left fail (their readers hear None)."""
        for p in [p for p in self.pulls.values() if node_of(p.source) == node_id]:
            self._finish(p, ok=False)

    # ------------------------------------------------------------ serving out

    def on_pull_chunk(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, length = msg
        table = self.store.table
        if offset == 0:
            # The transfer holds a pin (restoring a spilled object) until PULL_DONE.
            replies = table.pin(oid, sender, -1)
            if not replies or not isinstance(replies[0][2], tuple) or replies[0][2][0] == "full":
                self.send(sender, Msg.CHUNK_DATA, oid, offset, False, "the object is not here any more")
                return
            self.store.copy_holders.setdefault(oid, set()).add(sender)
        obj = table.objects.get(oid)
        if obj is None or obj.offset is None or sender not in obj.pins or offset + length > obj.size:
            self.send(sender, Msg.CHUNK_DATA, oid, offset, False, "the object is not here any more")
            return
        if offset == 0:
            sample = bytes(self.arena[obj.offset: obj.offset + min(SAMPLE_BYTES, length)])
            self.compressed[oid] = len(lz4.block.compress(sample)) < 0.8 * len(sample)
        data = self.arena[obj.offset + offset: obj.offset + offset + length]
        if self.compressed.get(oid):
            self.send(sender, Msg.CHUNK_DATA, oid, offset, True, None, frames=[lz4.block.compress(data)])
        else:
            self.send(sender, Msg.CHUNK_DATA, oid, offset, False, None, frames=[data])

    def on_pull_done(self, sender: str, msg: tuple, frames: list) -> None:
        self.compressed.pop(msg[1], None)
        self.store.send_replies(self.store.table.unpin(msg[1], sender))
