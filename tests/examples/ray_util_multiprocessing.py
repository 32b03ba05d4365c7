"""Ray's ``ray.util.multiprocessing.Pool`` documentation examples, with one change:
``import ray`` became ``import meshcompute as ray`` (so ``from ray.util.multiprocessing
import Pool`` reads ``from meshcompute.util.multiprocessing import Pool``).
Run as a script; prints OK."""

import time

import meshcompute as ray
from meshcompute.util.multiprocessing import Pool


# --- Quickstart: a drop-in for multiprocessing.Pool -----------------------------
def f(index):
    return index


pool = Pool()
results = []
for result in pool.map(f, range(100)):
    results.append(result)
assert results == list(range(100))

# --- The usual multiprocessing.Pool calls ----------------------------------------
def square(x):
    return x * x


assert pool.apply(square, (7,)) == 49
async_result = pool.map_async(square, range(10))
assert async_result.get(timeout=60) == [x * x for x in range(10)]
assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]
assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
assert pool.starmap(pow, [(2, 5), (3, 3)]) == [32, 27]
pool.close()
pool.join()

# --- An initializer runs once in every process of the pool ----------------------
def init_worker(scale):
    global SCALE
    SCALE = scale


def scaled(x):
    time.sleep(0.001)
    return x * SCALE


with ray.util.multiprocessing.Pool(processes=2, initializer=init_worker, initargs=(10,)) as pool:
    assert pool.map(scaled, range(1000)) == [x * 10 for x in range(1000)]

# --- Connecting to a running mesh: Pool(ray_address="auto") once the process is not
# connected (here it is, so the pool simply uses this connection) ------------------
assert ray.is_initialized()
print("OK")
