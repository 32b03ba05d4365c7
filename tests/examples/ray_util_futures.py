"""The ``concurrent.futures`` documentation's ProcessPoolExecutor example, on a mesh:
``ProcessPoolExecutor`` became ``ray.util.futures.MeshExecutor`` after
``import meshcompute as ray``. Run as a script; prints OK."""

import concurrent.futures
import math

import meshcompute as ray

PRIMES = [
    112272535095293,
    112582705942171,
    112272535095293,
    115280095190773,
    115797848077099,
    1099726899285419,
]


def is_prime(n):
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True


ray.init()

# --- Executor.map, as with ProcessPoolExecutor ------------------------------------
with ray.util.futures.MeshExecutor() as executor:
    found = dict(zip(PRIMES, executor.map(is_prime, PRIMES)))
assert found == {112272535095293: True, 112582705942171: True, 115280095190773: True,
                 115797848077099: True, 1099726899285419: False}

# --- submit, as_completed, wait ----------------------------------------------------
with ray.util.futures.MeshExecutor(max_workers=2) as executor:
    future_to_n = {executor.submit(is_prime, n): n for n in PRIMES}
    results = {}
    for future in concurrent.futures.as_completed(future_to_n):
        results[future_to_n[future]] = future.result()
    assert results == found
    done, _ = concurrent.futures.wait([executor.submit(pow, 2, 10)])
    assert done.pop().result() == 1024

# --- A ref's own future mixes with them ------------------------------------------
@ray.remote
def double(x):
    return 2 * x


assert ray.get(double.remote(21)) == 42
assert double.remote(4).future().result() == 8
print("OK")
