"""Tasks on a real node: arguments, nesting, waiting, errors and retries."""

from __future__ import annotations

import os
import time

import pytest

import meshcompute as mesh
from meshcompute.exceptions import GetTimeoutError, TaskCancelledError, TaskError, WorkerCrashedError

pytestmark = pytest.mark.usefixtures("node")


@mesh.remote
def add(a, b=0):
    return a + b


@mesh.remote
def identity(x):
    return x


@mesh.remote(num_returns=3)
def three(x):
    return x, x + 1, x + 2


@mesh.remote
def fib(n):
    if n < 2:
        return n
    return sum(mesh.get([fib.remote(n - 1), fib.remote(n - 2)]))


@mesh.remote
def slow(seconds, value=None):
    time.sleep(seconds)
    return value


def test_basic_and_kwargs():
    assert mesh.get(add.remote(1, 2)) == 3
    assert mesh.get(add.remote(1, b=5)) == 6
    assert mesh.get([add.remote(i, i) for i in range(20)]) == [2 * i for i in range(20)]


def test_multiple_returns():
    a, b, c = three.remote(10)
    assert mesh.get([a, b, c]) == [10, 11, 12]


def test_many_returns_each_get_their_own_buffers():
    """Small arrays travel inline with their buffer as a frame of its own: each of
    300 returns must take its frames, not its neighbour's, from the one message."""
    import numpy as np

    @mesh.remote(num_returns=300)
    def mixed():
        return tuple(np.arange(i % 7) + i if i % 3 else f"s{i}" for i in range(300))

    values = mesh.get(mixed.remote())
    for i, v in enumerate(values):
        if i % 3:
            assert v.tolist() == list(range(i, i + i % 7)), i
        else:
            assert v == f"s{i}"


def test_top_level_refs_are_resolved_and_nested_refs_stay_refs():
    x = mesh.put(41)
    assert mesh.get(add.remote(x, 1)) == 42

    @mesh.remote
    def inspect(container):
        inner = container["ref"]
        return type(inner).__name__, mesh.get(inner)

    assert mesh.get(inspect.remote({"ref": x})) == ("ObjectRef", 41)


def test_one_ref_read_by_many_tasks():
    shared = mesh.put(list(range(1000)))
    results = mesh.get([identity.remote(shared) for _ in range(30)])
    assert all(r == list(range(1000)) for r in results)
    task_ref = add.remote(1, 1)
    assert mesh.get([add.remote(task_ref, i) for i in range(10)]) == [2 + i for i in range(10)]


def test_nested_tasks_do_not_deadlock():
    assert mesh.get(fib.remote(10)) == 55


def test_dynamic_graph_of_tasks_submitting_tasks():
    @mesh.remote
    def tree(depth):
        if depth == 0:
            return 1
        children = [tree.remote(depth - 1) for _ in range(3)]
        return sum(mesh.get(children))

    assert mesh.get(tree.remote(4)) == 81


def test_blocked_worker_lends_its_cpu():
    # Two parents occupy both CPUs and each waits on children that need a CPU:
    # only possible if a worker blocked in get() gives its slot back.
    @mesh.remote
    def parent(i):
        return mesh.get(slow.remote(0.2, i))

    assert mesh.get([parent.remote(i) for i in range(4)], timeout=30) == [0, 1, 2, 3]


def test_wait_semantics():
    fast = [identity.remote(i) for i in range(3)]
    slow_ref = slow.remote(3, "late")
    ready, not_ready = mesh.wait(fast + [slow_ref], num_returns=3, timeout=10)
    assert ready == fast and not_ready == [slow_ref]
    ready, not_ready = mesh.wait([slow_ref], timeout=0.1)
    assert ready == [] and not_ready == [slow_ref]
    with pytest.raises(ValueError):
        mesh.wait(fast, num_returns=5)
    with pytest.raises(ValueError):
        mesh.wait([fast[0], fast[0]])
    mesh.cancel(slow_ref)


def test_wait_loop_processes_results_as_they_finish():
    refs = [slow.remote(0.05 * (5 - i), i) for i in range(5)]
    order = []
    while refs:
        ready, refs = mesh.wait(refs, num_returns=1, timeout=10)
        order.extend(mesh.get(ready))
    assert sorted(order) == [0, 1, 2, 3, 4]


