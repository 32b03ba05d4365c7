"""A tour of meshcompute: a one-node mesh on this machine, some tasks, an actor, an error
with its remote traceback, and the `mesh` command line on the way (no setup needed).

    python scripts/demo.py

The node lives in a private sessions directory of its own, so the tour neither sees
nor disturbs a mesh already running here, and it is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

# Before meshcompute is imported: the sessions root is read once, at import.
ROOT = tempfile.mkdtemp(prefix="mesh-demo-")
os.environ["MESH_SESSIONS_ROOT"] = ROOT

import numpy as np  # noqa: E402

import meshcompute as mesh  # noqa: E402


def cli(*args: str) -> None:
    """Run a `mesh` command, showing it as it would be typed."""
    print(f"\n$ mesh {' '.join(args)}", flush=True)
    env = dict(os.environ)
    if not sys.stdout.isatty():
        env.setdefault("COLUMNS", "120")  # tables are cut to 80 columns otherwise
    subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], check=True, env=env)


@mesh.remote
def square(x: int) -> int:
    return x * x


@mesh.remote
def parse_age(text: str) -> int:
    print(f"parsing {text!r}")  # what a task prints shows on the driver, before its error
    return int(text)


@mesh.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count


def tour() -> None:
    start = time.perf_counter()
    cli("start", "--port", "0", "--num-cpus", "2", "--object-store-memory", str(256 << 20))
    mesh.init()  # finds the node just started on this machine
    print(f"\nconnected in {time.perf_counter() - start:.1f} s; resources: {mesh.cluster_resources()['CPU']:g} CPU")

    print("squares:", mesh.get([square.remote(i) for i in range(10)]))
    start = time.perf_counter()
    total = sum(mesh.get([square.remote(i) for i in range(10_000)]))
    print(f"10,000 tasks in {time.perf_counter() - start:.2f} s (sum {total})")

    matrix = mesh.put(np.random.default_rng(0).random((1000, 4000)))  # 32 MB into shared memory
    view = mesh.get(matrix)  # zero-copy: a read-only view of the store
    print(f"a 32 MB array in the object store, read back zero-copy (writeable={view.flags.writeable})")

    counter = Counter.remote()
    for i in range(5):
        counter.add.remote(i)
    print("an actor kept state across calls:", mesh.get(counter.add.remote(0)))

    print("\nA task that fails: its error comes back with the remote traceback.")
    try:
        mesh.get(parse_age.remote("forty-two"))
    except ValueError as e:  # the remote ValueError, also a meshcompute TaskError
        print(f"caught {type(e).__name__}: {e}")

    cli("status")
    cli("memory")
    del view, matrix
    mesh.shutdown()


def main() -> None:
    try:
        tour()
    finally:
        if mesh.is_initialized():
            mesh.shutdown()
        cli("stop")
        shutil.rmtree(ROOT, ignore_errors=True)
    print("""
What to try next:
  mesh start --host <this machine's IP>      a mesh other machines can join (it prints the join line)
  mesh top                                   a live view of nodes, tasks and actors (q quits)
  mesh logs --follow                         what the node and its workers write
  import meshcompute as ray                  run a Ray program unchanged (README.md)
  docs/observability.md, docs/reliability.md what you can watch, and what survives a failure""")


if __name__ == "__main__":
    main()
