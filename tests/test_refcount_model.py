"""Reference counting against a model: many random seeded programs on one 2-node mesh.

Each seed is a short program (tests/refmodel.py) of puts, tasks on either node,
actor calls, borrows, nested refs, copies, reads and drops, run by the driver of
this process (tests/refmodel_mesh.py) against real daemons, workers and two
actors (one per node).  A failing seed prints itself and its program, one step
per line.  The tests after it pin down, one by one, the bugs it found.

``MESH_REFMODEL_SEEDS=3000`` runs that many seeds (from ``MESH_REFMODEL_FIRST``,
default 0) instead of the default 200; ``MESH_REFMODEL_PROGRAM=file`` replays the
program printed by a failure (saved in ``file``), and ``MESH_REFMODEL_MINIMIZE=1``
shortens a failing program before reporting it.
"""

from __future__ import annotations

import os
import time

import pytest

import meshcompute as mesh
from meshcompute.wire.messages import Msg

from . import refmodel
from . import refmodel_mesh as run
from .conftest import loopback_mesh, wait_for

MiB = 1 << 20
SEEDS = int(os.environ.get("MESH_REFMODEL_SEEDS", "200"))
FIRST = int(os.environ.get("MESH_REFMODEL_FIRST", "0"))
MAX_FAILURES = int(os.environ.get("MESH_REFMODEL_MAX_FAILURES", "5"))  # seeds run on past a failure, up to this many


@pytest.fixture(scope="module")
def runner():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(2, num_cpus=2, object_store_memory=256 * MiB) as (_token, nodes):
        from meshcompute.host.launcher import query

        ids = [info["node_id"] for _, info in nodes]
        assert wait_for(lambda: all(len([n for n in query(info, "mesh")["nodes"] if n["state"] == "alive"]) == 2
                                    for _, info in nodes), timeout=15)
        mesh.init(address=nodes[0][1]["tcp"].replace("tcp://", ""))
        try:
            from meshcompute.owner import context

            core = context.core
            assert core.node_id == ids[0]
            r = run.Runner(ids, lambda: core.request_daemon(Msg.LIST_OBJECTS, "mesh", timeout=10))
            r.node_infos = [info for _, info in nodes]
            yield r
            r.close()
        finally:
            mesh.shutdown()


def _run_seeds(runner, seeds) -> tuple[list, float]:
    failures = []
    start = time.monotonic()
    for seed in seeds:
        program = refmodel.generate(seed)
        try:
            runner.run(seed, program)
        except run.Failure as e:
            message = str(e)
            if os.environ.get("MESH_REFMODEL_MINIMIZE"):
                short = run.minimize(runner, seed, program, e.kind)
                message += "\nshortened to:\n" + refmodel.format_program(seed, short)
            failures.append((seed, message))
            if len(failures) >= MAX_FAILURES:
                break
    return failures, time.monotonic() - start


@pytest.mark.timeout(max(240, SEEDS * 2))
def test_random_programs_keep_exactly_what_is_reachable(runner):
    failures, took = _run_seeds(runner, range(FIRST, FIRST + SEEDS))
    print(f"{SEEDS} seeds from {FIRST} in {took:.1f} s, {len(failures)} failed")
    if failures:
        heads = "\n".join(f"  seed {seed}: {message.splitlines()[0]}" for seed, message in failures)
        pytest.fail(f"{len(failures)} seeds failed (the run stops at {MAX_FAILURES}):\n{heads}\n"
                    f"the first:\n{failures[0][1]}", pytrace=False)


@pytest.mark.skipif(not os.environ.get("MESH_REFMODEL_PROGRAM"), reason="replays MESH_REFMODEL_PROGRAM")
@pytest.mark.timeout(300)
def test_replay_a_printed_program(runner):
    with open(os.environ["MESH_REFMODEL_PROGRAM"]) as f:
        program = refmodel.parse_program(f.read())
    runner.run(-1, program)


# ------------------------------------------------------------------ the checker itself

