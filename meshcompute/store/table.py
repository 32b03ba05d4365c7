"""The store table: which object lives where, who reads it, what may move.

Pure bookkeeping plus the spill file I/O: no sockets.  The daemon turns each
store message into one call here and sends the replies it returns, so the whole
life of an object can be tested without processes (tests/test_store.py).

An object (one record) is, in order of its life::

    created (being written; invisible) --seal--> sealed --free--> freed --last unpin--> gone
                                           |  ^
                                  spill    v  |  restore (at a pin)
                                       on disk only

Rules:
  * an object is visible only once sealed: a pin before the seal waits for it;
  * a pinned object never moves (readers map its block), and a block is reused
    only when its object is freed and unpinned;
  * when an allocation does not fit, unpinned *secondary* copies (copies of
    objects owned on other nodes) are evicted first, least recently pinned
    first; then unpinned *primary* copies are spilled to disk, least recently
    pinned first.  A primary copy is never dropped: it is in memory or in its
    spill file until its owner frees it;
  * a spilled object is restored at its next pin, into whatever block is free
    then (possibly spilling others); its spill file stays until the object is
    freed, so spilling it again costs no I/O;
  * ``StoreFull`` only when nothing unpinned is left to evict or spill.

Replies are returned as lists of ``(peer, req_id, value)`` for the caller to send.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field

from .allocator import Allocator, OutOfSpace
from .spill import SpillDir, SpillError

log = logging.getLogger("meshcompute.store")


class StoreFull(Exception):
    """No room for an object, even after evicting and spilling what could go."""


@dataclass(frozen=True)
class StoreStats:
    """One snapshot of a node's store (NODE_INFO's ``"store"`` entry, as a dict)."""

    capacity: int  # bytes of the arena
    used: int  # bytes of the arena in allocated blocks
    objects: int  # objects held, in memory or spilled (freed but still pinned included)
    pinned_objects: int  # objects mapped by at least one reader
    pinned_bytes: int
    spilled_bytes: int  # bytes of spill files on disk
    spilled_objects: int  # objects with a spill file (some may also be in memory again)
    restores: int  # spilled objects read back into memory
    evictions: int  # secondary copies dropped to make room
    spill_dir: str
    spills: int = 0  # spill files written
    unsealed_objects: int = 0  # objects being written
    created: int = 0
    freed: int = 0


@dataclass(eq=False)
class StoreObject:
    object_id: bytes
    size: int  # bytes of the encoded object
    owner: str
    creator: str
    primary: bool = True
    offset: int | None = None  # its block in the arena; None while only on disk
    sealed: bool = False
    freed: bool = False
    pins: collections.Counter = field(default_factory=collections.Counter)
    waiting_pins: list = field(default_factory=list)  # (peer, req_id) waiting for the seal
    spill_path: str | None = None
    spill_bytes: int = 0


Reply = tuple  # (peer, req_id, value)


class StoreTable:
    def __init__(self, capacity: int, arena_fd: int = -1, spill_dir: str | None = None,
                 node_id: str = "") -> None:
        self.allocator = Allocator(capacity)
        self.capacity = capacity
        self.arena_fd = arena_fd
        self.spill = SpillDir(spill_dir) if spill_dir else None
        self.node_id = node_id
        self.objects: dict[bytes, StoreObject] = {}
        self.retired: set[StoreObject] = set()  # replaced by a retry, freed, still pinned
        # Objects that may leave memory: sealed, in memory, unpinned, not freed.
        # Oldest use first; a pin removes one, its last unpin puts it back at the end.
        self._lru: dict[bool, collections.OrderedDict] = {
            True: collections.OrderedDict(), False: collections.OrderedDict()}
        self.counts = collections.Counter()
        self.spilled_bytes = 0
        self.spilled_objects = 0

    # ---------------------------------------------------------------- writes

    def create(self, oid: bytes, size: int, owner: str, creator: str, primary: bool = True) -> int:
        """Allocate a block for a new object; returns its offset or raises StoreFull."""
        waiting: list = []
        old = self.objects.pop(oid, None)
        if old is not None:  # a retried task writes its result again
            # Readers waiting for the old copy's seal wait for the new one instead.
            waiting, old.waiting_pins = old.waiting_pins, []
            old.freed = True
            self._drop_spill_file(old)
            self.retired.add(old)
            self._release_if_done(old, [])
        offset = self._allocate(size)
        obj = StoreObject(oid, size, owner, creator, primary, offset)
        obj.waiting_pins = waiting
        self.objects[oid] = obj
        self.counts["created"] += 1
        return offset

    def seal(self, oid: bytes) -> list[Reply]:
        obj = self.objects.get(oid)
        if obj is None or obj.sealed:
            return []
        obj.sealed = True
        replies = []
        for peer, req_id in obj.waiting_pins:
            obj.pins[peer] += 1
            if req_id is not None:
                replies.append((peer, req_id, (obj.offset, obj.size)))
        obj.waiting_pins.clear()
        self._update(obj)
        return replies

    # ----------------------------------------------------------------- reads

    def pin(self, oid: bytes, peer: str, req_id: int | None) -> list[Reply]:
        """A reader maps the object: reply where it is now (restoring it if spilled).

        Values: ``(offset, size)``; ``None`` if the object is gone; ``("full",
        explanation)`` if it is spilled and no room can be made to read it back.
        """
        obj = self.objects.get(oid)
        if obj is None or obj.freed:
            return [(peer, req_id, None)] if req_id is not None else []
        if not obj.sealed:
            obj.waiting_pins.append((peer, req_id))
            return []
        if obj.offset is None:
            try:
                self._restore(obj)
            except StoreFull as err:
                return [(peer, req_id, ("full", str(err)))] if req_id is not None else []
            except (SpillError, OSError) as err:
                log.error("could not restore object %s from %s: %s", oid.hex(), obj.spill_path, err)
                return [(peer, req_id, None)] if req_id is not None else []
        obj.pins[peer] += 1
        self._update(obj)
        return [(peer, req_id, (obj.offset, obj.size))] if req_id is not None else []

    def unpin(self, oid: bytes, peer: str) -> list[Reply]:
        obj = self.objects.get(oid)
        if obj is None or peer not in obj.pins:
            obj = next((o for o in self.retired if o.object_id == oid and peer in o.pins), None)
            if obj is None:
                return []
        obj.pins[peer] -= 1
        if obj.pins[peer] <= 0:
            del obj.pins[peer]
        replies: list[Reply] = []
        if not self._release_if_done(obj, replies):
            self._update(obj)
        return replies

    def free(self, oids) -> list[Reply]:
        """The owner dropped its last reference to each object."""
        replies: list[Reply] = []
        for oid in oids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.freed = True
                self._drop_spill_file(obj)  # readers map the block, never the file
                if not self._release_if_done(obj, replies):
                    self._update(obj)
        return replies

    def process_gone(self, addr: str) -> list[Reply]:
        """A driver or worker exited: drop its pins, its objects and its unfinished writes."""
        replies: list[Reply] = []
        for obj in list(self.objects.values()) + list(self.retired):
            changed = obj.pins.pop(addr, None) is not None
            if obj.owner == addr or (obj.creator == addr and not obj.sealed):
                if not obj.freed:
                    obj.freed = True
                    self._drop_spill_file(obj)
                changed = True
            obj.waiting_pins = [(p, r) for p, r in obj.waiting_pins if p != addr]
            if changed and not self._release_if_done(obj, replies):
                self._update(obj)
        return replies

    # ------------------------------------------------------------ internals

    def _update(self, obj: StoreObject) -> None:
        """Keep ``obj``'s place in the LRU consistent with its state."""
        lru = self._lru[obj.primary]
        movable = obj.sealed and obj.offset is not None and not obj.pins and not obj.freed
        if movable:
            if obj not in lru:
                lru[obj] = None  # most recently used end
        else:
            lru.pop(obj, None)

    def _release_if_done(self, obj: StoreObject, replies: list[Reply]) -> bool:
        # Invariant: a block is reused only when its owner freed it and no reader
        # holds a mapping of it.
        if not obj.freed or obj.pins:
            return False
        if self.objects.get(obj.object_id) is obj:
            del self.objects[obj.object_id]
        self.retired.discard(obj)
        self._lru[obj.primary].pop(obj, None)
        if obj.offset is not None:
            self.allocator.free(obj.offset)
            obj.offset = None
        self._drop_spill_file(obj)
        self.counts["freed"] += 1
        for peer, req_id in obj.waiting_pins:
            if req_id is not None:
                replies.append((peer, req_id, None))
        obj.waiting_pins = []
        return True

    def _drop_spill_file(self, obj: StoreObject) -> None:
        if obj.spill_path is not None:
            SpillDir.remove(obj.spill_path)
            self.spilled_bytes -= obj.spill_bytes
            self.spilled_objects -= 1
            obj.spill_path, obj.spill_bytes = None, 0

    def _allocate(self, size: int) -> int:
        """A block for ``size`` bytes: evicting, then spilling, least recently used first."""
        try:
            return self.allocator.allocate(size)
        except OutOfSpace:
            pass
        need = self.allocator.round_up(size)
        if need > self.allocator.capacity:
            raise StoreFull(self.full_message(size, "it is larger than the whole store"))
        movable = sum(self.allocator.size_of(o.offset) for lru in self._lru.values() for o in lru
                      if o.primary is False or self.spill is not None)
        if self.allocator.free_bytes() + movable < need:
            raise StoreFull(self.full_message(size))
        while True:
            victim = self._victim()
            if victim is None:
                raise StoreFull(self.full_message(size, "what is free is fragmented between pinned objects"))
            if victim.primary:
                try:
                    self._spill(victim)
                except (SpillError, OSError) as err:
                    log.error("spilling object %s failed: %s", victim.object_id.hex(), err)
                    raise StoreFull(self.full_message(size, f"spilling to {self.spill.path} failed: {err}")) from err
            else:
                self._evict(victim)
            try:
                return self.allocator.allocate(size)
            except OutOfSpace:
                continue

    def _victim(self) -> StoreObject | None:
        for primary in (False, True):
            lru = self._lru[primary]
            if lru and (not primary or self.spill is not None):
                return next(iter(lru))
        return None

    def _evict(self, obj: StoreObject) -> None:
        """Drop an unpinned secondary copy (the owner's node still has the object)."""
        self._lru[False].pop(obj, None)
        if self.objects.get(obj.object_id) is obj:
            del self.objects[obj.object_id]
        self.allocator.free(obj.offset)
        obj.offset = None
        self.counts["evictions"] += 1

    def _spill(self, obj: StoreObject) -> None:
        """Move an unpinned primary copy to disk (no I/O if its spill file exists)."""
        if obj.spill_path is None:
            path, nbytes, _codec = self.spill.write(self.arena_fd, obj.offset, obj.size, obj.object_id.hex())
            obj.spill_path, obj.spill_bytes = path, nbytes
            self.spilled_bytes += nbytes
            self.spilled_objects += 1
            self.counts["spills"] += 1
        self._lru[True].pop(obj, None)
        self.allocator.free(obj.offset)
        obj.offset = None

    def _restore(self, obj: StoreObject) -> None:
        offset = self._allocate(obj.size)
        try:
            SpillDir.read(obj.spill_path, self.arena_fd, offset, obj.size)
        except BaseException:
            self.allocator.free(offset)
            raise
        obj.offset = offset
        self.counts["restores"] += 1

    # ------------------------------------------------------------ reporting

    def statistics(self) -> StoreStats:
        everything = list(self.objects.values()) + list(self.retired)
        pinned = [o for o in everything if o.pins]
        return StoreStats(
            capacity=self.capacity,
            used=self.allocator.used,
            objects=len(everything),
            pinned_objects=len(pinned),
            pinned_bytes=sum(self.allocator.size_of(o.offset) for o in pinned),
            spilled_bytes=self.spilled_bytes,
            spilled_objects=self.spilled_objects,
            restores=self.counts["restores"],
            evictions=self.counts["evictions"],
            spill_dir=self.spill.path if self.spill else "",
            spills=self.counts["spills"],
            unsealed_objects=sum(1 for o in everything if not o.sealed),
            created=self.counts["created"],
            freed=self.counts["freed"],
        )

    def full_message(self, size: int, why: str = "") -> str:
        s = self.statistics()
        in_memory = [o for o in list(self.objects.values()) + list(self.retired) if o.offset is not None]
        writing = sum(self.allocator.size_of(o.offset) for o in in_memory if not o.sealed)
        where = f" to {s.spill_dir}" if s.spill_dir else ""
        spill = (f"{s.spilled_bytes} bytes of {s.spilled_objects} objects are spilled{where}"
                 if self.spill is not None else "spilling is off")
        return (f"The object store of node {self.node_id} cannot fit an object of {size} bytes"
                f"{' (' + why + ')' if why else ''}: {s.used} of {s.capacity} bytes are in use by "
                f"{len(in_memory)} objects in memory: {s.pinned_bytes} bytes pinned by "
                f"readers ({s.pinned_objects} objects; pinned objects cannot be spilled) and {writing} bytes "
                f"being written; {spill}. Drop the values you got from get() and the references you no "
                f"longer need, or start with a larger object_store_memory.")


def spill_dir_for(session_dir: str, root: str | None = None) -> str:
    """Where a node spills: ``<session>/spill``, or ``<root>/meshcompute_<session>``."""
    if root:
        return os.path.join(root, "meshcompute_" + os.path.basename(os.path.normpath(session_dir)))
    return os.path.join(session_dir, "spill")
