"""Object pulls between nodes: copying an object into this store, and serving ours.

One pull per object however many readers wait; chunks travel with a credit
window of PULL_WINDOW requests in flight (the ZeroMQ guide's file-transfer
pattern), so a large object neither stalls the link nor floods memory.  The
copy is *secondary*: evicted first when room is needed, and freed when its
primary is.  Chunks of compressible objects travel lz4-compressed.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lz4.block

from ..store.shm import mapping_address, populate, unmap_pages
from ..store.table import Copy
from ..wire.messages import Msg
from ..wire.sealing import SealedPart
from ..wire.transport import node_of
from .bulk import Reading
from .chunk_pages import ChunkPages, MapFirst
from .store_service import StoreService

log = logging.getLogger("meshcompute.daemon")

PULL_CHUNK_BYTES = 8 << 20
"""Bytes per chunk of an object pull: large enough to amortise a message, small
enough that a window of them stays modest.  With lz4's worst-case growth it stays
within wire.transport.MAX_FRAME_BYTES, so a chunk travels whole, zero-copy."""
PULL_WINDOW = 4
"""Chunk requests a pull keeps in flight (the credit window)."""
SAMPLE_BYTES = 65536
"""The start of an object compressed to decide whether its chunks travel compressed."""
PULL_STALL_S = 10.0
"""Seconds a pull may go without a chunk arriving before the chunks still missing are
asked for again: a dead source is declared dead by gossip well before (~1.5 s) and
fails the pull at once; this catches a live source that lost requests (a reset
connection drops what was queued on it)."""
PULL_RETRIES = 2
"""Times a stalled pull asks again before it fails (its readers then hear None)."""


@dataclass
class Pull:
    """An object being copied into this node's store from another node."""

    oid: bytes
    source: str | None  # the daemon that holds it (None: looking for another after it died)
    offset: int  # where it goes in our arena (-1 until room is made)
    size: int
    next_offset: int = 0
    inflight: int = 0
    received: int = 0
    waiters: list = field(default_factory=list)  # (reader, req_id) to answer when done
    missing: set = field(default_factory=set)  # offsets of chunks asked for and not yet written
    notify: list = field(default_factory=list)  # callables to call when it ends (prefetches), no pin
    progress_at: float = 0.0  # monotonic time of the last chunk (or of the start)
    retries: int = 0
    origin: str | None = None  # the holder that sent us to ``source``, a relay (fallen back to if it fails)
    direct: bool = False  # the holder must serve us itself (its relay failed us once)
    have: set = field(default_factory=set)  # offsets of chunks written: a relay serves them on
    forward: dict = field(default_factory=dict)  # offset -> [(reader, length)] waiting for that chunk
    relayed: set = field(default_factory=set)  # daemons we serve this object on to while it arrives