@pytest.mark.timeout(60)
def test_printed_programs_parse_back_to_the_same_steps():
    for seed in range(50):
        program = refmodel.generate(seed)
        text = refmodel.format_program(seed, program, failed_at=3, epilogue=[refmodel.Read(0)])
        assert refmodel.parse_program(text) == program


@pytest.mark.timeout(60)
def test_a_leak_fails_the_seed_and_prints_its_program(runner):
    program = [refmodel.Put(0, 1, refmodel.LARGE_SIZES[0], ()), refmodel.Put(1, 2, 16, (0,)), refmodel.Drop(0),
               refmodel.Drop(1)]
    kept = []
    real_do = runner._do

    def leaky_do(step, model):  # one more ref to the large object, unknown to the model
        real_do(step, model)
        if isinstance(step, refmodel.Put) and step.dst == 0:
            kept.append(runner.slots[0])

    runner._do = leaky_do
    runner.patience = 1.0
    try:
        with pytest.raises(run.Failure) as info:
            runner.run(7, program)
    finally:
        runner._do = real_do
        runner.patience = 10.0
        kept.clear()
    text = str(info.value)
    assert "driver owns, unreachable: ['#0']" in text and "stored, unreachable: ['#0']" in text, text
    assert "seed 7, 4 steps:" in text and "\n    1 Put(dst=1, tag=2, size=16, refs=(0,))" in text, text
    runner.run(8, refmodel.generate(8))  # and the next seed starts clean


@pytest.mark.timeout(60)
def test_an_early_free_fails_the_seed(runner, monkeypatch):
    """The driver frees its objects without waiting for borrowers: what the actor holds is lost."""
    from meshcompute.owner import context
    from meshcompute.owner.objects import PENDING

    objects = context.core.objects

    def free_ignoring_borrowers(oid, e):
        if e.state == PENDING or oid in objects.ref_counts or e.getters:
            return
        objects.entries.pop(oid, None)

    monkeypatch.setattr(objects, "maybe_free", free_ignoring_borrowers)
    monkeypatch.setattr(runner, "patience", 1.0)
    program = [refmodel.Put(0, 1, 16, ()), refmodel.Hold(0, 0, (0,)), refmodel.Drop(0), refmodel.Settle()]
    with pytest.raises(run.Failure, match=r"reachable, driver lost it: \['#0'\]"):
        runner.run(9, program)
    monkeypatch.undo()
    runner.run(10, refmodel.generate(10))


