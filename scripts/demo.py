"""A tour of meshcompute on an embedded local mesh (no setup needed).

    python scripts/demo.py
"""

from __future__ import annotations

import time

import numpy as np

import meshcompute as mesh


@mesh.remote
def square(x: int) -> int:
    return x * x


@mesh.remote
def fib(n: int) -> int:
    if n < 2:
        return n
    return sum(mesh.get([fib.remote(n - 1), fib.remote(n - 2)]))


@mesh.remote
def column_means(matrix: np.ndarray) -> np.ndarray:
    return matrix.mean(axis=0)


@mesh.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count


def main() -> None:
    start = time.perf_counter()
    mesh.init()
    print(f"embedded node up in {time.perf_counter() - start:.2f} s; resources: {mesh.cluster_resources()}")

    print("squares:", mesh.get([square.remote(i) for i in range(10)]))

    start = time.perf_counter()
    refs = [square.remote(i) for i in range(10_000)]
    total = sum(mesh.get(refs))
    print(f"10,000 tasks in {time.perf_counter() - start:.2f} s (sum {total})")

    start = time.perf_counter()
    print(f"fib(15) = {mesh.get(fib.remote(15))} with nested tasks in {time.perf_counter() - start:.2f} s")

    matrix = np.random.default_rng(0).random((2000, 5000))  # 80 MB
    ref = mesh.put(matrix)  # one copy into shared memory
    means = mesh.get([column_means.remote(ref) for _ in range(4)])
    view = mesh.get(ref)  # zero-copy, read-only view of shared memory
    print(f"4 tasks read the same 80 MB array; zero-copy get: writeable={view.flags.writeable}, "
          f"means agree: {all(np.allclose(m, matrix.mean(axis=0)) for m in means)}")

    counter = Counter.remote()
    for i in range(5):
        counter.add.remote(i)
    print("actor count:", mesh.get(counter.add.remote(0)))

    ready, pending = mesh.wait([square.remote(i) for i in range(8)], num_returns=4)
    print(f"wait: {len(ready)} ready, {len(pending)} still pending or just finished")
    mesh.shutdown()
    print("node stopped; no process left behind")


if __name__ == "__main__":
    main()
