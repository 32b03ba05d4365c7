"""The owner's task state driven event by event: no process, socket or thread.

``TaskQueues`` and ``ObjectTable`` reach the outside only through ``OwnerIo``;
here a fake one records every message and runs timers on a virtual clock, so
each scenario states exactly which messages an event causes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter

import pytest

from meshcompute.owner import context
from meshcompute.owner.actors import ActorCalls
from meshcompute.owner.objects import READY, ObjectTable
from meshcompute.owner.records import Task
from meshcompute.owner.tasks import LEASE_IDLE_S, TaskQueues
from meshcompute.sched.pipeline import MAX_LEASE_REQUESTS
from meshcompute.wire import ids
from meshcompute.wire.messages import Msg

ME = "n1/p_owner@"
DAEMON = "n1/daemon@"
PEER = "n2/daemon@tcp://10.0.0.2:7000"


class FakeIo:
    """OwnerIo for tests: a message log, a virtual clock and its timers."""

    def __init__(self) -> None:
        self.address, self.node_id, self.daemon_addr = ME, "n1", DAEMON
        self.sent: list[tuple[str, Msg, tuple]] = []
        self.clock = 0.0
        self._timers: list = []
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self.replies: dict = {}

    def send(self, peer, msg_type, *fields, frames=()):
        self.sent.append((peer, msg_type, fields))

    def forget(self, peer):
        pass

    def call_later(self, delay, fn, *args):
        heapq.heappush(self._timers, (self.clock + delay, next(self._seq), fn, args))

    def next_req_id(self):
        return next(self._ids)

    def now(self):
        return self.clock

    def on_reply(self, req_id, fn):
        self.replies[req_id] = fn

    def advance(self, seconds: float) -> None:
        self.clock += seconds
        while self._timers and self._timers[0][0] <= self.clock:
            _, _, fn, args = heapq.heappop(self._timers)
            fn(*args)

    def take(self) -> list[tuple[str, Msg, tuple]]:
        out, self.sent = self.sent, []
        return out

    def count(self, msgs) -> Counter:
        return Counter(m for _, m, _ in msgs)


class _NoRuntime:
    """ObjectRefs count themselves with the process's runtime; these tests have none."""

    def ref_created(self, ref, deser_ctx=None):
        pass

    def ref_deleted(self, oid):
        pass


@pytest.fixture
def owner(monkeypatch):
    monkeypatch.setattr(context, "core", _NoRuntime())
    io = FakeIo()
    tasks_box: list = []
    objects = ObjectTable(io, lambda t: tasks_box[0].task_ready(t))
    tasks = TaskQueues(io, objects)
    tasks.actors = ActorCalls(io, tasks.fail, tasks.failed_arg)
    tasks_box.append(tasks)
    return io, tasks, objects


def _task(fn_id=b"f", shape=(("CPU", 1.0),), strategy=None) -> Task:
    t = Task()
    t.task_id = ids.new_task_id()
    t.fn_id, t.fn_bytes, t.name = fn_id, b"code", "f"
    t.args, t.kw_names, t.num_returns = [], (), 1
    t.return_ids = [ids.object_id(t.task_id, 1)]
    t.shape, t.strategy = shape, strategy
    t.retries_left, t.retry_exceptions = 3, False
    return t


def _grant(io, tasks, req_id, n=1, daemon=DAEMON):
    lease_id = b"L%07d" % req_id
    tasks.on_lease_granted(daemon, (Msg.LEASE_GRANTED, req_id, lease_id, f"n1/p_w{req_id}@", f"w{req_id}", ()), [])
    return lease_id


def _run_on_new_lease(io, tasks, t) -> None:
    """Submit ``t``, grant the lease it asks for (it is pushed there), forget the messages."""
    tasks.submit(t)
    (req,) = [f for _, m, f in io.take() if m == Msg.REQUEST_LEASE]
    _grant(io, tasks, req[0])
    io.take()


def _done(tasks, worker, task_ids, duration=0.05):  # default: a long task, never pipelined
    results = [(tid, [("v", b"N.", 0, False, [])], duration) for tid in task_ids]
    tasks.on_tasks_done(worker, (Msg.TASKS_DONE, results), [b""] * 0)


def test_a_queue_asks_for_as_many_leases_as_it_needs_and_withdraws_the_rest(owner):
    io, tasks, _ = owner
    batch = [_task() for _ in range(40)]
    for t in batch:
        tasks.submit(t)
    requests = [f for _, m, f in io.take() if m == Msg.REQUEST_LEASE]
    assert len(requests) == MAX_LEASE_REQUESTS
    # Two workers come; each takes a task; the queue drains as they finish.
    w1, w2 = _grant(io, tasks, requests[0][0]), _grant(io, tasks, requests[1][0])
    msgs = io.take()
    pushed = [f for _, m, f in msgs if m == Msg.PUSH_TASKS]
    assert [len(f[2]) for f in pushed] == [1, 1]  # not known short: one at a time
    running = {w1: pushed[0][2][0][0], w2: pushed[1][2][0][0]}
    # The queue still needs 16 more workers: the two granted requests are replaced.
    withdrawn, asked = 0, len(requests) + io.count(msgs)[Msg.REQUEST_LEASE]
    while any(running.values()):
        for lease, tid in list(running.items()):
            if tid is None:
                continue
            _done(tasks, f"n1/p_w{int(lease[1:])}@", [tid])
            msgs = io.take()
            withdrawn += io.count(msgs)[Msg.CANCEL_LEASE_REQUEST]
            nxt = [f for _, m, f in msgs if m == Msg.PUSH_TASKS]
            running[lease] = nxt[0][2][0][0] if nxt else None
    # Every request was granted or withdrawn before the queue ran dry: no grant can be stale.
    assert withdrawn == asked - 2 > 0
    assert not tasks.requests and tasks.requests_out[batch[0].key] == 0
    io.advance(LEASE_IDLE_S)
    assert io.count(io.take())[Msg.RETURN_LEASE] == 2