@pytest.mark.timeout(60)
def test_a_worker_lets_go_of_the_refs_in_its_result_once_the_owner_holds_them(runner):
    """Was: the I/O loop kept the last posted command's arguments in a local variable; in a
    worker that command is the result's hand-off (the refs inside the result, kept until the
    owner holds them), so those objects stayed borrowed until the next command or timer ran,
    typically the task counters' timer half a second later (or longer, in a quiet process)."""
    from meshcompute.owner import context

    entries = context.core.objects.entries
    took = []
    for i in range(6):
        x = mesh.put(b"x")
        oid = x._id
        on = run._on(runner.node_ids[i % 2])
        mesh.get(run.build.options(scheduling_strategy=on).remote(("value", 1, 0, 0, 0, 0, None), [x]))
        del x  # the worker's borrow is all that is left
        start = time.monotonic()
        assert wait_for(lambda oid=oid: oid not in entries, timeout=10, interval=0.002)
        took.append(time.monotonic() - start)
    assert sorted(took)[len(took) // 2] < 0.2, took


@pytest.mark.timeout(60)
def test_what_a_killed_actor_borrowed_is_freed(runner):
    """The owner hears that its borrower died (PROCESS_GONE) and lets go of the object."""
    from meshcompute.owner import context

    entries = context.core.objects.entries
    keeper = run.Keeper.options(num_cpus=0, scheduling_strategy=run._on(runner.node_ids[1])).remote()
    x = mesh.put(run.make(1, refmodel.LARGE_SIZES[0], [], ()))
    oid = x._id
    try:
        mesh.get(keeper.hold.remote(0, [x]), timeout=30)
        del x
        mesh.kill(keeper)
        assert wait_for(lambda: oid not in entries, timeout=5), "still owned 5 s after its borrower was killed"
    finally:
        runner.ignored.add(oid)  # if it leaked, later checks do not count it again


@mesh.remote
def _sleep(seconds):
    time.sleep(seconds)
    return seconds


@mesh.remote
def _put_then_wait(i, refs):
    return [mesh.put(("kept", i))], mesh.get(refs[0])


@mesh.remote
def _put_here(i):
    return [mesh.put(("inner", i))]


@pytest.mark.timeout(60)
def test_a_worker_that_owns_objects_in_use_is_not_stopped_when_idle(runner):
    """Was: a node stopped idle workers beyond its CPU count after a second, also those
    that owned objects someone still used; the objects were lost with them.  Here every
    worker of node B owns objects: the first two put theirs, then wait in get() (their
    CPUs lent out) while extra workers run the other puts."""
    from meshcompute.host.launcher import query

    def workers() -> int:  # of node B, its actor included
        return query(runner.node_infos[1], "node")["workers"]

    on0, on1 = run._on(runner.node_ids[0]), run._on(runner.node_ids[1])
    slow = [_sleep.options(scheduling_strategy=on0).remote(1.0) for _ in range(2)]
    waiting = [_put_then_wait.options(scheduling_strategy=on1).remote(i, [s]) for i, s in enumerate(slow)]
    time.sleep(0.3)
    outer = [_put_here.options(scheduling_strategy=on1).remote(i) for i in range(6)]
    inner = [mesh.get(o, timeout=30)[0] for o in outer]  # refs only: the values stay with their owners
    kept = [mesh.get(w, timeout=30)[0][0] for w in waiting]
    time.sleep(2.5)  # idle workers beyond the CPU count are stopped after 1 s
    assert [mesh.get(r, timeout=10) for r in inner] == [("inner", i) for i in range(6)]
    assert [mesh.get(r, timeout=10) for r in kept] == [("kept", 0), ("kept", 1)]
    assert workers() > 3, "no extra worker ran: the test did not test anything"
    # Once nothing they own is in use, the extra workers are stopped: two CPUs, one actor.
    del inner, outer, kept, waiting
    assert wait_for(lambda: workers() <= 3, timeout=10), workers()


@pytest.mark.timeout(60)
def test_a_ref_inside_an_argument_is_freed_while_the_result_lives(runner):
    """Was: lineage kept a finished task's inline arguments as they were sent, refs inside
    them included, so an object passed nested in an argument lived as long as the task's
    results (found by the model test: the driver owned objects no program could reach)."""
    from meshcompute.owner import context

    entries = context.core.objects.entries
    x = mesh.put(run.make(5, refmodel.LARGE_SIZES[0], [], ()))
    oid = x._id
    on = run._on(runner.node_ids[1])
    # The task reads x and returns no ref: its result does not hold x.
    result = run.build.options(scheduling_strategy=on).remote(("unwrap", 1, 0, 0, 0, 0, None), [x])
    assert mesh.get(result, timeout=30)[2:] == ([], (5,))
    del x
    assert wait_for(lambda: oid not in entries, timeout=5), "x outlived its last ref while the result lives"
    del result


@pytest.mark.timeout(60)
def test_copies_of_a_dead_owners_objects_are_freed(runner):
    """Was: when the owner of an object died, its node freed the primary copy but not the
    copies other nodes had pulled (a pulled copy's record names the daemon it came from, not
    the owner), so they stayed in those stores for good (found by the model test)."""
    keeper = run.Keeper.options(num_cpus=0, scheduling_strategy=run._on(runner.node_ids[1])).remote()
    outer = mesh.get(keeper.put.remote(1, 2, refmodel.LARGE_SIZES[0], []), timeout=30)
    inner = outer[2][0]
    oid = inner.hex()
    assert run.unpack(mesh.get(inner, timeout=30))[0] == 2  # pulled into the driver's node
    copies = [r for r in runner.store_records() if r["object_id"] == oid]
    assert sorted(r["primary"] for r in copies) == [False, True], copies
    try:
        mesh.kill(keeper)
        assert wait_for(lambda: not [r for r in runner.store_records() if r["object_id"] == oid], timeout=10), \
            [r for r in runner.store_records() if r["object_id"] == oid]
    finally:
        runner.ignored.add(bytes.fromhex(oid))
    with pytest.raises(mesh.exceptions.OwnerDiedError):
        mesh.get(inner, timeout=10)


@pytest.mark.timeout(60)
def test_an_error_raised_by_get_keeps_no_ref_alive(runner):
    """Was: get() raised an error value from a local variable, a cycle (the exception, its
    traceback, the frame, the variable) that kept every frame of the caller alive, with the
    refs in them, until the next garbage collection (found by the model test: objects in a
    program's last frames, read past a dead owner's object, were not freed)."""
    import gc

    from meshcompute.owner import context

    entries = context.core.objects.entries
    keeper = run.Keeper.options(num_cpus=0, scheduling_strategy=run._on(runner.node_ids[1])).remote()
    lost = mesh.get(keeper.put.remote(1, 2, 16, []), timeout=30)[2][0]  # the keeper's, not read here
    mesh.kill(keeper)
    x = mesh.put(b"x")
    oid = x._id

    def read_holding(ref):  # a frame that holds x while get() raises
        with pytest.raises(mesh.exceptions.OwnerDiedError):
            mesh.get(lost, timeout=30)

    gc.disable()  # only refcounting may free x
    try:
        read_holding(x)
        del x
        assert wait_for(lambda: oid not in entries, timeout=2), "x is kept until a garbage collection"
    finally:
        gc.enable()
        runner.ignored.add(lost._id)


@mesh.remote
def _raise_holding(refs):
    values = mesh.get(refs, timeout=30)  # noqa: F841 - in this frame when it raises
    raise ValueError("as it should")


@pytest.mark.timeout(60)
def test_a_task_that_raises_lets_go_of_its_arguments(runner):
    """Was: a worker kept the exception of a task that raised, and with its traceback the
    frame that caught it, whose local held the error in turn: the task's arguments, the refs
    it borrowed among them, lived until the worker's next garbage collection (an idle worker
    may never have one)."""
    from meshcompute.owner import context

    entries = context.core.objects.entries
    for node in runner.node_ids:
        x = mesh.put(b"x")
        oid = x._id
        failed = _raise_holding.options(scheduling_strategy=run._on(node)).remote([x])
        with pytest.raises(ValueError, match="as it should"):
            mesh.get(failed, timeout=30)
        del x, failed
        assert wait_for(lambda oid=oid: oid not in entries, timeout=5), "still borrowed by the worker"


@mesh.remote
def _put_slowly(i):
    time.sleep(0.1)  # long enough that every worker of the node gets some
    return [mesh.put(("inner", i))]


@pytest.mark.timeout(60)
def test_a_worker_that_owns_objects_in_use_does_not_become_an_actor(runner):
    """Was: a node made any idle worker the process of a new actor, also one that owned
    objects still in use (made by the tasks it ran); killing the actor lost them (found by
    the model test: a worker's objects read as OwnerDiedError after an actor was replaced)."""
    on1 = run._on(runner.node_ids[1])
    # Each worker of node B (two CPUs) runs some of these, and owns their results' objects.
    outer = [_put_slowly.options(scheduling_strategy=on1).remote(i) for i in range(8)]
    inner = [mesh.get(o, timeout=30)[0] for o in outer]
    # At once: their workers may not have said yet that they own objects (TASK_STATS).
    keeper = run.Keeper.options(num_cpus=0, scheduling_strategy=on1).remote()
    mesh.get(keeper.counts.remote(), timeout=30)
    mesh.kill(keeper)
    time.sleep(0.5)
    assert [mesh.get(r, timeout=10) for r in inner] == [("inner", i) for i in range(8)]
