"""Lineage reconstruction and owner death, driven event by event on a virtual clock.

The owner's TaskQueues/ObjectTable with a fake OwnerIo (test_tasks.py): a node
dies, and each scenario states which tasks run again, in what order, what fails
with which error, and that lineage forgets everything once no ref is left.
"""

from __future__ import annotations

import pytest

from meshcompute import exceptions as exc
from meshcompute.owner import context
from meshcompute.owner.actors import ActorCalls
from meshcompute.owner.lineage import Lineage
from meshcompute.owner.object_ref import ObjectRef
from meshcompute.owner.objects import LOST_RECHECK_S, PENDING, READY, ObjectTable, Waiter
from meshcompute.owner.tasks import TaskQueues
from meshcompute.wire import ids
from meshcompute.wire.messages import Msg
from meshcompute.wire.serialization import deserialize

from .test_tasks import FakeIo, _NoRuntime, _task

N2_WORKER = "n2/p_w1@tcp://10.0.0.2:7001"
N3_WORKER = "n3/p_w2@tcp://10.0.0.3:7001"


@pytest.fixture
def owner(monkeypatch):
    monkeypatch.setattr(context, "core", _NoRuntime())
    io = FakeIo()
    box: list = []
    objects = ObjectTable(io, lambda t: box[0].dependency_ready(t), lambda oid: box[0].lineage.entry_freed(oid))
    tasks = TaskQueues(io, objects)
    tasks.actors = ActorCalls(io, tasks.fail, tasks.failed_arg)
    box.append(tasks)
    return io, tasks, objects


def _run(io, tasks, t, worker, node, submit=True) -> None:
    """Submit (or not: a rebuild), grant a lease on ``worker`` if asked, and finish ``t`` with a
    stored result on ``node``.  The caller holds a ref to each result it submits."""
    if submit:
        tasks.submit(t)
        for oid in t.return_ids:
            _hold(tasks.objects, oid)
    msgs = io.take()
    for _, m, f in msgs:
        if m == Msg.REQUEST_LEASE:
            tasks.on_lease_granted("n1/daemon@", (Msg.LEASE_GRANTED, f[0], b"L" + f[0].to_bytes(4, "big"),
                                                  worker, "w", ()), [])
    pushed = [spec[0] for _, m, f in msgs + io.take() if m == Msg.PUSH_TASKS for spec in f[2]]
    assert t.task_id in pushed, f"{t.name} was not pushed"
    returns = [("s", 0, 200_000, False, node, [])]
    tasks.on_tasks_done(worker, (Msg.TASKS_DONE, [(t.task_id, returns, 0.01)]), [])


def _hold(objects, oid) -> None:
    objects.ref_counts[oid] = 1


def _drop(objects, oid) -> None:
    objects.ref_counts.pop(oid, None)
    objects.release(oid)


def _die(tasks, objects, node) -> None:
    tasks.on_node_state(node, "dead", None)
    objects.node_died(node)
    tasks.on_node_gone(node, f"node {node} died")


def _error(objects, oid) -> BaseException:
    e = objects.entries[oid]
    assert e.state == READY and e.is_error
    return deserialize(e.value.meta, e.value.buffers)


def test_a_lost_result_is_rebuilt_through_a_freed_argument_and_lineage_then_forgets_it(owner):
    io, tasks, objects = owner
    f = _task(fn_id=b"f")
    _run(io, tasks, f, N2_WORKER, "n2")
    a = f.return_ids[0]
    g = _task(fn_id=b"g")
    g.args = [("r", ObjectRef(a, io.address, _count=False))]
    _run(io, tasks, g, N2_WORKER, "n2")
    b = g.return_ids[0]
    _drop(objects, a)  # only b is held: a's value is freed, f's spec is kept for g's sake
    assert a not in objects.entries and set(tasks.lineage.specs) == {f.task_id, g.task_id}

    _die(tasks, objects, "n2")
    _hold(objects, a)  # the rebuilt g's argument ref (counted by the runtime, which this test has not)
    # b goes back to PENDING; g waits for a, which f makes again first.
    assert objects.entries[b].state == PENDING and objects.entries[a].state == PENDING
    assert set(tasks.tasks) == {f.task_id, g.task_id} and tasks.tasks[g.task_id].deps == 1
    f2, g2 = tasks.tasks[f.task_id], tasks.tasks[g.task_id]
    _run(io, tasks, f2, N3_WORKER, "n3", submit=False)
    assert objects.entries[a].state == READY and objects.entries[a].node == "n3"
    _run(io, tasks, g2, N3_WORKER, "n3", submit=False)
    assert objects.entries[b].state == READY and objects.entries[b].node == "n3"
    assert g2.retries_left == 2 and tasks.lineage.specs[g.task_id].retries_left == 2

    _drop(objects, a)  # the rebuilt g's argument ref dies
    _drop(objects, b)
    assert tasks.lineage.specs == {} and tasks.lineage.needed == {} and tasks.lineage.bytes == 0


def test_a_put_object_lost_with_its_node_raises_object_lost(owner):
    io, tasks, objects = owner
    oid = ids.object_id(ids.new_task_id(), 0)
    _hold(objects, oid)
    objects.put_done(oid, ("s", 0, 200_000), [], "n2")
    _die(tasks, objects, "n2")
    err = _error(objects, oid)
    assert type(err) is exc.ObjectLostError and "put()" in str(err)


