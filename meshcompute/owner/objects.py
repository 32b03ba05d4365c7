"""What a process knows about objects: values, readiness, and reference counts.

The owner model (Ray's): the process that submits a task or calls ``put`` owns
the results and alone decides when a value is freed.  A value lives while

* a local ``ObjectRef`` to it exists (``ref_counts``, counted from any thread),
* a pending task holds it as an argument (the task keeps the ref in its args),
* another process (a *borrower*) holds a ref: borrowers register with the owner
  on their first ref and deregister when their last one dies,
* a value that contains it is alive (``Entry.contained``).

A borrowed value lives as long as its owner: when the owner's process or node
dies (PROCESS_GONE, NODE_STATE from our daemon), every borrowed entry of it
that is not already held here inline completes with ``OwnerDiedError``, and
later requests to it fail at once instead of waiting for an answer that never
comes.

Every method here runs on the I/O thread except the two counted under
``ref_lock`` by the runtime.  Invariant: an owned entry is removed only by
``maybe_free``, and only when it is ready and nothing above holds it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import exceptions as exc
from ..wire.messages import Msg
from ..wire.serialization import Serialized, serialize
from ..wire.transport import node_of
from .io import OwnerIo
from .object_ref import ObjectRef

log = logging.getLogger("meshcompute")

PENDING, READY = 0, 1

DEAD_OWNERS_KEPT = 10_000
"""Dead processes remembered, so that a ref to one of their objects arriving late
fails at once (the oldest are forgotten first)."""

BORROWERS_GRACE_S = 10.0
"""After a node is declared dead, how long (s) its processes' borrows of our objects are
kept in case it comes back (the daemons wait as long before they release its holds)."""

LOST_RECHECK_S = 2.0
"""When a reader reports that a copy could not be read from a node this owner still
believes alive, the owner answers again after this long (s): by then the node is
either declared dead (the object is being rebuilt) or reachable again."""


_NO_BORROWERS: frozenset[str] = frozenset()


class Entry:
    """What this process knows about one object.

    Its borrowers, waiters, dependents, getters and contained refs start as shared
    empty tuples (a frozenset), made a list (a set) by the first ``add_*``: most
    entries never have any, and a million queued tasks' entries held 440 bytes of
    empty containers each."""

    __slots__ = (
        "owned", "owner", "state", "value", "loc", "node", "is_error", "borrowers",
        "waiters", "dependents", "getters", "contained", "requested",
    )

    def __init__(self, owned: bool, owner: str) -> None:
        self.owned = owned
        self.owner = owner
        self.state = PENDING
        self.value: Serialized | None = None  # inline value
        self.loc: tuple[int, int] | None = None  # (offset, size) in the store of `node`
        self.node = ""  # node whose store holds the primary copy (when loc is set)
        self.is_error = False
        self.borrowers: set[str] | frozenset[str] = _NO_BORROWERS
        self.waiters: list[Waiter] | tuple = ()
        self.dependents: list[Any] | tuple = ()  # tasks waiting for this value (tasks.Task)
        self.getters: list[str] | tuple = ()  # processes waiting for OBJECT_VALUE
        self.contained: list[ObjectRef] | tuple = ()  # refs kept alive by this value
        self.requested = False

    def add_borrower(self, borrower: str) -> None:
        if self.borrowers:
            self.borrowers.add(borrower)
        else:
            self.borrowers = {borrower}

    def add_waiter(self, w: Waiter) -> None:
        if self.waiters:
            self.waiters.append(w)
        else:
            self.waiters = [w]

    def add_dependent(self, task: Any) -> None:
        if self.dependents:
            self.dependents.append(task)
        else:
            self.dependents = [task]

    def add_getter(self, process: str) -> None:
        if self.getters:
            self.getters.append(process)
        else:
            self.getters = [process]


class Waiter:
    """A user thread waiting for objects (or a reply): counted down on the I/O thread."""

    __slots__ = ("remaining", "event", "value", "done_ids")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = threading.Event()
        self.value: Any = None
        self.done_ids: list[bytes] = []


class ObjectTable:
    """Entries by object id, local ref counts, borrowers; answers GET_OBJECT."""

    def __init__(self, io: OwnerIo, on_dependency_ready: Callable[[Any], None],
                 on_freed: Callable[[bytes], None] = lambda oid: None) -> None:
        self.io = io
        self.entries: dict[bytes, Entry] = {}
        # Small values a user thread put whose entry the I/O thread has not made yet (put_done
        # drops them): a get right after the put reads them here instead of waiting for it.
        # Set by user threads, popped by the I/O thread: single dict operations, never iterated.
        self.fresh: dict[bytes, Serialized] = {}
        # Local ObjectRef counts, changed from any thread under ref_lock.
        self.ref_lock = threading.Lock()
        self.ref_counts: dict[bytes, int] = {}
        self._dependency_ready = on_dependency_ready  # a task's last pending argument became ready
        self._freed = on_freed  # an owned entry was freed (lineage counts it)
        self.dead_owners: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.dead_nodes: set[str] = set()
        self.on_owned_freed: Callable[[], None] | None = None  # a worker re-reports whether it owns objects
        self.pins: Any = None  # the store pins this process keeps (pins.PinCache): let go with the last ref

    def put_fresh(self, oid: bytes, where: tuple, contained: list) -> None:
        """A user thread put a value (put_done follows on the I/O thread): keep a small one
        with no refs inside in ``fresh`` until then."""
        if where[0] == "v" and not contained:
            self.fresh[oid] = where[1]

    def fresh_entry(self, oid: bytes) -> Entry | None:
        """For a user thread's get: the entry of ``oid``, or, while a put of it waits for its turn
        of the I/O thread (``fresh``), one made from its value; None if neither."""
        ser = self.fresh.get(oid)
        if ser is None:  # applied meanwhile, or gone
            e = self.entries.get(oid)
            return e if e is not None and e.state == READY else None
        e = Entry(True, self.io.address)
        e.value, e.state = ser, READY
        return e

    def entry(self, oid: bytes, owner: str) -> Entry:
        """The entry of ``oid``, made (not owned) if this process has none yet."""
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry(False, owner)
        return e

    # ------------------------------------------------------------- ref counting

    def count(self, oid: bytes) -> int:
        """Add one local count to ``oid`` (any thread); returns the count before."""
        with self.ref_lock:
            n = self.ref_counts.get(oid, 0)
            self.ref_counts[oid] = n + 1
        return n

    def uncount(self, oid: bytes) -> bool:
        """Take one local count off ``oid`` (any thread); True when it was the last
        (then ``release`` it, on the I/O thread)."""
        with self.ref_lock:
            n = self.ref_counts.get(oid, 0) - 1
            if n > 0:
                self.ref_counts[oid] = n
                return False
            self.ref_counts.pop(oid, None)
        return True

    def add_borrow(self, oid: bytes, owner: str, req_id: int | None = None) -> None:
        self.entry(oid, owner)
        self.io.send(owner, Msg.ADD_BORROWER, (oid,), req_id)

    def release(self, oid: bytes) -> None:
        """The last local ref of ``oid`` died."""
        if oid in self.ref_counts:  # a new ref appeared meanwhile
            return
        e = self.entries.get(oid)
        if e is None:
            return
        if e.owned:
            if not self.maybe_free(oid, e):
                self._unpin_idle(oid)
        else:
            del self.entries[oid]
            self.io.send(e.owner, Msg.REMOVE_BORROWER, (oid,))
            self._unpin_idle(oid)

    def _let_go(self, oid: bytes, for_good: bool = False) -> bool:
        """No local ref holds ``oid`` (``for_good``: or can read it again): True if our kept
        store pin of it went now (values built on it keep it until they are gone); the
        daemon must then hear it."""
        return self.pins is not None and self.pins.let_go(oid, for_good)

    def _unpin_idle(self, oid: bytes, for_good: bool = False) -> None:
        if self._let_go(oid, for_good):
            self.pins.unpin_later(oid)

    def maybe_free(self, oid: bytes, e: Entry) -> bool:
        """Free an owned entry if nothing holds it any more; True if it was freed."""
        if e.state == PENDING or e.borrowers or oid in self.ref_counts or e.getters:
            return False
        del self.entries[oid]
        if e.loc is not None:
            # Our own kept pin goes with the free: one message, not two.
            self.io.send(self.io.daemon_addr, Msg.STORE_FREE, (oid,), e.node, (oid,) if self._let_go(oid) else ())
        else:
            self._unpin_idle(oid)
        e.contained = ()  # drops our holds on refs inside the value
        e.value = None
        self._freed(oid)
        if self.on_owned_freed is not None:
            self.on_owned_freed()
        return True

    def owns_any(self) -> bool:
        """Whether this process owns an object (its death would lose it)."""
        return any(e.owned for e in self.entries.values())

    def on_add_borrower(self, sender: str, msg: tuple, frames: list) -> None:
        _, oids, req_id = msg
        for oid in oids:
            e = self.entries.get(oid)
            if e is not None and e.owned:
                e.add_borrower(sender)
        if req_id is not None:
            self.io.send(sender, Msg.REPLY, req_id, True)

    def on_remove_borrower(self, sender: str, msg: tuple, frames: list) -> None:
        for oid in msg[1]:
            e = self.entries.get(oid)
            if e is not None and e.owned and sender in e.borrowers:  # a set then, not the shared empty one
                e.borrowers.discard(sender)
                self.maybe_free(oid, e)

    # ------------------------------------------------------------- values

    def set_ready(self, oid: bytes, e: Entry) -> None:
        e.state = READY
        if e.waiters:
            waiters, e.waiters = e.waiters, ()
            for w in waiters:
                w.done_ids.append(oid)
                w.remaining -= 1
                if w.remaining <= 0:
                    w.event.set()
        if e.dependents:
            deps, e.dependents = e.dependents, ()
            for t in deps:
                t.deps -= 1
                if t.deps == 0:
                    self._dependency_ready(t)
        if e.getters:
            getters, e.getters = e.getters, ()
            for g in getters:
                self.send_value(g, oid, e)
            if e.owned:
                self.maybe_free(oid, e)

    def resolve(self, oid: bytes, e: Entry) -> None:
        """Mark an owned value ready, then free it if nothing holds it."""
        self.set_ready(oid, e)
        self.maybe_free(oid, e)

    def fail(self, return_ids: list[bytes], error: BaseException) -> None:
        """Complete the still-pending ``return_ids`` with a system error."""
        ser = serialize(error, True)
        for oid in return_ids:
            e = self.entries.get(oid)
            if e is None or e.state == READY:
                continue
            e.value, e.is_error = ser, True
            self.resolve(oid, e)

    def fail_pending(self, error: BaseException) -> None:
        """Complete every value still awaited here (owned or borrowed) with ``error``."""
        ser = serialize(error, True)
        for oid, e in list(self.entries.items()):
            if e.state != READY:
                e.value, e.loc, e.is_error = ser, None, True
                self.set_ready(oid, e)

    def put_done(self, oid: bytes, where: tuple, contained: list, node_id: str) -> None:
        """A ``put`` (or a large argument) is stored: ("v", Serialized) or ("s", offset, size)."""
        e = Entry(True, self.io.address)
        if where[0] == "v":
            e.value = where[1]
        else:
            e.loc = (where[1], where[2])
            e.node = node_id
        e.contained = contained
        self.entries[oid] = e
        self.resolve(oid, e)
        self.fresh.pop(oid, None)  # only now: a get that saw it there finds the entry ready

    @staticmethod
    def value_fields(e: Entry) -> tuple[tuple, list]:
        if e.loc is not None:
            return ("s", e.loc[0], e.loc[1], e.is_error, e.node), []
        v = e.value
        return ("v", v.meta, len(v.buffers), e.is_error), list(v.buffers)

    def send_value(self, peer: str, oid: bytes, e: Entry) -> None:
        fields, bufs = self.value_fields(e)
        self.io.send(peer, Msg.OBJECT_VALUE, oid, fields, frames=bufs)

    def on_get_object(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, lost_on = msg
        e = self.entries.get(oid)
        if e is None or not e.owned:
            self.io.send(sender, Msg.OBJECT_VALUE, oid, ("lost",))
        elif e.state != READY:
            e.add_getter(sender)
        elif lost_on and e.loc is not None and e.node == lost_on:
            # The reader could not read the copy we know of: answer once that node is
            # declared dead (the value is rebuilt, then sent) or a moment has passed.
            self.io.call_later(LOST_RECHECK_S, self._answer, sender, oid)
        else:
            self.send_value(sender, oid, e)

    def _answer(self, sender: str, oid: bytes) -> None:
        e = self.entries.get(oid)
        if e is None:
            self.io.send(sender, Msg.OBJECT_VALUE, oid, ("lost",))
        elif e.state == READY:
            self.send_value(sender, oid, e)
        else:
            e.add_getter(sender)

    def on_object_value(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, fields = msg
        e = self.entries.get(oid)
        if e is None or e.state == READY:
            return
        fill(e, fields, frames)
        self.set_ready(oid, e)

    def request_value(self, oid: bytes, e: Entry, lost_on: str = "") -> None:
        if e.requested:
            return
        e.requested = True
        if self.owner_dead(e.owner):
            # Completed on the next turn: the caller may still be counting arguments.
            self.io.call_later(0, self._fail_borrowed, [oid], f"its owner {e.owner} died")
        else:
            self.io.send(e.owner, Msg.GET_OBJECT, oid, lost_on)

    def refetch(self, oid: bytes, owner: str, lost_on: str, w: Waiter) -> None:
        """A copy on ``lost_on`` could not be read: ask the owner again (it rebuilds the
        value if that node died) and count ``w`` down when the answer comes."""
        e = self.entry(oid, owner)
        if e.owned:  # our own: wait for a rebuild if one runs, else look again
            if e.state == READY:
                self.io.call_later(LOST_RECHECK_S if e.node == lost_on else 0, self._recheck, oid, w)
                return
        elif e.state == READY:
            e.state, e.loc, e.node, e.requested = PENDING, None, "", False
        e.add_waiter(w)
        if not e.owned:
            self.request_value(oid, e, lost_on)

    def forget_unreferenced(self, oid: bytes) -> None:
        """Drop a borrowed entry made only to refetch a task argument (no ref holds it)."""
        e = self.entries.get(oid)
        if e is not None and not e.owned and oid not in self.ref_counts and not e.waiters and not e.dependents:
            del self.entries[oid]

    def _recheck(self, oid: bytes, w: Waiter) -> None:
        e = self.entries.get(oid)
        if e is None or e.state == READY:
            w.done_ids.append(oid)
            w.event.set()
        else:
            e.add_waiter(w)

    # ------------------------------------------------------------- owner death

    def owner_dead(self, owner: str) -> bool:
        return owner in self.dead_owners or node_of(owner) in self.dead_nodes

    def owners_died(self, addrs: list[str]) -> None:
        """These processes are gone: what we borrow from them is lost."""
        for addr in addrs:
            self.dead_owners[addr] = None
        while len(self.dead_owners) > DEAD_OWNERS_KEPT:
            self.dead_owners.popitem(last=False)
        gone = set(addrs)
        self._fail_borrowed([oid for oid, e in self.entries.items() if not e.owned and e.owner in gone],
                            "its owner died")
        # A dead borrower never says REMOVE_BORROWER: what only it held is freed now.
        for oid, e in list(self.entries.items()):
            if e.owned and e.borrowers & gone:
                e.borrowers -= gone
                self.maybe_free(oid, e)

    def node_died(self, node_id: str) -> None:
        """A node is gone: what we borrow from its processes is lost.  Its processes'
        borrows of ours are dropped only if it is still dead after a grace: it may
        have been taken for dead wrongly, and its borrowers still read."""
        self.dead_nodes.add(node_id)
        self._fail_borrowed([oid for oid, e in self.entries.items()
                             if not e.owned and node_of(e.owner) == node_id], f"its owner's node {node_id} died")
        self.io.call_later(BORROWERS_GRACE_S, self._drop_borrowers_of, node_id)

    def _drop_borrowers_of(self, node_id: str) -> None:
        if node_id not in self.dead_nodes:
            return  # it came back
        for oid, e in list(self.entries.items()):
            if e.owned and any(node_of(b) == node_id for b in e.borrowers):
                e.borrowers = {b for b in e.borrowers if node_of(b) != node_id}
                self.maybe_free(oid, e)

    def node_alive(self, node_id: str) -> None:
        self.dead_nodes.discard(node_id)

    def _fail_borrowed(self, oids: list[bytes], why: str) -> None:
        for oid in oids:
            e = self.entries.get(oid)
            if e is None or (e.state == READY and e.loc is None):
                continue  # gone, or its value is here already
            e.loc, e.node, e.is_error = None, "", True
            self._unpin_idle(oid, for_good=True)  # our refs will read the error, not the store
            e.value = serialize(exc.OwnerDiedError(
                f"Object {oid.hex()} is lost: {why} ({e.owner}). An object lives as long as the "
                "process that created it.", object_id=oid.hex()), True)
            if e.state != READY:
                self.set_ready(oid, e)

    # ------------------------------------------------------------- get / wait

    def watch(self, ids: list[tuple[bytes, str]], w: Waiter) -> None:
        """Count ``w`` down as each ``(object id, owner)`` becomes ready (asking owners for theirs).

        Ids, not ObjectRefs: a ref must not die on the I/O thread (its last holder is
        the user's code), where its release would queue behind every message."""
        for oid, owner in ids:
            e = self.entry(oid, owner)
            if e.state == READY:
                w.done_ids.append(oid)
                w.remaining -= 1
                continue
            e.add_waiter(w)
            if not e.owned:
                self.request_value(oid, e)
        if w.remaining <= 0:
            w.event.set()

    def unwatch(self, ids: list[tuple[bytes, str]], w: Waiter) -> None:
        for oid, _ in ids:
            e = self.entries.get(oid)
            if e is not None and w in e.waiters:
                e.waiters.remove(w)


def fill(e: Entry, fields: tuple, frames: list, first: int = 0) -> int:
    """Store a value description (from a result or OBJECT_VALUE) in ``e``, its buffers
    from ``frames[first:]``; returns frames used.  ``first``, not a slice: a task's
    returns share one frame list, and slicing its rest for each return copied it
    over and over (3,000 returned small arrays, a frame each: 4.5 million items)."""
    kind = fields[0]
    if kind == "v":
        _, meta, nbuf, is_error = fields[:4]
        bufs = [memoryview(f) for f in frames[first:first + nbuf]] if nbuf else []
        e.value = Serialized(meta, bufs, [], is_error)
        e.is_error = is_error
        return nbuf
    if kind == "s":
        _, offset, size, is_error, node = fields[:5]
        e.loc = (offset, size)
        e.node = node
        e.is_error = is_error
        return 0
    # "lost": the owner no longer has it
    e.is_error = True
    e.value = serialize(exc.ObjectLostError("the object was freed or its owner lost it"), True)
    return 0
