"""The store table: which object lives where, who reads it, what may move.

Bookkeeping, no sockets.  The daemon turns each store message into one call
here and sends the replies it returns, so the whole life of an object can be
tested without processes (tests/test_store.py).

The table decides; it does not copy bytes itself.  A spill or a restore is a
job handed to ``copy(job, done)``: the daemon runs it on a helper thread and
calls ``done`` back on its loop (meshcompute/node/copier.py), so the loop keeps
answering while tens of MiB move; without ``copy`` a job runs at once on the
caller's thread.  Meanwhile the object is *moving*: it is neither evicted nor
spilled again, a pin of it waits for the copy (a spill then keeps the object in
memory), a free of it takes effect when the copy is done (the block and the
new file go then), and allocations that need the room being freed wait, in
arrival order, for the copies that make it (``request_create`` answers later).

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
  * pins that processes keep (owner/pins.py) are let go on request: before
    ``StoreFull``, an allocation asks their holders once (releases.py);
  * ``StoreFull`` only when nothing unpinned is left to evict or spill;
  * free pages beyond the warm pool are punched out of the arena (pages.py), a
    range being punched reserved in the allocator until its punch is done.

Replies are returned as lists of ``(peer, req_id, value)`` for the caller to send;
replies that completions of copies produce come from ``take_replies()``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .allocator import Allocator, OutOfSpace
from .pages import PagePool
from .releases import ReleaseRequests
from .spill import DISK_FULL, SpillDir, out_of_disk, spill_dir_for  # noqa: F401 - the daemon imports it here
from .stats import StoreStats, full_message, statistics

log = logging.getLogger("meshcompute.store")


class StoreFull(Exception):
    """No room for an object, even after evicting and spilling what could go."""


@dataclass(eq=False)
class StoreObject:
    object_id: bytes
    size: int  # bytes of the encoded object
    owner: str
    creator: str
    primary: bool = True
    offset: int | None = None  # its block in the arena; None while only on disk (or not placed yet)
    sealed: bool = False
    freed: bool = False
    pins: collections.Counter = field(default_factory=collections.Counter)
    kept_by: set = field(default_factory=set)  # processes whose pin is kept: they let go when asked
    # (peer, req_id) waiting for the seal, or for a spill or restore of it to finish.
    waiting_pins: list = field(default_factory=list)
    spill_path: str | None = None
    spill_bytes: int = 0
    moving: str | None = None  # "spill" or "restore" while one is under way
    copies: int = 0  # copies in flight that read or write its block or its spill file


Reply = tuple  # (peer, req_id, value)

Copy = Callable[[Callable[[], Any], Callable[[Any, BaseException | None], None]], None]
"""``copy(job, done)``: run ``job()`` (bytes only) somewhere, then ``done(result, error)``
on the thread that owns the table."""


@dataclass(eq=False)
class _Wait:
    """An allocation waiting for room: a new object's block, or a spilled object's way back."""

    size: int
    grant: Callable[[int], None]  # the block's offset
    fail: Callable[[str], None]  # why there is no room
    cancelled: Callable[[], bool]  # the object went meanwhile
    asked: bool = False  # holders of kept pins were asked to let go for it (once)


class StoreTable:
    """Owns the object records, the arena's allocator and the spill files of one node.

    Invariants (besides the rules above): an object is in an LRU only while it
    could leave memory now (sealed, in memory, unpinned, not freed, not
    moving); ``_spilling`` is the size of the blocks whose spill copies are in
    flight; a block or file that a copy reads or writes (``copies`` > 0) is
    never released or reused.
    """

    def __init__(self, capacity: int, arena_fd: int = -1, spill_dir: str | None = None,
                 node_id: str = "", copy: Copy | None = None) -> None:
        self.allocator = Allocator(capacity)
        self.capacity = capacity
        self.arena_fd = arena_fd
        self.spill = SpillDir(spill_dir) if spill_dir else None
        self.node_id = node_id
        self.objects: dict[bytes, StoreObject] = {}
        self.retired: set[StoreObject] = set()  # replaced by a retry, freed, still pinned
        # Objects that may leave memory: sealed, in memory, unpinned, not freed, not moving.
        # Oldest use first; a pin removes one, its last unpin puts it back at the end.
        self._lru: dict[bool, collections.OrderedDict] = {
            True: collections.OrderedDict(), False: collections.OrderedDict()}
        self.counts = collections.Counter()
        self.spilled_bytes = 0
        self.spilled_objects = 0
        # Where spill and restore copies run; None: at once, on the caller's thread
        # (their completions still run only after the decision that started them).
        self.copy = copy
        self._inline: list = []  # completions of copies run inline, not yet applied
        self._out: list[Reply] = []  # replies produced, not yet returned
        self._waits: collections.deque[_Wait] = collections.deque()  # FIFO: no create overtakes
        self._spilling = 0  # bytes of blocks being spilled now (free once their copies finish)
        # Processes asked to let go of the pins they keep (STORE_RELEASE), and their answers.
        self.releases = ReleaseRequests(lambda: list(self.objects.values()) + list(self.retired),
                                        self.allocator.size_of, lambda: self.spill is not None)
        self.pages = PagePool(capacity)  # the warm pool; the daemon sets its bounds

    # ---------------------------------------------------------------- writes

    def request_create(self, oid: bytes, size: int, owner: str, creator: str, peer: str, req_id: Any,
                       primary: bool = True) -> list[Reply]:
        """Allocate a block for a new object; ``peer`` hears ``("ok", offset)`` or ``("full",
        explanation)`` under ``req_id``, at once or once spills made room."""
        self._create(oid, size, owner, creator, primary, lambda value: self._out.append((peer, req_id, value)))
        return self._settle()

    def create(self, oid: bytes, size: int, owner: str, creator: str, primary: bool = True) -> int:
        """``request_create`` for a table whose copies run inline: the offset, or StoreFull."""
        box: list = []
        self._create(oid, size, owner, creator, primary, box.append)
        self._run_inline()
        if not box:
            raise RuntimeError("the allocation waits for a copy: use request_create")
        if box[0][0] == "full":
            raise StoreFull(box[0][1])
        return box[0][1]

    def _create(self, oid: bytes, size: int, owner: str, creator: str, primary: bool,
                answer: Callable[[tuple], None]) -> None:
        waiting: list = []
        old = self.objects.pop(oid, None)
        if old is not None:  # a retried task writes its result again
            # Readers waiting for the old copy's seal wait for the new one instead.
            waiting, old.waiting_pins = old.waiting_pins, []
            old.freed = True
            self._drop_spill_file(old)
            self.retired.add(old)
            self._release_if_done(old)
        # The record exists from now on (unsealed, so invisible): pins wait for its seal,
        # and its creator's death or a free cancels the allocation.
        obj = StoreObject(oid, size, owner, creator, primary)
        obj.waiting_pins = waiting
        self.objects[oid] = obj

        def grant(offset: int) -> None:
            obj.offset = offset
            self.counts["created"] += 1
            answer(("ok", offset, *self.pages.punch_info(offset, size)))

        def fail(why: str) -> None:
            if self.objects.get(oid) is obj:
                del self.objects[oid]
            for peer, req_id in obj.waiting_pins:
                if req_id is not None:
                    self._out.append((peer, req_id, None))
            obj.waiting_pins = []
            answer(("full", why))

        self._waits.append(_Wait(size, grant, fail, lambda: obj.freed))

    def seal(self, oid: bytes, keep_pinned_by: str | None = None) -> list[Reply]:
        """The object becomes visible; ``keep_pinned_by``: its writer keeps a pin of it from now on."""
        obj = self.objects.get(oid)
        if obj is None or obj.sealed or obj.offset is None:
            return self._settle()
        obj.sealed = True
        if keep_pinned_by:
            obj.pins[keep_pinned_by] += 1
            obj.kept_by.add(keep_pinned_by)
        self._pin_waiters(obj)
        self._update(obj)
        return self._settle()

    # ----------------------------------------------------------------- reads

    def pin(self, oid: bytes, peer: str, req_id: Any, keep: bool = False) -> list[Reply]:
        """A reader maps the object: reply where it is now (restoring it if spilled).

        Values: ``(offset, size)``; ``None`` if the object is gone; ``("full",
        explanation)`` if it is spilled and no room can be made to read it back.
        A pin of an object being spilled or restored is answered once that copy
        finished (a spill then keeps the object in memory).  ``keep``: a process
        keeps the pin (releases.py).
        """
        obj = self.objects.get(oid)
        if obj is None or obj.freed:
            if req_id is not None:
                self._out.append((peer, req_id, None))
            return self._settle()
        if keep:
            obj.kept_by.add(peer)
        if not obj.sealed or obj.moving is not None:
            obj.waiting_pins.append((peer, req_id))
        elif obj.offset is None:
            obj.waiting_pins.append((peer, req_id))
            self._start_restore(obj)
        else:
            obj.pins[peer] += 1
            self._update(obj)
            if req_id is not None:
                self._out.append((peer, req_id, (obj.offset, obj.size)))
        return self._settle()

    def unpin(self, oid: bytes, peer: str) -> list[Reply]:
        return self.unpin_many((oid,), peer)

    def unpin_many(self, oids, peer: str, reason: str = "unused") -> list[Reply]:
        """``peer`` let go of one pin of each object.  ``reason`` "asked": this answers our
        request to let go of kept pins (``releases``), with those it could (possibly none);
        "closing": the process disconnects, and keeps its other pins without answering."""
        for oid in oids:
            obj = self.objects.get(oid)
            if obj is None or peer not in obj.pins:
                obj = next((o for o in self.retired if o.object_id == oid and peer in o.pins), None)
                if obj is None:
                    continue
            obj.pins[peer] -= 1
            if obj.pins[peer] <= 0:
                del obj.pins[peer]
                obj.kept_by.discard(peer)
            if not self._release_if_done(obj):
                self._update(obj)
        if reason == "asked":
            self.releases.answered(peer)
        elif reason == "closing":
            self.releases.gone(peer)
            for obj in list(self.objects.values()) + list(self.retired):
                obj.kept_by.discard(peer)
        return self._settle()

    def free(self, oids) -> list[Reply]:
        """The owner dropped its last reference to each object."""
        for oid in oids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.freed = True
                self._drop_spill_file(obj)  # readers map the block, never the file
                if not self._release_if_done(obj):
                    self._update(obj)
        return self._settle()

    def process_gone(self, addr: str) -> list[Reply]:
        """A driver or worker exited: drop its pins, its objects and its unfinished writes."""
        self.releases.gone(addr)
        for obj in list(self.objects.values()) + list(self.retired):
            changed = obj.pins.pop(addr, None) is not None
            obj.kept_by.discard(addr)
            if obj.owner == addr or (obj.creator == addr and not obj.sealed):
                if not obj.freed:
                    obj.freed = True
                    self._drop_spill_file(obj)
                changed = True
            obj.waiting_pins = [(p, r) for p, r in obj.waiting_pins if p != addr]
            if changed and not self._release_if_done(obj):
                self._update(obj)
        return self._settle()

    # -------------------------------------------------- copies by the caller

    def hold(self, oid: bytes) -> StoreObject | None:
        """Keep an object's block from being released or reused while the caller copies
        bytes in or out of it off this thread (object pulls); ``release_hold`` after."""
        obj = self.objects.get(oid)
        if obj is None or obj.offset is None or obj.freed:
            return None
        obj.copies += 1
        self._update(obj)
        return obj

    def release_hold(self, obj: StoreObject) -> list[Reply]:
        obj.copies -= 1
        if not self._release_if_done(obj):
            self._update(obj)
        return self._settle()

    def take_replies(self) -> list[Reply]:
        """Replies that completions of copies produced (the owner calls this after running them)."""
        return self._settle()

    # ------------------------------------------------------------ internals

    def _settle(self) -> list[Reply]:
        """Serve waiting allocations and apply inline copies until nothing moves; the replies."""
        self._run_inline()
        out, self._out = self._out, []
        return out

    def _run_inline(self) -> None:
        while True:
            if self._waits:
                self._pump()
            if not self._inline:
                return
            done, result, error = self._inline.pop(0)
            done(result, error)

    def _start_copy(self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        if self.copy is not None:
            self.copy(job, done)
            return
        try:
            result, error = job(), None
        except Exception as e:  # noqa: BLE001 - handed to done, as from a helper thread
            result, error = None, e
        self._inline.append((done, result, error))

    def _update(self, obj: StoreObject) -> None:
        """Keep ``obj``'s place in the LRU consistent with its state."""
        lru = self._lru[obj.primary]
        movable = (obj.sealed and obj.offset is not None and not obj.pins and not obj.freed
                   and obj.moving is None and not obj.copies)
        if movable:
            if obj not in lru:
                lru[obj] = None  # most recently used end
        else:
            lru.pop(obj, None)

    def _pin_waiters(self, obj: StoreObject) -> None:
        for peer, req_id in obj.waiting_pins:
            obj.pins[peer] += 1
            if req_id is not None:
                self._out.append((peer, req_id, (obj.offset, obj.size)))
        obj.waiting_pins.clear()

    def _release_if_done(self, obj: StoreObject) -> bool:
        # Invariant: a block is reused only when its owner freed it, no reader holds
        # a mapping of it and no copy reads or writes it.
        if not obj.freed or obj.pins or obj.copies:
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
                self._out.append((peer, req_id, None))
        obj.waiting_pins = []
        return True

    def _drop_spill_file(self, obj: StoreObject) -> None:
        # A file a copy is reading goes when that copy is done (_release_if_done then).
        if obj.spill_path is not None and not obj.copies:
            SpillDir.remove(obj.spill_path)
            self.spilled_bytes -= obj.spill_bytes
            self.spilled_objects -= 1
            obj.spill_path, obj.spill_bytes = None, 0

    def _pump(self) -> None:
        """Serve waiting allocations in arrival order, as far as room allows."""
        while self._waits:
            w = self._waits[0]
            if w.cancelled():
                self._waits.popleft()
                w.fail("the object was freed before room was found for it")
                continue
            try:
                offset = self._place(w)
            except StoreFull as err:
                self._waits.popleft()
                w.fail(str(err))
                continue
            if offset is None:
                return  # spills are under way; their completions pump again
            self._waits.popleft()
            self.pages.note_allocated(self.allocator.size_of(offset))
            w.grant(offset)

    def _place(self, w: _Wait) -> int | None:
        """A block for ``w``: evicting, then spilling, least recently used first.

        Returns None while spills that will make room are under way; raises
        StoreFull when even moving everything movable cannot make room.
        """
        size = w.size
        try:
            return self.allocator.allocate(size)
        except OutOfSpace:
            pass
        need = self.allocator.round_up(size)
        if need > self.allocator.capacity:
            raise StoreFull(self.full_message(size, "it is larger than the whole store"))
        movable = sum(self.allocator.size_of(o.offset) for lru in self._lru.values() for o in lru
                      if o.primary is False or self.spill is not None)
        soon = self._spilling + self.pages.punching  # free once their copies finish
        short = need - self.allocator.free_bytes() - movable - soon
        if short > 0:
            if self.releases.ask_once(w, short):
                return None  # the holders of kept pins answer first
            raise StoreFull(self.full_message(size))
        while True:
            soon = self._spilling + self.pages.punching
            if soon and self.allocator.free_bytes() + soon >= need:
                return None
            victim = self._victim()
            if victim is None:
                if soon or self.releases.ask_once(w, 0):
                    return None
                raise StoreFull(self.full_message(size, "what is free is fragmented between pinned objects"))
            if not victim.primary:
                self._evict(victim)
            elif victim.spill_path is not None:
                self._drop_block(victim)  # its spill file is still whole: no I/O
            else:
                self._start_spill(victim, w)
                continue
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

    def _drop_block(self, obj: StoreObject) -> None:
        """A spilled primary copy leaves memory (its file holds it)."""
        self._lru[obj.primary].pop(obj, None)
        self.allocator.free(obj.offset)
        obj.offset = None

    def _start_spill(self, obj: StoreObject, w: _Wait) -> None:
        """Copy an unpinned primary copy to disk; its block is free once the copy is done."""
        block = self.allocator.size_of(obj.offset)
        obj.moving = "spill"
        obj.copies += 1
        self._update(obj)
        self._spilling += block
        spill, fd, offset, size, name = self.spill, self.arena_fd, obj.offset, obj.size, obj.object_id.hex()
        self._start_copy(lambda: spill.write(fd, offset, size, name),
                         lambda result, error: self._spilled(obj, block, w, result, error))

    def _spilled(self, obj: StoreObject, block: int, w: _Wait, result: Any, error: BaseException | None) -> None:
        self._spilling -= block
        obj.moving = None
        obj.copies -= 1
        if error is not None:
            log.error("spilling object %s failed: %s", obj.object_id.hex(), error)
            # The object stays in memory; the allocation that wanted the room fails.
            if w in self._waits:
                self._waits.remove(w)
                why = f"spilling to {self.spill.path} failed: {error}"
                w.fail(f"{DISK_FULL}: {self.full_message(w.size, why)}" if out_of_disk(error)
                       else self.full_message(w.size, why))
        else:
            path, nbytes, _codec = result
            obj.spill_path, obj.spill_bytes = path, nbytes
            self.spilled_bytes += nbytes
            self.spilled_objects += 1
            self.counts["spills"] += 1
            self.counts["spilled_bytes"] += obj.size  # written out, ever (metrics)
        if self._release_if_done(obj):
            return  # freed during the copy: block and file go now
        if obj.waiting_pins:
            self._pin_waiters(obj)  # pinned during the copy: it stays in memory
        elif error is None:
            self._drop_block(obj)
        self._update(obj)

    def _start_restore(self, obj: StoreObject) -> None:
        """Read a spilled object back, into whatever block room can be made for."""
        obj.moving = "restore"

        def grant(offset: int) -> None:
            obj.copies += 1
            path, fd, size = obj.spill_path, self.arena_fd, obj.size
            self._start_copy(lambda: SpillDir.read(path, fd, offset, size),
                             lambda result, error: self._restored(obj, offset, error))

        def fail(why: str) -> None:
            obj.moving = None
            self._answer_waiters(obj, ("full", why))

        self._waits.append(_Wait(obj.size, grant, fail, lambda: obj.freed))

    def _restored(self, obj: StoreObject, offset: int, error: BaseException | None) -> None:
        obj.moving = None
        obj.copies -= 1
        if error is not None:
            log.error("could not restore object %s from %s: %s", obj.object_id.hex(), obj.spill_path, error)
            self.allocator.free(offset)
            self._answer_waiters(obj, None)
            self._release_if_done(obj)
            return
        obj.offset = offset
        self.counts["restores"] += 1
        self.counts["restored_bytes"] += obj.size
        if self._release_if_done(obj):
            return  # freed during the copy: the block goes back at once
        self._pin_waiters(obj)
        self._update(obj)

    def _answer_waiters(self, obj: StoreObject, value: Any) -> None:
        for peer, req_id in obj.waiting_pins:
            if req_id is not None:
                self._out.append((peer, req_id, value))
        obj.waiting_pins = []

    def return_pages(self, now: float) -> list[Reply]:
        """Punch the free pages beyond the warm pool out of the arena (store/pages.py)."""
        if self.arena_fd >= 0 and not self._waits and not self._spilling:  # else the room is wanted now
            self.pages.return_pages(self.allocator, self.arena_fd, now, self._start_copy)
        return self._settle()

    # ------------------------------------------------------------ reporting

    def statistics(self) -> StoreStats:
        return statistics(self)

    def full_message(self, size: int, why: str = "") -> str:
        return full_message(self, size, why)