def test_get_timeout():
    ref = slow.remote(5)
    start = time.time()
    with pytest.raises(GetTimeoutError):
        mesh.get(ref, timeout=0.3)
    assert time.time() - start < 2
    mesh.cancel(ref, force=True)


def test_user_exception_is_task_error_and_original_class():
    @mesh.remote(max_retries=0)
    def boom():
        raise KeyError("missing thing")

    with pytest.raises(KeyError) as info:
        mesh.get(boom.remote())
    err = info.value
    assert isinstance(err, TaskError)
    assert "missing thing" in str(err)
    assert "raise KeyError" in err.traceback_str  # the remote traceback travels


def test_error_propagates_through_dependent_tasks():
    @mesh.remote
    def bad():
        raise ValueError("root cause")

    with pytest.raises(ValueError, match="root cause"):
        mesh.get(add.remote(bad.remote(), 1))


def test_user_exceptions_retry_only_with_retry_exceptions(tmp_path):
    counter = tmp_path / "n"

    @mesh.remote(max_retries=2)
    def flaky_no_retry(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("flaky")

    with pytest.raises(RuntimeError):
        mesh.get(flaky_no_retry.remote(str(counter)))
    assert counter.read_text() == "x"

    counter2 = tmp_path / "m"

    @mesh.remote(max_retries=2, retry_exceptions=[RuntimeError])
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise RuntimeError("flaky")
        return "ok"

    assert mesh.get(flaky.remote(str(counter2))) == "ok"
    assert counter2.read_text() == "xxx"

    counter3 = tmp_path / "k"

    @mesh.remote(max_retries=2, retry_exceptions=[KeyError])
    def wrong_kind(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("not retried")

    with pytest.raises(RuntimeError):
        mesh.get(wrong_kind.remote(str(counter3)))
    assert counter3.read_text() == "x"


def test_worker_crash_retries_then_worker_crashed_error(tmp_path):
    attempts = tmp_path / "attempts"

    @mesh.remote(max_retries=2)
    def die(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(1)

    with pytest.raises(WorkerCrashedError):
        mesh.get(die.remote(str(attempts)), timeout=30)
    assert attempts.read_text() == "xxx"  # the first run and 2 retries

    seg = tmp_path / "seg"

    @mesh.remote(max_retries=3)
    def segfault_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            import ctypes

            ctypes.string_at(0)  # a real segmentation fault
        return "recovered"

    assert mesh.get(segfault_once.remote(str(seg)), timeout=30) == "recovered"
    # The pool replaced the dead workers.
    assert mesh.get([add.remote(i) for i in range(10)]) == list(range(10))


def test_cancel_pending_and_running():
    blockers = [slow.remote(1.0) for _ in range(2)]  # both CPUs busy
    pending = slow.remote(0, "never")
    time.sleep(0.1)
    mesh.cancel(pending)
    with pytest.raises(TaskCancelledError):
        mesh.get(pending, timeout=10)
    mesh.get(blockers, timeout=10)

    running = slow.remote(30)
    time.sleep(0.5)
    start = time.time()
    mesh.cancel(running)
    with pytest.raises(TaskCancelledError):
        mesh.get(running, timeout=10)
    assert time.time() - start < 5

    @mesh.remote
    def spin():
        while True:
            pass

    spinning = spin.remote()
    time.sleep(0.5)
    mesh.cancel(spinning, force=True)
    with pytest.raises(TaskCancelledError):
        mesh.get(spinning, timeout=10)
    assert mesh.get(add.remote(1, 1)) == 2


def test_remote_function_misuse_is_explained():
    with pytest.raises(TypeError, match=r"\.remote"):
        add(1, 2)
    with pytest.raises(ValueError, match="unknown option"):
        add.options(num_cpu=1)
    with pytest.raises(TypeError):
        mesh.get(42)


def test_runtime_context_in_task():
    @mesh.remote
    def where():
        ctx = mesh.get_runtime_context()
        return ctx.get_node_id(), ctx.get_worker_id(), ctx.get_task_id(), ctx.get_actor_id(), os.getpid()

    node_id, worker_id, task_id, actor_id, pid = mesh.get(where.remote())
    driver = mesh.get_runtime_context()
    assert node_id == driver.get_node_id()
    assert worker_id != driver.get_worker_id()
    assert task_id and actor_id is None and pid != os.getpid()
    assert driver.get_task_id() is None
