"""Ray's ``ray.util.queue`` documentation example, with one change: ``import ray`` became
``import meshcompute as ray`` (so ``from ray.util.queue import Queue, Empty`` reads
``from meshcompute.util.queue import Queue, Empty``). Run as a script; prints OK."""

import asyncio

import meshcompute as ray
from meshcompute.util.queue import Empty, Queue

ray.init()
# You can pass this object around to different tasks/actors
queue = Queue(maxsize=100)


@ray.remote
def consumer(id, queue):
    got = []
    try:
        while True:
            next_item = queue.get(block=True, timeout=1)
            got.append(next_item)
    except Empty:
        pass
    return got


[queue.put(i) for i in range(10)]
consumers = [consumer.remote(id, queue) for id in range(2)]
results = ray.get(consumers)
assert sorted(results[0] + results[1]) == list(range(10))


# --- Async producers and consumers: an actor awaiting the queue -------------------
@ray.remote
class AsyncConsumer:
    def __init__(self, queue):
        self.queue = queue

    async def take(self, n):
        return [await self.queue.get_async(timeout=30) for _ in range(n)]


async_consumer = AsyncConsumer.remote(queue)
taken = async_consumer.take.remote(3)


async def produce():
    for item in ("a", "b", "c"):
        await queue.put_async(item)


asyncio.run(produce())
assert ray.get(taken) == ["a", "b", "c"]

# --- Batches, and the queue's size ---------------------------------------------
queue.put_nowait_batch([1, 2, 3])
assert queue.size() == 3 and not queue.empty()
assert queue.get_nowait_batch(3) == [1, 2, 3]
queue.shutdown()
print("OK")
