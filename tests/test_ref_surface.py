"""ObjectRef as Ray's: awaited with asyncio.gather and asyncio.wait."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import meshcompute as mesh

pytestmark = pytest.mark.timeout(60)


@mesh.remote
def slow_square(x, delay=0.0):
    time.sleep(delay)
    return x * x


@mesh.remote
def fail():
    raise ValueError("boom")


def test_asyncio_gather_and_wait_over_refs(node):
    async def main():
        values = await asyncio.gather(*[slow_square.remote(i) for i in range(20)])
        refs = [slow_square.remote(1, 3.0), slow_square.remote(2)]
        # asyncio.wait takes futures (Python 3.11 no longer wraps other awaitables, for Ray's refs either)
        done, pending = await asyncio.wait([asyncio.ensure_future(r) for r in refs],
                                           return_when=asyncio.FIRST_COMPLETED)
        first = [t.result() for t in done]
        done, _ = await asyncio.wait(pending, timeout=30)
        errors = await asyncio.gather(fail.remote(), slow_square.remote(5), return_exceptions=True)
        return values, first, [t.result() for t in done], errors, await refs[0]

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
