"""ObjectRef as Ray's: rebuilt from its id, awaited with asyncio.gather and asyncio.wait."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import meshcompute as mesh
from meshcompute import ObjectRef

pytestmark = pytest.mark.timeout(60)


@mesh.remote
def slow_square(x, delay=0.0):
    time.sleep(delay)
    return x * x


@mesh.remote
def fail():
    raise ValueError("boom")


def test_a_ref_rebuilt_from_its_id(node):
    ref = mesh.put({"a": 1})
    for again in (ObjectRef(ref.binary()), ObjectRef.from_binary(ref.binary()), ObjectRef.from_hex(ref.hex())):
        assert again == ref and hash(again) == hash(ref) and mesh.get(again, timeout=10) == {"a": 1}
    task_ref = slow_square.remote(3)
    assert mesh.get(ObjectRef.from_hex(task_ref.hex()), timeout=30) == 9  # made a moment ago
    assert ref.task_id() == ref.hex()[:24]


def test_a_rebuilt_ref_keeps_the_value_alive(node):
    ref = mesh.put(list(range(10)))
    again = ObjectRef.from_binary(ref.binary())
    del ref
    time.sleep(0.2)
    assert mesh.get(again, timeout=10) == list(range(10))


def test_a_ref_from_an_id_this_process_never_saw_is_refused(node):
    with pytest.raises(ValueError, match="knows no object"):
        ObjectRef(b"\x01" * 16)
    with pytest.raises(TypeError):
        ObjectRef("not-bytes")


def test_a_ref_rebuilt_in_a_task_that_borrowed_it(node):
    @mesh.remote
    def rebuild(refs):
        return mesh.get(ObjectRef.from_hex(refs[0].hex()))

    inner = mesh.put("borrowed")
    assert mesh.get(rebuild.remote([inner]), timeout=30) == "borrowed"


def test_asyncio_gather_and_wait_over_refs(node):
    async def main():
        values = await asyncio.gather(*[slow_square.remote(i) for i in range(20)])
        refs = [slow_square.remote(1, 3.0), slow_square.remote(2)]
        # asyncio.wait takes futures (Python 3.11 no longer wraps other awaitables, for Ray's refs either)
        done, pending = await asyncio.wait([r.as_future() for r in refs], return_when=asyncio.FIRST_COMPLETED)
        first = [t.result() for t in done]
        done, _ = await asyncio.wait(pending, timeout=30)
        errors = await asyncio.gather(fail.remote(), slow_square.remote(5), return_exceptions=True)
        return values, first, [t.result() for t in done], errors, await refs[0].as_future()

    values, first, rest, errors, again = asyncio.run(main())
    assert values == [i * i for i in range(20)]
    assert first == [4] and rest == [1] and again == 1
    assert isinstance(errors[0], ValueError) and errors[1] == 25


def test_awaiting_many_refs_takes_no_thread_per_ref(node):
    refs = [mesh.put(i) for i in range(2000)]
    before = threading.active_count()
    peak = [before]

    async def main():
        gathered = asyncio.gather(*refs)
        while not gathered.done():
            peak[0] = max(peak[0], threading.active_count())
            await asyncio.sleep(0.005)
        return gathered.result()

    assert asyncio.run(main()) == list(range(2000))
    assert peak[0] - before <= 10, (before, peak[0])


def test_awaiting_refs_inside_an_async_actor(node):
    @mesh.remote
    class Fan:
        async def total(self, n):
            return sum(await asyncio.gather(*[slow_square.remote(i) for i in range(n)]))

    assert mesh.get(Fan.remote().total.remote(10), timeout=30) == sum(i * i for i in range(10))
