"""Rebuilding lost results: which tasks run again, in what order, and what fails instead.

When a node dies, the owner's results stored there are gone.  Each is made again
by re-running the task that produced it, from the spec lineage.py kept; an
argument of that task that is gone too (freed since, or lost on the same node)
is rebuilt first, and so on back through the lineage.  A re-run counts against
the task's ``max_retries``.  What cannot be rebuilt completes with an error
that says why:

* a ``put`` object, an actor call's result or a generator's item: ``ObjectLostError``;
* a task whose spec was evicted: ``ObjectReconstructionFailedLineageEvictedError``;
* a task whose retries are used up: ``ObjectReconstructionFailedMaxAttemptsExceededError``.

Readers waiting on a rebuilt object are answered when its task finishes again,
exactly as the first time (the entry goes back to PENDING).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import exceptions as exc
from ..wire import ids
from ..wire.serialization import serialize
from .object_ref import rebuild_ref
from .objects import PENDING, READY, Entry
from .records import Task

log = logging.getLogger("meshcompute")


def lost_here(e: Entry | None, dead_nodes: set[str]) -> bool:
    """Is this owned entry's value gone (freed, or its only copy on a dead node)?"""
    return e is None or (e.state == READY and e.loc is not None and e.node in dead_nodes)


def rebuild(queues: Any, oids: list[bytes]) -> int:
    """Re-run the tasks that made these lost results (``queues`` is the owner's TaskQueues).
    Returns how many tasks were resubmitted."""
    objects, lineage, dead = queues.objects, queues.lineage, queues.objects.dead_nodes
    todo = list(oids)
    again: list[Task] = []
    reset: set[bytes] = set()  # entries that went back to PENDING
    while todo:  # a loop, not recursion: lineage chains can be long
        oid = todo.pop()
        tid = ids.task_of(oid)
        if tid in queues.tasks:
            continue  # running (again) already: its results come
        spec = lineage.spec(tid)
        error = _why_not(spec, tid, lineage)
        if error is not None:
            _fail(objects, oid, error)
            continue
        t = _again(spec)
        for rid in t.return_ids:
            e = objects.entries.get(rid)
            if e is not None and lost_here(e, dead):
                e.state, e.loc, e.node, e.value, e.is_error = PENDING, None, "", None, False
                reset.add(rid)
        for item in t.args:
            ref = item[1] if item[0] == "r" else None
            if ref is None or ref._owner != objects.io.address:
                continue
            e = objects.entries.get(ref._id)
            if e is None:  # freed since: made again, and held by this task's ref
                e = objects.entries[ref._id] = Entry(True, objects.io.address)
                lineage.entry_made(ref._id)
                todo.append(ref._id)
            elif lost_here(e, dead):
                e.state, e.loc, e.node = PENDING, None, ""
                reset.add(ref._id)
                todo.append(ref._id)
        queues.tasks[tid] = t
        again.append(t)
    if again:
        log.info("running %d task(s) again to rebuild results lost with their node (%s first)",
                 len(again), again[0].name)
    # Queued tasks that read a value now being rebuilt wait for it again.
    for q in queues.queues.values():
        waiting = [t for t in q if any(item[0] == "r" and item[1]._id in reset for item in t.args)]
        for t in waiting:
            q.remove(t)
        again.extend(waiting)
    # Counted only now: every argument to rebuild is PENDING, so its task waits for it.
    for t in again:
        queues._count_deps(t)
        if t.deps == 0:
            queues.task_ready(t)
    return len(again)


def _why_not(spec: Task | None, tid: bytes, lineage: Any) -> BaseException | None:
    if spec is None and lineage.was_evicted(tid):
        return exc.ObjectReconstructionFailedLineageEvictedError(
            "The object was lost with its node and cannot be rebuilt: the task that made it was evicted "
            "from lineage (the owner keeps MESH_LINEAGE_MAX_BYTES of it; hold fewer results at once, or "
            "raise the bound).")
    if spec is None:
        return exc.ObjectLostError(
            "The object was lost with its node and cannot be rebuilt: it was made by put(), an actor "
            "call or a generator task, which lineage cannot run again.")
    if spec.retries_left == 0:
        return exc.ObjectReconstructionFailedMaxAttemptsExceededError(
            f"The object was lost with its node and cannot be rebuilt: {spec.name} has used up its "
            "max_retries. Raise max_retries to let it run again.")
    return None


def _fail(objects: Any, oid: bytes, error: BaseException) -> None:
    e = objects.entries.get(oid)
    if e is None:
        return
    error.object_id = oid.hex()
    e.loc, e.node, e.is_error, e.value = None, "", True, serialize(error, True)
    if e.state != READY:
        objects.set_ready(oid, e)


def _again(spec: Task) -> Task:
    """A fresh task from a kept spec: its arguments as refs again, one retry spent."""
    t = Task()
    for name in ("task_id", "fn_id", "fn_bytes", "name", "kw_names", "num_returns", "return_ids",
                 "shape", "retry_exceptions", "strategy", "method"):
        setattr(t, name, getattr(spec, name))
    t.retries_left = spec.retries_left - 1 if spec.retries_left > 0 else spec.retries_left
    t.args = [("r", rebuild_ref(item[1], item[2])) if item[0] == "i" else item for item in spec.args]
    return t
