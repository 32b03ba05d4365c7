"""Generator tasks and actor methods on a real node: num_returns="streaming" and "dynamic"."""

from __future__ import annotations

import asyncio
import gc
import os
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.owner import context

from .conftest import wait_for

pytestmark = pytest.mark.usefixtures("node")


@mesh.remote
class Gate:
    """Counts what a generator yielded, and holds it until opened."""

    def __init__(self):
        self.yielded = 0
        self.open = False

    def step(self):
        self.yielded += 1
        return self.open

    def release(self):
        self.open = True

    def count(self):
        return self.yielded


@mesh.remote(num_returns="streaming")
def gated(gate, n):
    for i in range(n):
        while not mesh.get(gate.step.remote()) and i > 0:
            time.sleep(0.01)
        yield i


def test_an_item_is_usable_while_the_task_still_runs():
    gate = Gate.remote()
    gen = gated.remote(gate, 3)
    assert mesh.get(next(gen), timeout=30) == 0  # the task now waits for the gate: it has not finished
    assert not gen.is_finished()
    mesh.get(gate.release.remote())
    assert [mesh.get(r, timeout=30) for r in gen] == [1, 2]
    assert mesh.get(gen.completed(), timeout=30) is None and gen.is_finished()


@mesh.remote(num_returns="streaming")
def big_then_fail(n):
    for i in range(n):
        yield np.full(50_000, i)  # 400 KB: through the store
    raise KeyError("after the last")


def test_an_error_is_the_next_item_and_ends_the_stream():
    got = []
    for ref in big_then_fail.remote(3):
        try:
            got.append(int(mesh.get(ref, timeout=30)[0]))
        except KeyError:
            got.append("KeyError")
    assert got == [0, 1, 2, "KeyError"]


@mesh.remote(num_returns="dynamic")
def dynamic(n):
    for i in range(n):
        yield i * i


def test_dynamic_returns_one_ref_to_the_refs():
    refs = mesh.get(dynamic.remote(4), timeout=30)
    assert isinstance(refs, mesh.DynamicObjectRefGenerator) and len(refs) == 4
    assert [mesh.get(r) for r in refs] == [0, 1, 4, 9]


@mesh.remote
class Source:
    @mesh.method(num_returns="streaming")
    def items(self, n):
        yield from range(n)


@mesh.remote
class AsyncSource:
    async def items(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i * 10


def test_actor_methods_stream_sync_and_async():
    assert [mesh.get(r) for r in Source.remote().items.remote(3)] == [0, 1, 2]
    gen = AsyncSource.remote().items.options(num_returns="streaming").remote(3)
    assert [mesh.get(r) for r in gen] == [0, 10, 20]


def test_async_for_over_a_stream():
    async def consume():
        return [await ref async for ref in dynamic.options(num_returns="streaming").remote(3)]

    assert asyncio.run(consume()) == [0, 1, 4]


@mesh.remote(num_returns="streaming", _generator_backpressure_num_objects=2)
def counted(gate, n):
    for i in range(n):
        mesh.get(gate.step.remote())
        yield i


def test_backpressure_holds_the_producer_to_the_window():
    gate = Gate.remote()
    gen = counted.remote(gate, 6)
    assert wait_for(lambda: mesh.get(gate.count.remote()) == 2, timeout=30)
    time.sleep(0.5)
    assert mesh.get(gate.count.remote()) == 2, "the producer ran ahead of a consumer that took nothing"
    assert mesh.get(next(gen)) == 0
    assert wait_for(lambda: mesh.get(gate.count.remote()) == 3, timeout=30)
    assert [mesh.get(r) for r in gen] == [1, 2, 3, 4, 5]


@mesh.remote(num_returns="streaming", max_retries=2)
def dies_once(marker, n):
    for i in range(n):
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker dies mid-stream, once
        yield i


def test_a_stream_whose_worker_dies_is_retried_and_every_item_comes_once(tmp_path):
    assert [mesh.get(r, timeout=60) for r in dies_once.remote(str(tmp_path / "died"), 6)] == list(range(6))


def test_items_are_freed_once_taken_and_dropped_or_never_taken():
    core = context.core
    gen = big_then_fail.options(num_returns="streaming").remote(2)
    first = next(gen)
    oid = first._id
    assert int(mesh.get(first)[0]) == 0
    task_id = gen._task_id
    del first, gen
    gc.collect()
    assert wait_for(lambda: oid not in core.objects.entries and task_id not in core.streams.streams, timeout=10)
    left = [o for o in core.objects.entries if o[:12] == task_id]
    assert wait_for(lambda: not [o for o in core.objects.entries if o[:12] == task_id], timeout=10), left


def test_num_returns_is_checked():
    with pytest.raises(ValueError, match="num_returns"):
        dynamic.options(num_returns="lots").remote(1)
    with pytest.raises(ValueError, match="unknown option"):
        Source.remote().items.options(num_cpus=2)