def test_a_task_out_of_retries_is_not_run_again(owner):
    io, tasks, objects = owner
    t = _task()
    t.retries_left = 0
    _run(io, tasks, t, N2_WORKER, "n2")
    _hold(objects, t.return_ids[0])
    _die(tasks, objects, "n2")
    assert isinstance(_error(objects, t.return_ids[0]), exc.ObjectReconstructionFailedMaxAttemptsExceededError)
    assert not tasks.tasks


def test_evicted_lineage_says_so(owner):
    io, tasks, objects = owner
    tasks.lineage = Lineage(max_bytes=1000)  # room for two specs
    tasks.lineage.owned_by = io.address
    done = []
    for _ in range(3):
        t = _task()
        _run(io, tasks, t, N2_WORKER, "n2")
        _hold(objects, t.return_ids[0])
        done.append(t)
    assert set(tasks.lineage.specs) == {done[1].task_id, done[2].task_id}
    _die(tasks, objects, "n2")
    assert isinstance(_error(objects, done[0].return_ids[0]), exc.ObjectReconstructionFailedLineageEvictedError)
    assert set(tasks.tasks) == {done[1].task_id, done[2].task_id}


def test_a_reader_that_cannot_read_a_copy_is_answered_after_the_node_is_declared_dead(owner):
    io, tasks, objects = owner
    t = _task()
    _run(io, tasks, t, N2_WORKER, "n2")
    oid = t.return_ids[0]
    _hold(objects, oid)
    reader = "n3/p_reader@tcp://10.0.0.3:7002"
    objects.on_get_object(reader, (Msg.GET_OBJECT, oid, "n2"), [])
    assert io.take() == []  # not the same dead location again at once
    _die(tasks, objects, "n2")
    io.advance(LOST_RECHECK_S)
    assert not [m for _, m, _ in io.sent if m == Msg.OBJECT_VALUE]  # being rebuilt: answered when done
    _run(io, tasks, tasks.tasks[t.task_id], N3_WORKER, "n3", submit=False)
    (answer,) = [(peer, f) for peer, m, f in io.take() if m == Msg.OBJECT_VALUE]
    assert answer[0] == reader and answer[1][1][4] == "n3"


def test_borrowed_values_of_a_dead_owner_fail_and_later_requests_fail_at_once(owner):
    io, tasks, objects = owner
    other = "n2/p_other@tcp://10.0.0.2:7009"
    oid = ids.object_id(ids.new_task_id(), 1)
    w = Waiter(1)
    objects.watch([(oid, other)], w)
    assert [m for _, m, _ in io.take()] == [Msg.GET_OBJECT]
    objects.owners_died([other])
    assert w.event.is_set() and isinstance(_error(objects, oid), exc.OwnerDiedError)
    # A ref to that owner's objects arriving later does not wait for an answer.
    late = ids.object_id(ids.new_task_id(), 1)
    w2 = Waiter(1)
    objects.watch([(late, other)], w2)
    io.advance(0)
    assert w2.event.is_set() and isinstance(_error(objects, late), exc.OwnerDiedError)
    assert [m for _, m, _ in io.take()] == []


def test_an_actor_call_waits_for_its_arguments_before_it_is_sent(owner):
    io, tasks, objects = owner
    f = _task()
    tasks.submit(f)
    io.take()
    actor_id = b"A" * 16
    tasks.actors.on_actor_state("n1/daemon@", (Msg.ACTOR_STATE, actor_id, "ALIVE", "n1/p_actor@", 0, ""), [])
    call = _task()
    call.actor_id, call.method, call.strategy = actor_id, "m", None
    call.args = [("r", ObjectRef(f.return_ids[0], io.address, _count=False))]
    second = _task()
    second.actor_id, second.method, second.strategy = actor_id, "m", None
    tasks.submit(call)
    tasks.submit(second)
    assert [m for _, m, _ in io.take() if m == Msg.ACTOR_CALL] == []  # in order: the second waits too
    tasks.on_tasks_done("n1/p_w@", (Msg.TASKS_DONE, [(f.task_id, [("v", b"N.", 0, False, [])], 0.01)]), [])
    sent = [f[0][0] for _, m, f in io.take() if m == Msg.ACTOR_CALL]
    assert sent == [call.task_id, second.task_id]


def test_a_dead_borrower_no_longer_keeps_an_object(owner):
    io, tasks, objects = owner
    t = _task()
    _run(io, tasks, t, N2_WORKER, "n2")
    oid = t.return_ids[0]
    reader, remote_reader = "n1/p_reader@", "n3/p_far@tcp://10.0.0.3:7003"
    objects.on_add_borrower(reader, (Msg.ADD_BORROWER, [oid], None), [])
    objects.on_add_borrower(remote_reader, (Msg.ADD_BORROWER, [oid], None), [])
    _drop(objects, oid)
    assert oid in objects.entries  # borrowed
    objects.owners_died([reader])
    assert oid in objects.entries  # the far reader still holds it
    _die(tasks, objects, "n3")
    io.advance(5.0)
    assert oid in objects.entries  # its node may come back yet
    io.advance(10.0)
    assert oid not in objects.entries
