"""Actors on a real node: ordering, concurrency, names, handles, failures."""

from __future__ import annotations

import os
import threading
import time

import pytest

import meshcompute as mesh
from meshcompute.exceptions import ActorDiedError

pytestmark = pytest.mark.usefixtures("node")


@mesh.remote
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.log = []

    def incr(self, by=1):
        self.value += by
        self.log.append(by)
        return self.value

    def get_log(self):
        return self.log

    def pid(self):
        return os.getpid()

    def context(self):
        ctx = mesh.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_task_id()


def test_actor_state_and_constructor_args():
    c = Counter.remote(10)
    assert mesh.get(c.incr.remote()) == 11
    assert mesh.get(c.incr.remote(by=5)) == 16


def test_calls_run_one_at_a_time_in_submission_order():
    c = Counter.remote()
    refs = [c.incr.remote(i) for i in range(200)]
    mesh.get(refs)
    assert mesh.get(c.get_log.remote()) == list(range(200))


def test_order_holds_when_arguments_are_refs_that_finish_late():
    @mesh.remote
    def late(x, delay):
        time.sleep(delay)
        return x

    c = Counter.remote()
    c.incr.remote(late.remote(1, 0.5))
    c.incr.remote(2)
    mesh.get(c.incr.remote(3))
    assert mesh.get(c.get_log.remote()) == [1, 2, 3]


def test_max_concurrency_runs_calls_in_parallel():
    @mesh.remote(max_concurrency=4)
    class Sleeper:
        def nap(self):
            time.sleep(0.5)
            return threading.get_ident()

    s = Sleeper.remote()
    start = time.time()
    idents = mesh.get([s.nap.remote() for _ in range(4)])
    assert time.time() - start < 1.5
    assert len(set(idents)) > 1


def test_async_actor():
    @mesh.remote
    class AsyncActor:
        async def work(self, x):
            import asyncio

            await asyncio.sleep(0.3)
            return x * 2

    a = AsyncActor.remote()
    start = time.time()
    assert mesh.get([a.work.remote(i) for i in range(10)]) == [i * 2 for i in range(10)]
    assert time.time() - start < 2.5


def test_handles_can_be_passed_to_tasks_and_actors():
    c = Counter.remote()

    @mesh.remote
    def bump(counter, n):
        return mesh.get([counter.incr.remote() for _ in range(n)])[-1]

    mesh.get([bump.remote(c, 5) for _ in range(4)])
    assert mesh.get(c.incr.remote(0)) == 20

    @mesh.remote
    class Caller:
        def __init__(self, counter):
            self.counter = counter

        def call(self):
            return mesh.get(self.counter.incr.remote(100))

    caller = Caller.remote(c)
    assert mesh.get(caller.call.remote()) == 120


def test_progress_actor_passed_to_tasks():
    # The shape of Ray's "progress actor" documentation example.
    @mesh.remote
    class ProgressActor:
        def __init__(self, total):
            self.total = total
            self.done = {}

        def report(self, task_id, n):
            self.done[task_id] = n

        def progress(self):
            return sum(self.done.values()) / self.total

    @mesh.remote
    def sampling_task(n, task_id, progress):
        for i in range(n):
            if (i + 1) % 10 == 0:
                progress.report.remote(task_id, i + 1)
        return n

    progress = ProgressActor.remote(4 * 50)
    results = mesh.get([sampling_task.remote(50, i, progress) for i in range(4)])
    assert results == [50] * 4
    deadline = time.time() + 5
    while mesh.get(progress.progress.remote()) < 1.0 and time.time() < deadline:
        time.sleep(0.05)
    assert mesh.get(progress.progress.remote()) == 1.0


def test_named_actors():
    c = Counter.options(name="global-counter").remote(7)
    assert mesh.get(c.incr.remote()) == 8
    found = mesh.get_actor("global-counter")
    assert mesh.get(found.incr.remote()) == 9
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="global-counter").remote()
    same = Counter.options(name="global-counter", get_if_exists=True).remote()
    assert mesh.get(same.incr.remote()) == 10
    with pytest.raises(ValueError, match="no-such-actor"):
        mesh.get_actor("no-such-actor")

    @mesh.remote
    def use_by_name():
        return mesh.get(mesh.get_actor("global-counter", namespace=ns).incr.remote())

    ns = mesh.get_runtime_context().namespace
    assert mesh.get(use_by_name.remote()) == 11
    mesh.kill(c)
    time.sleep(0.2)
    with pytest.raises(ValueError):
        mesh.get_actor("global-counter")


