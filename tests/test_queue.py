"""meshcompute.util.queue.Queue on a real node: FIFO semantics, blocking without polling,
and a queue shared by tasks, actors and the driver."""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
import threading
import time

import pytest

import meshcompute as mesh
from meshcompute.owner import context
from meshcompute.util.queue import Empty, Full, Queue
from meshcompute.wire.messages import Msg

from .conftest import wait_for


@mesh.remote
def produce(q, items, delay=0.0):
    time.sleep(delay)
    for item in items:
        q.put(item)
    return len(items)


@mesh.remote
def size_of(q):
    return q.qsize()


@mesh.remote
class Consumer:
    def __init__(self, q):
        self.q = q

    def take(self, n):
        return [self.q.get(timeout=30) for _ in range(n)]


def test_fifo_sizes_and_the_stdlib_exceptions(node):
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0 and q.maxsize == 3
    q.put(1)
    q.put_nowait(2)
    q.put(3, block=False)
    assert q.full() and q.size() == 3
    with pytest.raises(Full):
        q.put_nowait(4)
    assert [q.get(), q.get_nowait(), q.get(block=False)] == [1, 2, 3]
    with pytest.raises(Empty):
        q.get_nowait()
    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)
    try:
        q.get(block=False)
    except stdlib_queue.Empty:  # code written for queue.Queue catches it
        pass
    q.shutdown()


def test_timeouts_raise_empty_and_full(node):
    q = Queue(maxsize=1)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert 0.25 < time.monotonic() - start < 5
    q.put("x")
    with pytest.raises(Full):
        q.put("y", timeout=0.2)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put("z", timeout=-1)
    q.shutdown()


def test_blocked_get_waits_without_polling_and_wakes_on_put(node):
    q = Queue()
    core = context.core
    before = core.sent.get(Msg.ACTOR_CALL, 0)
    produce.remote(q, ["hello"], delay=1.0)
    start = time.monotonic()
    assert q.get(timeout=30) == "hello"
    waited = time.monotonic() - start
    assert 0.9 < waited < 10
    # one call for the whole wait: the get is a coroutine parked in the actor, not a loop here
    assert core.sent.get(Msg.ACTOR_CALL, 0) - before == 1
    q.shutdown()


def test_batches_are_all_or_nothing(node):
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5])
    assert q.qsize() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    q.shutdown()


def test_shared_by_tasks_actors_and_threads(node):
    q = Queue()
    consumer = Consumer.remote(q)
    taken = consumer.take.remote(6)
    assert mesh.get([produce.remote(q, [1, 2, 3]), produce.remote(q, [4, 5, 6])]) == [3, 3]
    assert sorted(mesh.get(taken, timeout=30)) == [1, 2, 3, 4, 5, 6]
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(q.get(timeout=30))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all eight blocked in the actor at once
    q.put_nowait_batch(list(range(8)))
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(8))
    q.shutdown()


def test_async_put_and_get(node):
    q = Queue(maxsize=1)

    async def main():
        waiting = asyncio.ensure_future(q.get_async(timeout=30))
        await asyncio.sleep(0.2)
        await q.put_async("a")
        first = await waiting
        await q.put_async("b", block=False)
        with pytest.raises(Full):
            await q.put_async("c", timeout=0.1)
        with pytest.raises(Full):
            await q.put_async("c", block=False)
        second = await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return first, second

    assert asyncio.run(main()) == ("a", "b")
    q.shutdown()


def test_shutdown_wakes_blocked_callers_with_an_error(node):
    q = Queue()
    errors: list = []

    def blocked():
        try:
            q.get()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.3)
    q.shutdown(force=True)
    t.join(30)
    assert errors and "shut down" in str(errors[0])
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)
    with pytest.raises(RuntimeError, match="shut down"):  # another process holding the queue
        mesh.get(size_of.remote(q), timeout=30)
    q.shutdown()  # twice is fine


def test_options_take_effect_or_raise(node):
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)
    with pytest.raises(ValueError, match="unknown option"):
        Queue(actor_options={"bogus": True})
    free = mesh.available_resources().get("CPU", 0)
    q = Queue(actor_options={"num_cpus": 1})
    q.put(1)
    assert wait_for(lambda: mesh.available_resources().get("CPU", 0) == free - 1)
    q.shutdown()
    assert wait_for(lambda: mesh.available_resources().get("CPU", 0) == free)
