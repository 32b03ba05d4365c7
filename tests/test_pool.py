"""meshcompute.util.multiprocessing.Pool on a real node: multiprocessing.Pool's behaviour,
and work packed into few messages."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import pickle
import threading
import time

import pytest

import meshcompute as mesh
from meshcompute import exceptions
from meshcompute.owner import context
from meshcompute.util.multiprocessing import Pool
from meshcompute.wire.messages import Msg

from .conftest import pid_alive, wait_for

_state = {}


def square(x):
    return x * x


def pid_of(_):
    return os.getpid()


def inverse(x):
    return 1 / x


def slow_square(x):
    time.sleep(0.2)
    return x * x


def remember(value):
    _state["init"] = _state.get("init", 0) + 1
    _state["value"] = value


def recall():
    return _state.get("value"), _state.get("init"), os.getpid()


def fail_init():
    raise RuntimeError("initializer broke")


def die(x):
    if x == 3:
        os._exit(1)
    return x


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("cannot travel")
        self.lock = threading.Lock()


def raise_unpicklable(_):
    raise Unpicklable()


def actor_calls() -> int:
    """Actor calls this driver sent so far (Core's own message counters)."""
    return context.core.sent.get(Msg.ACTOR_CALL, 0)


def test_map_starmap_apply_and_imaps_give_multiprocessing_results(node):
    with Pool(2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.map(square, iter(range(5))) == [0, 1, 4, 9, 16]  # no len(): read first
        assert pool.map(square, []) == []
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert pool.apply(pow, (2, 10)) == 1024
        assert pool.apply(dict, (), {"a": 1}) == {"a": 1}
        assert list(pool.imap(square, range(50))) == [x * x for x in range(50)]
        assert list(pool.imap(square, range(50), chunksize=7)) == [x * x for x in range(50)]
        assert list(pool.imap(square, range(5), chunksize=None)) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(50), chunksize=3)) == [x * x for x in range(50)]
        assert pool.map_async(square, range(4)).get(timeout=30) == [0, 1, 4, 9]
        assert pool.starmap_async(pow, [(2, 2)]).get(timeout=30) == [4]


def test_map_of_100k_items_takes_a_handful_of_messages(node):
    with Pool(2) as pool:
        pool.map(square, range(10))  # warm
        before = actor_calls()
        assert pool.map(square, range(100_000)) == [x * x for x in range(100_000)]
        # about four chunks per process, packed several to a call once items are known to be quick
        assert actor_calls() - before <= 8
        before = actor_calls()
        assert list(pool.imap(square, range(20_000))) == [x * x for x in range(20_000)]
        # chunksize=1: each item its own chunk, but quick chunks travel thousands to a call
        assert actor_calls() - before <= 200


def test_a_chunk_runs_in_one_process_and_slow_items_spread(node):
    with Pool(2) as pool:
        pids = pool.map(pid_of, range(20), chunksize=5)
        for i in range(0, 20, 5):
            assert len(set(pids[i:i + 5])) == 1
        start = time.monotonic()
        assert pool.map(slow_square, range(8), chunksize=1) == [x * x for x in range(8)]
        assert time.monotonic() - start < 1.5  # 8 x 0.2 s over 2 processes: 0.8 s, not 1.6 s
        before = actor_calls()
        pool.map(pid_of, range(40), chunksize=1)
        assert actor_calls() - before == 1  # known to be quick: the 40 chunks travel as one call


def test_initializer_runs_once_in_each_process(node):
    with Pool(2, initializer=remember, initargs=("ready",)) as pool:
        seen = pool.map(lambda _: recall(), range(40), chunksize=1)
    assert {value for value, _, _ in seen} == {"ready"}
    assert {count for _, count, _ in seen} == {1}
    assert len({pid for _, _, pid in seen}) == 2


def test_failing_initializer_raises_from_the_constructor(node):
    with pytest.raises(exceptions.ActorDiedError, match="initializer broke"):
        Pool(1, initializer=fail_init)


def test_errors_are_the_functions_own_with_the_remote_traceback(node):
    with Pool(2) as pool:
        with pytest.raises(ZeroDivisionError) as info:
            pool.map(inverse, [1, 2, 0, 4])
        assert "inverse" in str(info.value.__cause__)  # the remote traceback, as multiprocessing does
        errors, results = [], []
        r = pool.map_async(inverse, [1, 0, 0, 2], chunksize=1, callback=results.append,
                           error_callback=errors.append)
        r.wait(30)
        assert r.ready() and not r.successful()
        assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError) and results == []
        with pytest.raises(ZeroDivisionError):
            r.get()
        it = pool.imap(inverse, [1, 0, 4])
        assert next(it) == 1.0
        with pytest.raises(ZeroDivisionError):
            next(it)
        assert next(it) == 0.25  # an item's failure does not end the iteration
        with pytest.raises(StopIteration):
            next(it)
        with pytest.raises(RuntimeError, match="could not be pickled"):
            pool.apply(raise_unpicklable, (1,))