def test_kill_fails_calls_with_actor_died_error():
    c = Counter.remote()
    assert mesh.get(c.incr.remote()) == 1
    mesh.kill(c)
    with pytest.raises(ActorDiedError):
        mesh.get(c.incr.remote(), timeout=10)


def test_actor_restarts_after_its_process_dies():
    @mesh.remote(max_restarts=1)
    class Fragile:
        def __init__(self):
            self.calls = 0

        def pid(self):
            return os.getpid()

        def die(self):
            os._exit(1)

    f = Fragile.remote()
    first = mesh.get(f.pid.remote())
    with pytest.raises(ActorDiedError):
        mesh.get(f.die.remote(), timeout=10)
    second = mesh.get(f.pid.remote(), timeout=10)  # restarted, fresh state
    assert second != first
    with pytest.raises(ActorDiedError):
        mesh.get(f.die.remote(), timeout=10)
    with pytest.raises(ActorDiedError):  # restarts used up
        mesh.get(f.pid.remote(), timeout=10)


def test_max_task_retries_resends_calls_after_restart():
    @mesh.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "done"

    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "flag")
    assert mesh.get(Once.remote().work.remote(path), timeout=20) == "done"


def test_constructor_error_kills_the_actor():
    @mesh.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("bad init")

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="bad init"):
        mesh.get(b.f.remote(), timeout=10)


def test_actor_runtime_context_and_method_errors():
    c = Counter.remote()
    actor_id, task_id = mesh.get(c.context.remote())
    assert actor_id == c._actor_id.hex()
    assert task_id and task_id != actor_id
    with pytest.raises(AttributeError):
        _ = c.no_such_method
    with pytest.raises(TypeError, match="incr.remote"):
        c.incr()


def test_a_method_error_traceback_starts_at_the_users_code():
    @mesh.remote
    class Fails:
        def sync(self):
            raise KeyError("sync")

        async def coro(self):
            raise KeyError("coro")

    @mesh.remote(max_concurrency=2)
    class Threaded:
        def sync(self):
            raise KeyError("threaded")

    fails = Fails.remote()
    for ref in (fails.sync.remote(), fails.coro.remote(), Threaded.remote().sync.remote()):
        with pytest.raises(KeyError) as info:
            mesh.get(ref, timeout=30)
        trace = info.value.traceback_str
        assert "raise KeyError" in trace and "actor_host.py" not in trace and "executor.py" not in trace, trace


@mesh.remote
class Holder:
    def __init__(self):
        self.handles = []

    def keep(self, handles):
        self.handles = handles

    def drop(self):
        self.handles = []
        import gc

        gc.collect()

    def call(self):
        return mesh.get(self.handles[0].pid.remote())


def test_an_unnamed_actor_lives_while_a_handle_to_it_lives_in_any_process():
    """Was: a handle that left its creator kept the actor alive until the creator exited."""
    import gc

    from .conftest import pid_alive, wait_for

    # A handle dropped right after a call: the call keeps the actor alive until it is done.
    assert [mesh.get(Counter.remote().incr.remote(), timeout=30) for _ in range(5)] == [1] * 5
    lone = Counter.remote()
    lone_pid = mesh.get(lone.pid.remote())
    del lone
    gc.collect()
    assert wait_for(lambda: not pid_alive(lone_pid), timeout=10), "a dropped handle's actor kept running"

    shared = Counter.remote()
    pid = mesh.get(shared.pid.remote())
    holder = Holder.remote()
    mesh.get(holder.keep.remote([shared]))
    del shared
    gc.collect()
    time.sleep(1.0)
    assert pid_alive(pid), "the actor stopped while another process still held a handle"
    assert mesh.get(holder.call.remote(), timeout=30) == pid
    mesh.get(holder.drop.remote())
    assert wait_for(lambda: not pid_alive(pid), timeout=10), "the last handle is gone, the actor runs on"
