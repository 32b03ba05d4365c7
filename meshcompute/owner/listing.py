"""What an owner says about the tasks it submitted that have not finished (``list_tasks``).

A daemon asked for the mesh's tasks (``TIMELINE``) asks every driver and worker
of its node; each answers with a *lane* (observe/timeline.py).  A worker's lane
has its finished spans and running tasks (worker/executor.py); every lane has
the owner's unfinished tasks from here, read on the I/O thread that owns them.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..wire.transport import node_of

MAX_LISTED = 10_000
"""Unfinished tasks one owner lists at most (a driver may hold millions queued)."""


def pending_tasks(tasks: Any) -> list[tuple]:
    """``(task_id, name, state, actor_id, node_id, job_id)`` of the unfinished tasks of ``tasks``
    (a TaskQueues), in Ray's task states; a task pushed to a worker that started it is listed
    RUNNING by that worker, which wins over SUBMITTED_TO_WORKER here."""
    out = []
    job_id = tasks.job_id
    for t in itertools.islice(tasks.tasks.values(), MAX_LISTED):
        if t.deps:
            state = "PENDING_ARGS_AVAIL"
        elif t.dispatched:
            state = "SUBMITTED_TO_WORKER"
        elif t.actor_id is not None:
            state = "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY"  # behind earlier calls to its actor
        else:
            state = "PENDING_NODE_ASSIGNMENT"  # waiting in a queue for a lease
        lease = t.lease if t.dispatched else None
        node = node_of(lease.worker_addr) if lease is not None else None
        out.append((t.task_id.hex(), t.name, state, t.actor_id.hex() if t.actor_id else None, node, job_id))
    return out


def driver_lane(node_id: str, pid: int, worker_id: str, tasks: Any) -> dict:
    """A driver's lane: no spans (it runs no tasks), only what it submitted that waits."""
    return {"kind": "driver", "node_id": node_id, "pid": pid, "worker_id": worker_id, "events": [],
            "running": [], "pending": pending_tasks(tasks)}