def test_a_warm_lease_takes_the_next_task_without_the_daemon(owner):
    io, tasks, _ = owner
    t = _task()
    _run_on_new_lease(io, tasks, t)
    _done(tasks, "n1/p_w1@", [t.task_id])
    io.advance(LEASE_IDLE_S / 2)  # the driver's own work between calls
    nxt = _task()
    tasks.submit(nxt)
    assert [(m, peer) for peer, m, _ in io.take()] == [(Msg.PUSH_TASKS, "n1/p_w1@")]


def test_a_10ms_task_waits_behind_one_running_task_only(owner):
    """Was: only functions under 2 ms were pushed to a busy worker, so each 10 ms task
    waited a round trip after the one before it ended."""
    io, tasks, _ = owner
    first = _task(fn_id=b"medium")
    _run_on_new_lease(io, tasks, first)
    _done(tasks, "n1/p_w1@", [first.task_id], duration=0.01)  # now known to run 10 ms
    io.take()
    for t in [_task(fn_id=b"medium") for _ in range(4)]:
        tasks.submit(t)
    pushes = [f for _, m, f in io.take() if m == Msg.PUSH_TASKS]
    assert sum(len(f[2]) for f in pushes) == 2, "one runs, one waits behind it"
    assert len(tasks.queues[first.key]) == 2


def test_short_tasks_pipeline_and_a_long_one_never_waits_behind_them(owner):
    io, tasks, _ = owner
    first = _task(fn_id=b"short")
    _run_on_new_lease(io, tasks, first)
    _done(tasks, "n1/p_w1@", [first.task_id], duration=0.0001)  # now known short
    io.take()
    # The lease runs a short task; 3 more short ones and then a long one are queued.
    busy = _task(fn_id=b"short")
    tasks.submit(busy)
    io.take()
    for t in [_task(fn_id=b"short") for _ in range(3)] + [_task(fn_id=b"long")]:
        tasks.submit(t)
    pushes = [f for _, m, f in io.take() if m == Msg.PUSH_TASKS]
    assert sum(len(f[2]) for f in pushes) == 3, "only the short ones go behind the busy worker"
    assert all(spec[1] == b"short" for f in pushes for spec in f[2])
    assert [t.fn_id for t in tasks.queues[busy.key]] == [b"long"]


def test_spread_affinity_and_plain_tasks_never_share_a_queue(owner):
    io, tasks, _ = owner
    for strategy in (None, "SPREAD", ("node", "n2", False)):
        tasks.submit(_task(strategy=strategy))
    keys = {t.key for t in tasks.tasks.values()}
    assert len(keys) == 3
    sent = io.take()
    assert io.count(sent)[Msg.REQUEST_LEASE] == 3
    # The affinity task's request goes to n2's daemon once the owner knows it.
    tasks.on_node_state("n2", "alive", PEER)
    tasks.submit(_task(strategy=("node", "n2", True)))
    assert [(peer, m) for peer, m, _ in io.take()] == [(PEER, Msg.REQUEST_LEASE)]


def test_a_grant_that_crossed_a_withdrawal_goes_straight_back(owner):
    io, tasks, _ = owner
    t = _task()
    tasks.submit(t)
    (req,) = [f for _, m, f in io.take() if m == Msg.REQUEST_LEASE]
    tasks.cancel(t.task_id, force=False)
    assert io.count(io.take())[Msg.CANCEL_LEASE_REQUEST] == 1
    _grant(io, tasks, req[0])
    assert [m for _, m, _ in io.take()] == [Msg.RETURN_LEASE]
    assert tasks.stale_grants == 1


def test_results_fill_the_return_objects(owner):
    io, tasks, objects = owner
    t = _task()
    _run_on_new_lease(io, tasks, t)
    objects.ref_counts[t.return_ids[0]] = 1  # the caller holds the ref
    _done(tasks, "n1/p_w1@", [t.task_id])
    assert objects.entries[t.return_ids[0]].state == READY
    assert t.task_id not in tasks.tasks


def test_a_queued_task_costs_its_owner_few_bytes(owner):
    """What the owner keeps per queued task (its return's entry, its lineage, its
    place in the queue), counted by tracemalloc.  Was 700 bytes: each entry made an
    empty set and four empty lists up front, for borrowers, waiters, dependents,
    getters and contained refs that most objects never have."""
    import gc
    import tracemalloc

    io, tasks, _ = owner
    batch = [_task() for _ in range(2000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t in batch:
            tasks.submit(t)
        per_task = (tracemalloc.get_traced_memory()[0] - before) / len(batch)
    finally:
        tracemalloc.stop()
    assert per_task < 400, per_task
