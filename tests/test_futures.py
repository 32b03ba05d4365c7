"""meshcompute.util.futures.MeshExecutor on a real node: concurrent.futures' behaviour
(as_completed, wait, cancel, shutdown), and refs' own futures (ObjectRef.future, await)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import time

import pytest

import meshcompute as mesh
from meshcompute import exceptions
from meshcompute.util.futures import MeshExecutor

_state = {}


def square(x):
    return x * x


def slow(x, seconds=0.3):
    time.sleep(seconds)
    return x


def inverse(x):
    return 1 / x


def pid_of(*_):
    return os.getpid()


def setup(value):
    _state["calls"] = _state.get("calls", 0) + 1
    _state["value"] = value


def state():
    return _state.get("value"), _state.get("calls"), os.getpid()


def broken_setup():
    raise RuntimeError("setup broke")


@mesh.remote
def remote_square(x):
    return x * x


def test_submit_gives_standard_futures(node):
    with MeshExecutor(2) as ex:
        futures = [ex.submit(square, i) for i in range(20)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [x * x for x in range(20)]
        assert ex.submit(pow, 2, exp=5).result(timeout=30) == 32
        done, not_done = cf.wait([ex.submit(slow, 1, 0.05), ex.submit(slow, 2, 2.0)],
                                 return_when=cf.FIRST_COMPLETED, timeout=30)
        assert [f.result() for f in done] == [1] and len(not_done) == 1
        seen = []
        f = ex.submit(square, 9)
        f.add_done_callback(lambda fut: seen.append(fut.result()))
        assert f.result(timeout=30) == 81
        assert wait_until(lambda: seen == [81])
        failed = ex.submit(inverse, 0)
        assert isinstance(failed.exception(timeout=30), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError) as info:
            failed.result()
        assert "inverse" in str(info.value.__cause__)  # the remote traceback
        assert ex.max_workers == 2


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_map_orders_results_chunks_and_times_out(node):
    with MeshExecutor(2) as ex:
        assert list(ex.map(square, range(100))) == [x * x for x in range(100)]
        assert list(ex.map(pow, [2, 3, 4], [3, 2, 1])) == [8, 9, 4]
        assert list(ex.map(square, [])) == []
        pids = list(ex.map(pid_of, range(12), chunksize=4))
        for i in range(0, 12, 4):
            assert len(set(pids[i:i + 4])) == 1  # a chunk runs in one worker
        results = ex.map(slow, [1, 2], [0.05, 3.0], timeout=0.5)
        assert next(results) == 1
        with pytest.raises(cf.TimeoutError):
            next(results)
        it = ex.map(inverse, [1, 0, 2])
        assert next(it) == 1.0
        with pytest.raises(ZeroDivisionError):
            next(it)
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(square, [1], chunksize=0)


def test_cancel_takes_back_work_not_started(node):
    with MeshExecutor(1) as ex:
        running = ex.submit(slow, "first", 0.5)
        assert wait_until(running.running)
        queued = [ex.submit(slow, i, 0.5) for i in range(3)]
        assert not running.cancel()
        assert all(f.cancel() for f in queued)
        assert all(f.cancelled() for f in queued)
        done, _ = cf.wait(queued, timeout=5)  # cancelled futures count as done
        assert set(done) == set(queued)
        assert len(list(cf.as_completed(queued, timeout=5))) == 3
        with pytest.raises(cf.CancelledError):
            queued[0].result()
        assert running.result(timeout=30) == "first"


def test_shutdown_waits_cancels_and_refuses_new_work(node):
    ex = MeshExecutor(1)
    first = ex.submit(slow, 1, 0.3)
    assert wait_until(first.running)
    rest = [ex.submit(slow, i, 0.3) for i in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.done() and first.result() == 1
    assert all(f.cancelled() for f in rest)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    ex.shutdown()  # twice is fine

    ex = MeshExecutor(1)
    pending = [ex.submit(slow, i, 0.1) for i in range(3)]
    ex.shutdown(wait=False)
    assert not pending[-1].done()  # it returned at once: the last 0.1 s call cannot have run yet
    assert [f.result(timeout=30) for f in pending] == [0, 1, 2]  # the work submitted still finishes


def test_initializer_once_per_worker_and_workers_replaced(node):
    with MeshExecutor(2, initializer=setup, initargs=("ready",)) as ex:
        seen = [f.result(timeout=30) for f in [ex.submit(state) for _ in range(20)]]
    assert {v for v, _, _ in seen} == {"ready"} and {c for _, c, _ in seen} == {1}
    with pytest.raises(exceptions.ActorDiedError, match="setup broke"):
        MeshExecutor(1, initializer=broken_setup)
    with MeshExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(os.getpid).result(timeout=30) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_options_take_effect_or_raise(node):
    with pytest.raises(ValueError, match="mp_context"):
        MeshExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with pytest.raises(ValueError, match="positive"):
        MeshExecutor(0)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        MeshExecutor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="already connected"):
        MeshExecutor(1, address="auto")
    with pytest.raises(ValueError, match="unknown option"):
        MeshExecutor(1, remote_args={"nope": 1})
    with MeshExecutor(remote_args={"num_cpus": 1}) as ex:  # default: one worker per CPU of the mesh
        assert ex.max_workers == 2
        assert ex.submit(square, 4).result(timeout=30) == 16


def test_object_ref_future_and_await_still_work(node):
    refs = [remote_square.remote(i) for i in range(5)]
    futures = [r.future() for r in refs]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [0, 1, 4, 9, 16]

    async def main():
        return await remote_square.remote(7), await asyncio.gather(*[remote_square.remote(i) for i in range(3)])

    assert asyncio.run(main()) == (49, [0, 1, 4])
    with MeshExecutor(1) as ex:  # the executor's futures and a ref's mix in as_completed
        mixed = [ex.submit(square, 3), remote_square.remote(4).future()]
        assert sorted(f.result() for f in cf.as_completed(mixed, timeout=30)) == [9, 16]
