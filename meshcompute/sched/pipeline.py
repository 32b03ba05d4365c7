"""The owner's half of scheduling: which queued tasks go onto which held lease, and
how many leases to ask for.

An owner keeps a queue of ready tasks per scheduling key (``keys``) and the
leases (workers) it holds for that key. Pushing a task onto a worker that is
still busy (pipelining) saves the round trip between one task's end and the
next one's start; it makes the task wait behind another while some other
worker may be free. So how deep a task may go is set by its function's mean
run time (``RunTimes.depth``):

* a function known to be short (under ``SHORT_TASK_S``, about a round trip)
  goes up to ``MAX_PIPELINE`` deep: the round trip is most of its cost;
* one known to be under ``MEDIUM_TASK_S`` may wait behind one running task:
  its worker has it in hand when the running one ends, and it waits at most
  one such run;
* one not known to be either is never put behind anything, and nothing is
  put behind it;
* a task goes onto a busy worker only when no held worker is idle.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Sequence

__all__ = ["SHORT_TASK_S", "MEDIUM_TASK_S", "MAX_PIPELINE", "MAX_LEASE_REQUESTS", "RunTimes", "depth_limit",
           "plan_pushes", "lease_requests_delta"]

SHORT_TASK_S = 0.002
"""Seconds. A function whose mean run time is under this is 'short': about
a local round trip to a worker, so waiting behind one costs less than the
round trip that pipelining saves."""

MEDIUM_TASK_S = 0.015
"""Seconds. A function whose mean run time is under this may wait behind one
running task (depth 2): with 10 ms tasks the round trip between two tasks is
a tenth of a worker's time on a loaded machine, and the waiting task is
handed back if the one before it runs past the worker's patience (20 ms,
worker/inbox.py) instead."""

MAX_PIPELINE = 16
"""Tasks in flight on one leased worker at most (short tasks only): enough to
hide the round trip, few enough that a worker that dies loses little work and
that new workers still get their share."""

MAX_LEASE_REQUESTS = 16
"""Lease requests one owner keeps outstanding per scheduling key at most: a
burst of tasks asks for workers in parallel without flooding every daemon's
queue with requests that the queue will not need."""

_EWMA_OLD = 0.8  # weight of the past in the mean run time: it follows a change within ~10 runs


class RunTimes:
    """Mean run time of each function, to tell short functions from the rest.

    A function never seen, or seen with odd data only, is not known to be short.
    """

    def __init__(self) -> None:
        self._mean: dict[Hashable, float] = {}

    def record(self, fn_id: Hashable, seconds: float) -> None:
        """A run of ``fn_id`` took ``seconds`` (reported by a worker: odd values are ignored)."""
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            return
        mean = self._mean.get(fn_id)
        self._mean[fn_id] = seconds if mean is None else _EWMA_OLD * mean + (1 - _EWMA_OLD) * seconds

    def mean(self, fn_id: Hashable) -> float | None:
        """The mean run time of ``fn_id`` in seconds, None if it never ran."""
        return self._mean.get(fn_id)

    def is_short(self, fn_id: Hashable) -> bool:
        """Whether ``fn_id`` is known to run in under ``SHORT_TASK_S``."""
        mean = self._mean.get(fn_id)
        return mean is not None and mean < SHORT_TASK_S

    def depth(self, fn_id: Hashable) -> int:
        """How many tasks in flight on one worker a task of ``fn_id`` may be the last of:
        ``MAX_PIPELINE`` if short, 2 if under ``MEDIUM_TASK_S``, else 1 (only on an idle worker)."""
        mean = self._mean.get(fn_id)
        if mean is None:
            return 1
        return MAX_PIPELINE if mean < SHORT_TASK_S else 2 if mean < MEDIUM_TASK_S else 1

    def forget(self, fn_id: Hashable) -> None:
        """Drop what is known of a function that will not run again."""
        self._mean.pop(fn_id, None)


def depth_limit(depth: int, blocked: bool = False) -> int:
    """The ``depth_limit`` of a lease for ``plan_pushes``.

    ``depth``: the ``RunTimes.depth`` of the task the lease took while idle
    (plan_pushes holds a lease to it, so a lease runs tasks of one depth). A
    lease whose worker is blocked takes nothing (0).
    """
    if blocked:
        return 0
    return max(1, min(depth, MAX_PIPELINE))


def plan_pushes(queue: Sequence[int], slots: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Which held leases take which queued tasks now.

    ``queue``: for each queued task, head first, its ``RunTimes.depth``: how
    many tasks in flight it may be the last of. ``slots``: for each held
    lease, ``(tasks in flight, depth_limit)``. Returns ``(lease index, n)``
    pairs: the first pair takes the first ``n`` tasks off the head of the
    queue, the next pair the following ones, and so on; the tasks not covered
    stay queued.

    Every idle lease takes one task first, whatever it is, and from then on
    holds no more than that task's depth. Then, while the head task may go
    behind others, it goes to the least-loaded lease with room, if that
    lease has fewer in flight than the task's depth and than the depth of
    every task taken this way before it. The first task that cannot go stops
    it: it waits for a lease with room and everything queued behind it waits
    too, so tasks are always started in queue order.
    """
    caps = [max(0, min(limit, MAX_PIPELINE)) for _, limit in slots]
    held = [max(0, inflight) for inflight, _ in slots]
    # Invariant: first[k] is the lease that takes queue[k], for k < len(first).
    first: list[int] = []
    for i, n in enumerate(held):
        if n == 0 and caps[i] > 0 and len(first) < len(queue):
            caps[i] = min(caps[i], max(1, queue[len(first)]))  # nothing deeper behind it
            first.append(i)
            held[i] = 1
    taken = len(first)
    extra = [0] * len(slots)
    # Every lease is busy now (or the queue is empty): tasks may pipeline. Their depth
    # only shrinks along the queue (``deepest``), so that whichever of them a lease gets
    # below (they are handed out in runs, next), none is deeper than it may be.
    room = [(n, i) for i, n in enumerate(held) if 0 < n < caps[i]]
    heapq.heapify(room)
    deepest = min([queue[k] for k in range(taken) if queue[k] > 1], default=MAX_PIPELINE)
    while taken < len(queue) and room:
        deepest = min(deepest, queue[taken])
        n, i = room[0]
        if n >= deepest:
            break
        heapq.heappop(room)
        extra[i] += 1
        taken += 1
        if n + 1 < caps[i]:
            heapq.heappush(room, (n + 1, i))
    # Turn the counts into runs of the queue: a task taken alone by an idle lease
    # (depth 1) stays there, the others fill the leases in order.
    alone = iter([i for k, i in enumerate(first) if queue[k] <= 1])
    for k, i in enumerate(first):
        if queue[k] > 1:
            extra[i] += 1
    shared = deque((i, n) for i, n in enumerate(extra) if n)
    out: list[tuple[int, int]] = []
    for k in range(taken):
        if queue[k] > 1:
            lease, n = shared[0]
            if n == 1:
                shared.popleft()
            else:
                shared[0] = (lease, n - 1)
        else:
            lease = next(alone)
        if out and out[-1][0] == lease:
            out[-1] = (lease, out[-1][1] + 1)
        else:
            out.append((lease, 1))
    return out


def lease_requests_delta(queued: int, outstanding: int, free_slots: int) -> int:
    """Lease requests to send (> 0) or to withdraw (< 0) for one scheduling key.

    ``queued``: tasks waiting in the key's queue. ``outstanding``: lease
    requests sent and not yet answered. ``free_slots``: queued tasks that the
    leases already held will take without a new lease (e.g. their idle
    workers). Invariant kept: outstanding requests never exceed what the
    queue still needs, nor ``MAX_LEASE_REQUESTS``; requests granted after the
    queue drained would hold workers that others wait for.
    """
    need = max(0, queued - max(0, free_slots))
    return min(need, MAX_LEASE_REQUESTS) - max(0, outstanding)