class Pulls:
    """Owns the pulls in progress here and the serving of chunks of ours to peers.

    Invariants:
      * at most one Pull per object; its block in our arena is an unsealed
        secondary copy that only the pull writes, and it is sealed (then the
        waiters pinned) only once every byte arrived, or freed on any failure;
      * a chunk is decompressed and written on a helper thread (``copy``) while
        the table holds the block, so a pull that fails meanwhile never frees a
        block a chunk is still being written into;
      * a peer pulling one of ours holds a pin on it from its first chunk
        request until PULL_DONE (or until it is gone), so the block does not
        move while chunks are read from it; chunk requests that arrive before
        that pin is answered (the object is being restored) wait for it.
    """

    def __init__(self, store: StoreService, arena: memoryview, address: Callable[[], str],
                 peer_views: Callable[[], dict], send: Callable[..., None], copy: Copy,
                 now: Callable[[], float], locate: Callable[[bytes, Callable[[list], None]], None],
                 bulk_send: Callable[..., None] | None = None) -> None:
        self.store = store
        self.arena = arena  # the daemon's view of its arena
        self._arena_base = mapping_address(arena) if arena.nbytes else 0  # (0: none, pwrite only)
        self.address = address
        self.peer_views = peer_views
        self.send = send
        # Chunk requests, chunks and PULL_DONE travel on the bulk channel (node/bulk.py), in
        # one FIFO per peer: a PULL_DONE never overtakes a chunk request asked again.
        self.bulk_send = bulk_send or send
        self.copy = copy  # copy(job, done): job on a helper thread, done on the loop
        self.now = now  # the monotonic clock
        self.locate = locate  # locate(oid, answer): answer([addresses of daemons holding a sealed copy])
        self.pulls: dict[bytes, Pull] = {}
        # Pulls started, by cause: "prefetch" (a lease request's argument, before the grant)
        # or "read" (a reader's pin found no copy here). NODE_INFO shows them.
        self.started: collections.Counter = collections.Counter()
        self.pulled_bytes = 0  # bytes of objects pulled in whole, ever (metrics)
        self.compressed: dict[bytes, bool] = {}  # objects we send lz4-compressed
        self.serving: dict[tuple[str, bytes], list] = {}  # (peer, oid) -> chunk requests waiting for the pin
        # Transfer pins we hold at daemons declared dead: released (PULL_DONE) if they come back.
        self.owed_done: dict[str, set[bytes]] = {}
        self.tails: dict[bytes, str] = {}  # object of ours -> the daemon that last began pulling it
        self.served_bytes = 0  # bytes of chunks sent to peers, ever
        self.pages = ChunkPages(store.table.capacity)  # arena pages the helper threads keep mapped

    # ------------------------------------------------------------ pulling in

    def pull(self, oid: bytes, node_id: str, size: int, reader: str, req_id: int | None,
             now: float) -> None:
        """Copy an object from another node's store into ours, then answer the pin."""
        p = self.pulls.get(oid)
        if p is not None:
            p.waiters.append((reader, req_id))
            return
        if self._start(oid, node_id, size, now, "read", [(reader, req_id)]) is None and req_id is not None:
            self.send(reader, Msg.REPLY, req_id, None)

    def prefetch(self, oid: bytes, node_id: str, size: int, done: Callable[[], None], now: float) -> bool:
        """Copy an object here ahead of a task that will read it (no pin: the copy is an
        evictable secondary); ``done()`` when it ends.  False when there is nothing to wait
        for: it is here already, or its node is not alive (the reader will find out)."""
        obj = self.store.table.objects.get(oid)
        if obj is not None and not obj.freed:
            return False
        p = self.pulls.get(oid) or self._start(oid, node_id, size, now, "prefetch")
        if p is None:
            return False
        p.notify.append(done)
        return True

    def prefetch_args(self, args: Any, done: Callable[[], None]) -> int:
        """Pull the lease request's arguments this node lacks (``hints["args"]``, from the
        owner: checked here, since any peer may send them); returns how many it waits for."""
        if not isinstance(args, (list, tuple)):
            return 0
        now, waiting = self.now(), 0
        for item in args[:64]:
            if (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], bytes)
                    and isinstance(item[1], int) and 0 < item[1] <= self.store.table.capacity
                    and isinstance(item[2], str) and item[2] != self.store.node_id):
                waiting += self.prefetch(item[0], item[2], item[1], done, now)
        return waiting

    def _start(self, oid: bytes, node_id: str, size: int, now: float, cause: str,
               waiters: list | None = None) -> Pull | None:
        peer = self.peer_views().get(node_id)
        if peer is None or peer.state not in ("alive", "suspect") or not peer.address:
            return None
        self.started[cause] += 1
        p = Pull(oid, peer.address, -1, size, waiters=waiters or [], progress_at=now)
        self.pulls[oid] = p

        def allocated(value: tuple) -> None:
            if self.pulls.get(oid) is not p:
                return  # failed meanwhile
            if value[0] != "ok":
                self.pulls.pop(oid, None)
                for waiter, wreq in p.waiters:
                    if wreq is not None:
                        self.send(waiter, Msg.REPLY, wreq, value)
                self._notify(p)
                return
            p.offset = value[1]
            self._request_chunks(p)

        # Room may have to be made first (spills): the chunks are asked for once it is.
        self.store.create_local(oid, size, peer.address, self.address(), allocated)
        return p

    def _request_chunks(self, p: Pull) -> None:
        while p.inflight < PULL_WINDOW and p.next_offset < p.size:
            length = min(PULL_CHUNK_BYTES, p.size - p.next_offset)
            self.bulk_send(p.source, Msg.PULL_CHUNK, p.oid, p.next_offset, length, p.direct)
            p.missing.add(p.next_offset)
            p.next_offset += length
            p.inflight += 1

    def on_chunk_data(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, compressed, error = msg
        p = self.pulls.get(oid)
        if p is None or p.offset < 0 or offset not in p.missing:
            return  # not ours, or a chunk asked for twice (after a stall) that came already
        if error is not None or not frames:
            if sender != p.source:
                return  # an earlier source's refusal: the current one was asked since
            if (isinstance(error, (list, tuple)) and len(error) == 2 and error[0] == "relay"
                    and isinstance(error[1], str) and p.origin is None and not p.direct):
                self._follow(p, error[1])
            elif p.origin is not None:
                self._fall_back(p)
            else:
                p.missing.discard(offset)
                self._finish(p, ok=False)
            return
        p.missing.discard(offset)
        table = self.store.table
        obj = table.hold(oid)
        if obj is None:
            self._finish(p, ok=False)
            return
        frame, fd, start, room = frames[0], table.arena_fd, p.offset + offset, p.size - offset
        direct = isinstance(frame, SealedPart) and not compressed and frame.nbytes <= room
        how = self._plan_pages(start, frame.nbytes) if direct else None

        def write() -> int:
            if direct and self._open_into_block(frame, start, frame.nbytes, how):
                # Opened straight into the block: no plaintext buffer, no second copy.
                return frame.nbytes
            data = memoryview(frame.open() if isinstance(frame, SealedPart) else frame)
            if compressed:
                data = memoryview(lz4.block.decompress(data))
            n = data.nbytes
            # pwrite, not the mapping: no page faults on fresh tmpfs pages, which would
            # also queue behind the arena warmer's fallocate.
            if n > room or os.pwrite(fd, data, start) != n:
                raise ValueError(f"a chunk of {n} bytes does not fit at {offset} of {p.size}")
            return n

        def written(n: Any, err: BaseException | None) -> None:
            if direct:
                self.pages.done(self.now())
            self.store.send_replies(table.release_hold(obj))
            if self.pulls.get(oid) is not p:
                return  # failed meanwhile
            if err is not None:
                log.warning("a bad chunk of object %s came from %s: %s", oid.hex(), sender, err)
                self._finish(p, ok=False)
                return
            p.received += n
            p.inflight -= 1
            p.progress_at = self.now()
            p.have.add(offset)
            for reader, length in p.forward.pop(offset, []):
                self._serve_partial(p, reader, offset, length)
            if p.received >= p.size:
                self.pulled_bytes += p.size
                self.bulk_send(p.source, Msg.PULL_DONE, oid)
                self._finish(p, ok=True)
            else:
                self._request_chunks(p)

        self.copy(write, written)

    def _finish(self, p: Pull, ok: bool) -> None:
        self.pulls.pop(p.oid, None)
        table = self.store.table
        if p.origin is not None:  # the holder that sent us to a relay: we no longer pull
            self.bulk_send(p.origin, Msg.PULL_DONE, p.oid)
        if not ok:
            if p.source is not None:  # gave up on a live source: its transfer pin goes too
                self.bulk_send(p.source, Msg.PULL_DONE, p.oid)
            self.store.send_replies(table.free([p.oid]))
            for reader, req_id in p.waiters:
                if req_id is not None:
                    self.send(reader, Msg.REPLY, req_id, None)
        else:
            self.store.send_replies(table.seal(p.oid))
            for reader, req_id in p.waiters:
                self.store.send_replies(table.pin(p.oid, reader, req_id, keep=True))  # a process's kept pin
            for reader in p.relayed:  # they read on from the sealed copy, pinned until PULL_DONE
                self.store.send_replies(table.pin(p.oid, reader, None))
        for offset, waiting in p.forward.items():  # only a failed pull leaves chunks not landed
            for reader, _ in waiting:
                self.bulk_send(reader, Msg.CHUNK_DATA, p.oid, offset, False, "the relay lost the object")
        self._notify(p)

    @staticmethod
    def _notify(p: Pull) -> None:
        callbacks, p.notify = p.notify, []
        for done in callbacks:
            done()

    def tick(self, now: float) -> None:
        """The daemon's periodic call: stalled pulls, and mappings no transfer uses any more."""
        self.expire(now)
        self.drop_idle_mappings(now)

    def expire(self, now: float) -> None:
        """Pulls with no chunk for PULL_STALL_S ask for their missing chunks again, PULL_RETRIES
        times, then fail: a pull never waits forever (its readers' get() has its own timeout too)."""
        for p in list(self.pulls.values()):
            if p.offset < 0 or p.source is None or now - p.progress_at < PULL_STALL_S:
                continue
            if p.origin is not None:  # a relay that stalls (its own pull may): the holder serves us
                self._fall_back(p)
                continue
            if p.retries >= PULL_RETRIES:
                log.warning("pull of object %s from %s stalled; giving up", p.oid.hex(), p.source)
                self._finish(p, ok=False)
                continue
            p.retries += 1
            p.progress_at = now
            self._ask_missing(p)

    def process_gone(self, addr: str) -> None:
        """A peer daemon is gone: chunk requests of its that waited for a pin go too."""
        for key in [k for k in self.serving if k[0] == addr]:
            del self.serving[key]
        for p in self.pulls.values():
            p.relayed.discard(addr)
            for offset, waiting in list(p.forward.items()):
                p.forward[offset] = [w for w in waiting if w[0] != addr]

    def node_back(self, node_id: str) -> None:
        """A node declared dead is alive after all: release the transfer pins we hold there."""
        for daemon in [d for d in self.owed_done if node_of(d) == node_id]:
            for oid in self.owed_done.pop(daemon):
                self.bulk_send(daemon, Msg.PULL_DONE, oid)

    def node_forgotten(self, node_id: str) -> None:
        """A dead node stayed dead: nothing of ours there to release."""
        for daemon in [d for d in self.owed_done if node_of(d) == node_id]:
            del self.owed_done[daemon]

    def node_gone(self, node_id: str) -> None:
        """Pulls from a node that died or left go on from another copy, if a live daemon
        holds one (a node that pulled it earlier); else they fail (their readers hear None)."""
        for p in [p for p in self.pulls.values() if p.source is not None and node_of(p.source) == node_id]:
            self.owed_done.setdefault(p.source, set()).add(p.oid)
            p.source = None  # nothing is asked for until a new source is found
            self.locate(p.oid, lambda holders, p=p: self._resume(p, holders))

    def _resume(self, p: Pull, holders: list) -> None:
        if self.pulls.get(p.oid) is not p:
            return
        holders = [h for h in holders if isinstance(h, str) and h]
        if not holders:
            self._finish(p, ok=False)
            return
        p.source = holders[0]
        p.progress_at, p.retries = self.now(), 0
        self.started["resumed"] += 1
        log.info("pull of object %s goes on from %s", p.oid.hex(), p.source)
        if p.offset < 0:
            return  # room is still being made: the chunks are asked for from the new source then
        # The first chunk pins the copy there for the transfer (its bytes are dropped if we
        # have them); then every chunk still missing.
        if 0 not in p.missing:
            self.bulk_send(p.source, Msg.PULL_CHUNK, p.oid, 0, min(PULL_CHUNK_BYTES, p.size), p.direct)
        self._ask_missing(p)
        self._request_chunks(p)

    def _follow(self, p: Pull, relay: str) -> None:
        """The holder sends us to a node that is pulling the object: ask it."""
        p.origin, p.source = p.source, relay
        p.progress_at, p.retries = self.now(), 0
        self.started["relayed"] += 1
        self._ask_missing(p)

    def _fall_back(self, p: Pull) -> None:
        """The relay cannot serve us: back to the holder, which must now serve us itself."""
        log.info("pull of object %s: relay %s failed, back to %s", p.oid.hex(), p.source, p.origin)
        p.source, p.origin, p.direct = p.origin, None, True
        p.progress_at, p.retries = self.now(), 0
        if 0 not in p.missing:  # the first chunk pins the copy there
            self.bulk_send(p.source, Msg.PULL_CHUNK, p.oid, 0, min(PULL_CHUNK_BYTES, p.size), True)
        self._ask_missing(p)

    def _ask_missing(self, p: Pull) -> None:
        """Ask the source again for every chunk asked for and not yet written."""
        for offset in sorted(p.missing):
            self.bulk_send(p.source, Msg.PULL_CHUNK, p.oid, offset, min(PULL_CHUNK_BYTES, p.size - offset), p.direct)

    # ------------------------------------------------------------ serving out

    def _plan_pages(self, start: int, n: int) -> MapFirst | None:
        """On the loop, before a helper thread touches ``[start, start+n)``: how it maps those
        pages first, or None where the daemon's mapping has them.  ``pages.done`` ends it."""
        return self.pages.plan(start, start + n, self.store.table.pages.punch_info(start, n), self.now())

    def _map_pages(self, start: int, n: int, how: MapFirst | None) -> bool:
        """On a helper thread: map pages as ``_plan_pages`` said, in one call (a fault per 64
        KiB of tmpfs would cost more than the copy).  False where they cannot be."""
        if not self._arena_base:
            return False
        if how is not None:
            if populate(self._arena_base, start, n):
                return False
            self.pages.mapped(start, start + n, how)
        return True

    def _open_into_block(self, part: SealedPart, start: int, n: int, how: MapFirst | None) -> bool:
        """Decrypt ``part`` into the arena at ``start`` through the daemon's mapping (copier
        thread).  False, with nothing written, where its pages cannot be mapped; raises
        InvalidTag for a forged chunk (its block is the pull's, unsealed, and the pull then
        fails)."""
        if not self._map_pages(start, n, how):
            return False
        part.open_into(self.arena[start: start + n])
        return True

    def _reading(self, start: int, length: int, release: Callable[[], None]) -> tuple[Reading, Callable[[], None]]:
        """How a helper thread reads a chunk it serves from the arena (through the daemon's
        mapping, its pages mapped first where they are not), and ``release`` wrapped to run
        on the loop once the read is over or given up."""
        how = self._plan_pages(start, length)

        def reading(read: Callable[[], Any]) -> Any:
            self._map_pages(start, length, how)
            return read()

        def finished() -> None:
            self.pages.done(self.now())
            release()
        return reading, finished

    def drop_idle_mappings(self, now: float) -> None:
        """Once no chunk was read or written for as long as the store keeps a burst's pages
        warm (its linger, else its window: store/pages.py), drop the arena pages the helper
        threads mapped from the daemon's page table (on a helper thread: a zap of hundreds
        of MiB takes milliseconds), so an idle node that moved gigabytes stays small.  A
        transfer that pauses less comes back to mapped pages (mapping 256 MiB again on both
        ends cost a pull after a 3 s pause a sixth of its speed)."""
        pool = self.store.table.pages
        span = self.pages.take_idle(now, pool.linger_s if pool.linger else pool.window_s)
        if span is None:
            return
        if not self._arena_base:
            self.pages.dropped()
            return
        start, end = span
        self.copy(lambda: unmap_pages(self._arena_base, start, end - start), lambda _v, _e: self.pages.dropped())

    def on_locate_object(self, sender: str, msg: tuple, frames: list) -> None:
        """A peer's pull lost its source: do we hold a sealed copy? REPLY our address or None."""
        _, req_id, oid = msg
        obj = self.store.table.objects.get(oid) if isinstance(oid, bytes) else None
        held = obj is not None and obj.sealed and not obj.freed
        self.send(sender, Msg.REPLY, req_id, self.address() if held else None)

    def on_pull_chunk(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, length, *rest = msg
        if not (isinstance(oid, bytes) and isinstance(offset, int) and isinstance(length, int)):
            raise ValueError("PULL_CHUNK fields of the wrong types")
        p = self.pulls.get(oid)
        if p is not None and sender != p.source:
            self._relay(p, sender, offset, length)  # it is arriving here: served on as it lands
            return
        if offset == 0 and not (rest and rest[0]) and self._redirect(sender, oid):
            return
        key = (sender, oid)
        if key in self.serving:
            self.serving[key].append((offset, length))  # after the pin, in order
            return
        obj = self.store.table.objects.get(oid)
        if offset == 0 and (obj is None or sender not in obj.pins):  # a repeated first chunk pins once
            # The transfer holds a pin (restoring a spilled object) until PULL_DONE.
            self.serving[key] = []

            def pinned(value: Any) -> None:
                waiting = self.serving.pop(key, [])
                if not isinstance(value, tuple) or value[0] == "full":
                    for o, _ in [(0, length), *waiting]:
                        self.bulk_send(sender, Msg.CHUNK_DATA, oid, o, False, "the object is not here any more")
                    return
                self.store.copy_holders.setdefault(oid, set()).add(sender)
                self._note_tail(oid, sender)
                where = value[0]
                sample = self.arena[where: where + min(SAMPLE_BYTES, length)]
                self.compressed[oid] = len(lz4.block.compress(sample)) < 0.8 * len(sample)
                for o, n in [(0, length), *waiting]:
                    self._serve(sender, oid, o, n)

            self.store.pin(oid, sender, pinned)
        else:
            self._serve(sender, oid, offset, length)

    def _serve(self, sender: str, oid: bytes, offset: int, length: int) -> None:
        table = self.store.table
        obj = table.objects.get(oid)
        if obj is None or obj.offset is None or sender not in obj.pins or offset + length > obj.size:
            self.bulk_send(sender, Msg.CHUNK_DATA, oid, offset, False, "the object is not here any more")
            return
        start = obj.offset + offset
        data = self.arena[start: start + length]
        held = table.hold(oid)  # the block stays while a helper thread reads it
        self.served_bytes += length

        def release_hold() -> None:
            if held is not None:
                self.store.send_replies(table.release_hold(held))

        reading, release = self._reading(start, length, release_hold)

        if not self.compressed.get(oid):
            # Sealed as it lies, straight from the arena.
            self.bulk_send(sender, Msg.CHUNK_DATA, oid, offset, False, None, frames=[data], after=release,
                           reading=reading)
            return

        def sent(packed: Any, err: BaseException | None) -> None:
            release()
            if err is not None:
                self.bulk_send(sender, Msg.CHUNK_DATA, oid, offset, False, f"compressing failed: {err}")
            else:
                self.bulk_send(sender, Msg.CHUNK_DATA, oid, offset, True, None, frames=[packed])

        self.copy(lambda: reading(lambda: lz4.block.compress(data)), sent)

    def _redirect(self, sender: str, oid: bytes) -> bool:
        """A first chunk request for a primary copy of ours that another node is pulling: send
        the reader there instead, so each node forwards what it gets once and four readers
        cost our link one copy (a chain: each new reader goes to the last).  A puller's
        PULL_DONE (to us, also from one we sent elsewhere) ends its turn as the tail."""
        obj = self.store.table.objects.get(oid)
        tail = self.tails.get(oid)
        if obj is None or not obj.primary or not obj.sealed or sender in obj.pins or tail in (None, sender):
            return False
        peer = self.peer_views().get(node_of(tail))
        if peer is None or peer.state != "alive":
            return False
        self._note_tail(oid, sender)
        self.bulk_send(sender, Msg.CHUNK_DATA, oid, 0, False, ("relay", tail))
        return True

    def _note_tail(self, oid: bytes, reader: str) -> None:
        self.tails[oid] = reader
        if len(self.tails) > 4096:  # forget objects that are gone
            objects = self.store.table.objects
            self.tails = {o: r for o, r in self.tails.items() if o in objects}

    def _relay(self, p: Pull, reader: str, offset: int, length: int) -> None:
        if length != min(PULL_CHUNK_BYTES, p.size - offset) or offset % PULL_CHUNK_BYTES or offset < 0:
            self.bulk_send(reader, Msg.CHUNK_DATA, p.oid, offset, False, "not a chunk of this object")
            return
        p.relayed.add(reader)
        if offset in p.have:
            self._serve_partial(p, reader, offset, length)
        else:
            p.forward.setdefault(offset, []).append((reader, length))

    def _serve_partial(self, p: Pull, reader: str, offset: int, length: int) -> None:
        """Serve on a chunk of an object still arriving here (written, so it is in place)."""
        table = self.store.table
        held = table.hold(p.oid)
        if held is None or p.offset < 0:
            self.bulk_send(reader, Msg.CHUNK_DATA, p.oid, offset, False, "the object is not here any more")
            return
        self.served_bytes += length
        start = p.offset + offset
        data = self.arena[start: start + length]
        reading, release = self._reading(start, length, lambda: self.store.send_replies(table.release_hold(held)))
        self.bulk_send(reader, Msg.CHUNK_DATA, p.oid, offset, False, None, frames=[data], after=release,
                       reading=reading)

    def on_pull_done(self, sender: str, msg: tuple, frames: list) -> None:
        p = self.pulls.get(msg[1])
        if p is not None:
            p.relayed.discard(sender)
        if self.tails.get(msg[1]) == sender:
            del self.tails[msg[1]]  # it no longer pulls: the next reader is served here
        self.compressed.pop(msg[1], None)
        self.store.send_replies(self.store.table.unpin(msg[1], sender))