def test_async_result_timeouts_and_callbacks(node):
    with Pool(2) as pool:
        got = []
        r = pool.apply_async(slow_square, (3,), callback=got.append)
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.01)
        r.wait(0.01)
        assert not r.ready()
        assert r.get(timeout=30) == 9 and got == [9]  # the callback ran before get() returned
        assert r.successful()
        it = pool.imap(slow_square, [1])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.01)
        assert it.next(timeout=30) == 1


def test_close_then_join_finishes_work_then_stops_the_processes(node):
    pool = Pool(2)
    pids = set(pool.map(pid_of, range(10), chunksize=1))
    pending = pool.map_async(slow_square, range(4), chunksize=1)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))
    pool.join()
    assert pending.ready() and pending.get() == [0, 1, 4, 9]
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)


def test_terminate_kills_the_processes_and_fails_pending_results(node):
    pool = Pool(2)
    pids = set(pool.map(pid_of, range(10), chunksize=1))
    pending = pool.map_async(slow_square, range(20), chunksize=1)
    pool.terminate()
    with pytest.raises(RuntimeError, match="terminated"):
        pending.get(timeout=30)
    pool.join()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    with Pool(1) as pool:
        pid = pool.apply(os.getpid)
    assert wait_for(lambda: not pid_alive(pid), timeout=10)  # the with-block terminates


def test_maxtasksperchild_replaces_processes(node):
    with Pool(1, maxtasksperchild=2) as pool:
        pids = [pool.apply(os.getpid) for _ in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert len(set(pids)) == 3


def test_a_process_that_dies_fails_its_items_and_is_replaced(node):
    with Pool(1) as pool:
        with pytest.raises(exceptions.ActorDiedError):
            pool.map(die, range(6), chunksize=1)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_imap_reads_an_endless_input_lazily(node):
    with Pool(2) as pool:
        first = list(itertools.islice(pool.imap(square, itertools.count()), 25))
    assert first == [x * x for x in range(25)]


def slow_source():
    yield 1
    time.sleep(1.0)
    yield 2


def test_imap_sends_an_item_of_a_slow_input_as_soon_as_it_is_read(node):
    with Pool(1) as pool:
        it = pool.imap(square, slow_source())
        start = time.monotonic()
        assert next(it) == 1
        assert time.monotonic() - start < 0.8  # not held back until the input ends
        assert list(it) == [4]


def test_options_take_effect_or_raise(node):
    with pytest.raises(ValueError, match="positive"):
        Pool(0)
    with pytest.raises(ValueError, match="context"):
        Pool(1, context=multiprocessing.get_context("fork"))
    with pytest.raises(ValueError, match="already connected"):
        Pool(1, ray_address="auto")
    with pytest.raises(ValueError, match="need 6 CPUs"):
        Pool(3, ray_remote_args={"num_cpus": 2})
    with pytest.raises(ValueError, match="unknown option"):
        Pool(1, ray_remote_args={"bogus": 1})
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=5)
    with Pool(1, ray_remote_args={"num_cpus": 1}) as pool:
        assert pool.apply(square, (3,)) == 9
        assert mesh.available_resources().get("CPU", 0) <= 1  # the process holds its CPU
        with pytest.raises(ValueError, match="Chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(NotImplementedError):
            pickle.dumps(pool)


def test_processes_are_spread_over_nodes_in_proportion_to_their_cpus(node, monkeypatch):
    from meshcompute.util import _workers

    here = context.core.node_id
    view = [{"NodeID": here, "Alive": True, "Resources": {"CPU": 8.0}},
            {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2.0}},
            {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 4.0}}]
    monkeypatch.setattr(_workers, "nodes", lambda: view)
    assert collections.Counter(_workers.spread(10)) == {here: 8, "b": 2}
    assert _workers.spread(5) == [here, "b", here, here, here]  # interleaved, this node first
    assert _workers.spread(1) == [here]
    monkeypatch.setattr(_workers, "nodes", lambda: view[:1])
    assert _workers.spread(3) == [None, None, None]  # one node: it places them itself


@mesh.remote
def pool_inside_a_task(n):
    with Pool(2) as pool:
        return sum(pool.map(square, range(n)))


def test_a_pool_inside_a_task(node):
    assert mesh.get(pool_inside_a_task.remote(1000), timeout=60) == sum(x * x for x in range(1000))


# Last in the file: it shuts its node down.
def test_shutdown_fails_the_pools_work_and_starts_nothing(fresh_node):
    pool = Pool(2)
    pending = pool.map_async(time.sleep, [0.5] * 4, chunksize=1)
    mesh.shutdown()
    with pytest.raises(exceptions.MeshError, match="shut down"):
        pending.get(timeout=10)
    del pool
    assert not mesh.is_initialized()  # the pool's threads never init() again
