"""Lineage: the finished tasks an owner keeps so that lost results can be made again.

A task's results live in some node's store; when that node dies they are gone,
and the only way back is to run the task again (Ray's lineage reconstruction).
So the owner keeps the spec of a finished task as long as something may still
need its results:

* one of its return objects is still referenced (its entry is alive), or
* a kept task has one of its results as an argument (rebuilding that task may
  need this one's results first, even after they were freed).

``needed[task]`` counts exactly those two kinds of holders; at zero the spec
goes, and with it the holds its own arguments had on their producers.  Specs
keep arguments as ids, never as refs, so lineage never keeps a *value* alive:
only the recipe to make it again.

Memory is bounded: past ``max_bytes`` (estimated per spec: a fixed overhead
plus its inline argument bytes) the oldest specs are evicted.  A lost result
whose spec was evicted raises ``ObjectReconstructionFailedLineageEvictedError``.
"""

from __future__ import annotations

import collections
import os

from ..wire import ids
from ..wire.serialization import Serialized
from .records import Task

SPEC_OVERHEAD_BYTES = 400
"""What one kept spec costs beyond its inline arguments (the record and its dict slots)."""

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Lineage an owner keeps before it evicts the oldest (override: ``MESH_LINEAGE_MAX_BYTES``).
Ray's equivalent bound is 1 GiB; 256 MiB holds the specs of about 600,000 live tasks."""

EVICTED_KEPT = 100_000
"""How many evicted task ids are remembered, to say why a result cannot be rebuilt."""


def _max_bytes() -> int:
    try:
        return int(os.environ.get("MESH_LINEAGE_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


class Spec:
    """What a finished task needs to run again (its arguments as ids, see ``finished``)."""

    __slots__ = ("task_id", "fn_id", "fn_bytes", "name", "args", "kw_names", "num_returns", "return_ids",
                 "shape", "retries_left", "retry_exceptions", "strategy", "method")

    def __init__(self, task_id, fn_id, fn_bytes, name, args, kw_names, num_returns, return_ids, shape,
                 retries_left, retry_exceptions, strategy, method) -> None:
        self.task_id, self.fn_id, self.fn_bytes, self.name = task_id, fn_id, fn_bytes, name
        self.args, self.kw_names, self.num_returns, self.return_ids = args, kw_names, num_returns, return_ids
        self.shape, self.retries_left, self.retry_exceptions = shape, retries_left, retry_exceptions
        self.strategy, self.method = strategy, method


class Lineage:
    """Finished tasks' specs by task id, with the count of what still needs each."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _max_bytes() if max_bytes is None else max_bytes
        self.needed: dict[bytes, int] = {}  # task id -> live return entries + kept tasks using its results
        self.specs: dict[bytes, Spec] = {}  # finished tasks kept, oldest first
        self.sizes: dict[bytes, int] = {}
        self.bytes = 0
        self.evicted: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.owned_by = ""  # this process's address: only our own results have lineage here

    def submitted(self, t: Task) -> None:
        """A task's return entries exist from now on."""
        self.needed[t.task_id] = self.needed.get(t.task_id, 0) + len(t.return_ids)

    def entry_made(self, oid: bytes) -> None:
        """A return entry of an already finished task was made again (to rebuild it)."""
        tid = ids.task_of(oid)
        if tid in self.needed:
            self.needed[tid] += 1

    def entry_freed(self, oid: bytes) -> None:
        """One of our return entries (or a put) was freed."""
        self._release(ids.task_of(oid))

    def finished(self, t: Task) -> None:
        """Keep a finished task if anything still needs it; its arguments' producers are held."""
        kept = self.specs.get(t.task_id)
        if kept is not None:  # a rebuild finished: the spec is kept already
            kept.retries_left = t.retries_left
            return
        if self.needed.get(t.task_id, 0) <= 0:
            self.needed.pop(t.task_id, None)
            return
        args = []
        size = SPEC_OVERHEAD_BYTES
        for item in t.args:
            if item[0] == "r":
                ref = item[1]
                args.append(("i", ref._id, ref._owner))
                if ref._owner == self.owned_by and ids.task_of(ref._id) in self.needed:
                    self.needed[ids.task_of(ref._id)] += 1
            else:
                # Not the Serialized itself: it holds the refs inside the value, and would
                # keep those objects alive as long as this task's results.  A task run again
                # reads them if they are still there (a freed one: ObjectLostError, as for a put).
                ser = item[1]
                args.append(("v", Serialized(ser.meta, ser.buffers, [], ser.is_error)))
                size += ser.size
        spec = Spec(t.task_id, t.fn_id, t.fn_bytes, t.name, args, t.kw_names, t.num_returns, t.return_ids,
                    t.shape, t.retries_left, t.retry_exceptions, t.strategy, t.method)
        self.specs[t.task_id] = spec
        self.sizes[t.task_id] = size
        self.bytes += size
        while self.bytes > self.max_bytes and self.specs:
            self._evict(next(iter(self.specs)))

    def spec(self, task_id: bytes) -> Spec | None:
        return self.specs.get(task_id)

    def was_evicted(self, task_id: bytes) -> bool:
        return task_id in self.evicted

    def _evict(self, tid: bytes) -> None:
        for producer in self._drop_spec(tid):
            self._release(producer)
        self.evicted[tid] = None
        if len(self.evicted) > EVICTED_KEPT:
            self.evicted.popitem(last=False)

    def _release(self, tid: bytes) -> None:
        todo = [tid]  # a loop, not recursion: a chain of a million tasks unwinds here
        while todo:
            tid = todo.pop()
            n = self.needed.get(tid)
            if n is None:
                continue
            if n > 1:
                self.needed[tid] = n - 1
                continue
            del self.needed[tid]
            if tid in self.specs:
                todo.extend(self._drop_spec(tid))

    def _drop_spec(self, tid: bytes) -> list[bytes]:
        """Forget a spec; returns the producers its arguments held (to release)."""
        spec = self.specs.pop(tid)
        self.bytes -= self.sizes.pop(tid)
        return [ids.task_of(item[1]) for item in spec.args if item[0] == "i" and item[2] == self.owned_by]
