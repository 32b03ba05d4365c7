"""What a process knows about objects: values, readiness, and reference counts.

The owner model (Ray's): the process that submits a task or calls ``put`` owns
the results and alone decides when a value is freed.  A value lives while

* a local ``ObjectRef`` to it exists (``ref_counts``, counted from any thread),
* a pending task holds it as an argument (the task keeps the ref in its args),
* another process (a *borrower*) holds a ref: borrowers register with the owner
  on their first ref and deregister when their last one dies,
* a value that contains it is alive (``Entry.contained``).

Every method here runs on the I/O thread except the two counted under
``ref_lock`` by the runtime.  Invariant: an owned entry is removed only by
``maybe_free``, and only when it is ready and nothing above holds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import exceptions as exc
from ..wire.messages import Msg
from ..wire.serialization import Serialized, serialize
from .io import OwnerIo
from .object_ref import ObjectRef

log = logging.getLogger("meshcompute")

PENDING, READY = 0, 1


class Entry:
    """What this process knows about one object."""

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
        self.borrowers: set[str] = set()
        self.waiters: list[Waiter] = []
        self.dependents: list[Any] = []  # tasks waiting for this value (tasks.Task)
        self.getters: list[str] = []  # processes waiting for OBJECT_VALUE
        self.contained: list[ObjectRef] = []  # refs kept alive by this value
        self.requested = False


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

    def __init__(self, io: OwnerIo, on_dependency_ready: Callable[[Any], None]) -> None:
        self.io = io
        self.entries: dict[bytes, Entry] = {}
        # Local ObjectRef counts, changed from any thread under ref_lock.
        self.ref_lock = threading.Lock()
        self.ref_counts: dict[bytes, int] = {}
        self._dependency_ready = on_dependency_ready  # a task's last pending argument became ready

    def entry(self, oid: bytes, owner: str) -> Entry:
        """The entry of ``oid``, made (not owned) if this process has none yet."""
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry(False, owner)
        return e

    # ------------------------------------------------------------- ref counting

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
            self.maybe_free(oid, e)
        else:
            # Our read mappings of it unpin themselves when they are unmapped.
            del self.entries[oid]
            self.io.send(e.owner, Msg.REMOVE_BORROWER, (oid,))

    def maybe_free(self, oid: bytes, e: Entry) -> None:
        if e.state == PENDING or e.borrowers or oid in self.ref_counts or e.getters:
            return
        del self.entries[oid]
        if e.loc is not None:
            self.io.send(self.io.daemon_addr, Msg.STORE_FREE, (oid,), e.node)
        e.contained = []  # drops our holds on refs inside the value
        e.value = None

    def on_add_borrower(self, sender: str, msg: tuple, frames: list) -> None:
        _, oids, req_id = msg
        for oid in oids:
            e = self.entries.get(oid)
            if e is not None and e.owned:
                e.borrowers.add(sender)
        if req_id is not None:
            self.io.send(sender, Msg.REPLY, req_id, True)

    def on_remove_borrower(self, sender: str, msg: tuple, frames: list) -> None:
        for oid in msg[1]:
            e = self.entries.get(oid)
            if e is not None and e.owned:
                e.borrowers.discard(sender)
                self.maybe_free(oid, e)

    # ------------------------------------------------------------- values

    def set_ready(self, oid: bytes, e: Entry) -> None:
        e.state = READY
        if e.waiters:
            waiters, e.waiters = e.waiters, []
            for w in waiters:
                w.done_ids.append(oid)
                w.remaining -= 1
                if w.remaining <= 0:
                    w.event.set()
        if e.dependents:
            deps, e.dependents = e.dependents, []
            for t in deps:
                t.deps -= 1
                if t.deps == 0:
                    self._dependency_ready(t)
        if e.getters:
            getters, e.getters = e.getters, []
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
        oid = msg[1]
        e = self.entries.get(oid)
        if e is None or not e.owned:
            self.io.send(sender, Msg.OBJECT_VALUE, oid, ("lost",))
        elif e.state == READY:
            self.send_value(sender, oid, e)
        else:
            e.getters.append(sender)

    def on_object_value(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, fields = msg
        e = self.entries.get(oid)
        if e is None or e.state == READY:
            return
        fill(e, fields, frames)
        self.set_ready(oid, e)

    def request_value(self, oid: bytes, e: Entry) -> None:
        if not e.requested:
            e.requested = True
            self.io.send(e.owner, Msg.GET_OBJECT, oid)

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
            e.waiters.append(w)
            if not e.owned:
                self.request_value(oid, e)
        if w.remaining <= 0:
            w.event.set()

    def unwatch(self, ids: list[tuple[bytes, str]], w: Waiter) -> None:
        for oid, _ in ids:
            e = self.entries.get(oid)
            if e is not None and w in e.waiters:
                e.waiters.remove(w)


def fill(e: Entry, fields: tuple, frames: list) -> int:
    """Store a value description (from a result or OBJECT_VALUE) in ``e``; returns frames used."""
    kind = fields[0]
    if kind == "v":
        _, meta, nbuf, is_error = fields[:4]
        e.value = Serialized(meta, [memoryview(f) for f in frames[:nbuf]], [], is_error)
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
