"""Streaming results: a generator task's values, each usable as soon as it is yielded.

A task (or actor method) called with ``num_returns="streaming"`` sends each
yielded value to its owner as it comes (STREAM_ITEM: the value, or where it is
stored); the consumer's ``ObjectRefGenerator`` hands out a ref per item, in
order.  The task's one regular return is its *completion* object, ready when
the generator is exhausted (None) or raised (the error); ``num_returns=
"dynamic"`` is the same stream whose completion value is the list of refs.

Invariants (I/O thread):

* item ``i`` of task ``t`` is object ``object_id(t, i + 1)``; the completion is
  ``object_id(t, 0)``;
* an item the consumer has not taken yet is held by its stream (one count in
  ``ref_counts``, taken over by the ref the consumer gets), so it cannot be
  freed before it is read; dropping the generator releases what it never took;
* a retried task sends its items again from the start: those already here are
  dropped (a generator task is assumed to yield the same values again);
* with a window ``w``, the worker yields item ``i`` only once the consumer took
  item ``i - w`` (STREAM_CONSUMED): the consumer's pace bounds what is in flight.
"""

from __future__ import annotations

from typing import Any

from ..wire import ids
from ..wire.messages import Msg
from ..wire.serialization import DeserializeContext
from .handoff import release_handoff
from .io import OwnerIo
from .object_ref import rebuild_ref
from .objects import READY, Entry, ObjectTable, Waiter, fill

END = "end"  # what next() answers once the stream is exhausted
FAILED = "failed"  # ... once it ended with an error no item carried (the task failed): get() the completion


class Stream:
    """One generator task's items as they arrive.  It waits for its completion object
    the way a task waits for an argument (``deps``): ObjectTable counts it down."""

    __slots__ = ("task_id", "done_oid", "items", "waiters", "deps", "dynamic", "worker", "window", "ended",
                 "released", "error_sent")

    def __init__(self, task_id: bytes, dynamic: bool, window: int | None) -> None:
        self.task_id = task_id
        self.done_oid = ids.object_id(task_id, 0)
        self.items: list[bytes] = []
        self.waiters: list[Waiter] = []
        self.deps = 1
        self.dynamic = dynamic
        self.worker: str | None = None  # who sends the items (backpressure acks go there)
        self.window = window
        self.ended = False
        self.released = 0  # items whose hold is released (taken by the consumer, or dropped)
        self.error_sent = False  # an item carried the generator's error

    actor_id = None  # never an actor call: ObjectTable's dependency hook tells it from one


class Streams:
    """The streams of the generator tasks this process owns."""

    def __init__(self, io: OwnerIo, objects: ObjectTable) -> None:
        self.io = io
        self.objects = objects
        self.streams: dict[bytes, Stream] = {}

    def open(self, task_id: bytes, dynamic: bool, window: int | None) -> None:
        """A generator task was submitted (its completion entry exists already)."""
        s = self.streams[task_id] = Stream(task_id, dynamic, window)
        self.objects.entries[s.done_oid].add_dependent(s)

    def on_stream_item(self, sender: str, msg: tuple, frames: list) -> None:
        _, task_id, index, fields = msg
        oid = ids.object_id(task_id, index + 1)
        s = self.streams.get(task_id)
        if s is None or index < len(s.items) or s.ended:  # dropped, or sent again by a retry
            if fields[0] == "s" and (s is None or oid not in self.objects.entries
                                     or self.objects.entries[oid].node != fields[4]):
                self.io.send(self.io.daemon_addr, Msg.STORE_FREE, (oid,), fields[4], ())
            if fields[-1]:
                self.io.send(sender, Msg.RELEASE_HANDOFF, oid)
            return
        if index != len(s.items):
            return  # out of order cannot happen on one pipe; refuse rather than guess
        s.worker = sender
        s.error_sent = s.error_sent or bool(fields[3])
        e = self.objects.entries[oid] = Entry(True, self.io.address)
        self.objects.count(oid)  # the stream's hold, until the consumer takes it
        fill(e, fields, frames)
        if fields[-1]:
            with DeserializeContext() as ctx:
                e.contained = [rebuild_ref(cid, cowner) for cid, cowner in fields[-1]]
            release_handoff(self.io, self.objects, sender, oid, ctx.new_borrows)
        self.objects.resolve(oid, e)
        s.items.append(oid)
        self._wake(s)

    def completed(self, s: Stream) -> None:
        """The completion object is ready: no more items."""
        s.ended = True
        if s.dynamic:  # the completion value holds the refs now: the stream lets go
            self._release(s, s.released, len(s.items))
            self.streams.pop(s.task_id, None)
        self._wake(s)

    def next(self, task_id: bytes, i: int, w: Waiter) -> Any:
        """Item ``i``'s object id, END, or None after arming ``w`` to wake when either is known."""
        s = self.streams.get(task_id)
        if s is None:
            return END
        if i < len(s.items):
            s.released = max(s.released, i + 1)  # the consumer's ref takes over the hold
            if s.window is not None and s.worker is not None:
                self.io.send(s.worker, Msg.STREAM_CONSUMED, task_id, i + 1)
            return s.items[i]
        e = self.objects.entries.get(s.done_oid)
        if s.ended or e is None or e.state == READY:
            return FAILED if e is not None and e.is_error and not s.error_sent else END
        s.waiters.append(w)
        return None

    def drop(self, task_id: bytes) -> None:
        """The consumer's generator is gone: items it never took are let go."""
        s = self.streams.pop(task_id, None)
        if s is not None:
            self._release(s, s.released, len(s.items))
            if s.window is not None and s.worker is not None and not s.ended:
                self.io.send(s.worker, Msg.STREAM_CONSUMED, task_id, 1 << 62)  # never block on us again

    def _release(self, s: Stream, lo: int, hi: int) -> None:
        s.released = hi
        for oid in s.items[lo:hi]:
            if self.objects.uncount(oid):
                self.objects.release(oid)

    @staticmethod
    def _wake(s: Stream) -> None:
        waiters, s.waiters = s.waiters, []
        for w in waiters:
            w.event.set()
