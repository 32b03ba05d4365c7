"""Latency of ``get`` of a 100 MiB numpy array already in the local node's store.

    python bench/bench_get.py             # meshcompute, then Ray when `import ray` works
    python bench/bench_get.py --no-ray
    python bench/bench_get.py --json out.json

Each get builds a new array on the stored bytes (zero-copy, read-only) and the
previous one is dropped before the next get, so what is timed is a real get: no
Python object is reused between calls.  Cases:

  * putter, first get: the get right after the put, in the process that put it;
  * putter, repeated: later gets there (the median of many);
  * other process: an actor that holds the ref (it came inside a list, so the
    actor borrows it) gets it repeatedly; its first get is shown apart.

Each system runs in a fresh subprocess.  The figures are medians in
microseconds; on a shared machine they move from run to run, so compare the
two systems measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench.py's helpers
from bench import run_part  # noqa: E402

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GETS = 200


def _timed_gets(get, ref, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        arr = get(ref)
        out.append((time.perf_counter() - t) * 1e6)
        assert not arr.flags.writeable
        del arr
    return out


def _summary(first: float, rest: list[float]) -> dict:
    rest = sorted(rest)
    return {"first_us": round(first, 1), "median_us": round(statistics.median(rest), 1),
            "p10_us": round(rest[len(rest) // 10], 1), "p90_us": round(rest[len(rest) * 9 // 10], 1)}


class _Reader:
    """Holds a borrowed ref and times gets of it in its own process."""

    def __init__(self, boxed: list) -> None:
        self.ref = boxed[0]

    def run(self, n: int) -> dict:
        import meshcompute as mesh
        try:
            import ray
            get = ray.get if ray.is_initialized() else mesh.get
        except ImportError:
            get = mesh.get
        first = _timed_gets(get, self.ref, 1)[0]
        return _summary(first, _timed_gets(get, self.ref, n))


def _run(api, n: int) -> dict:
    import numpy as np

    big = np.random.default_rng(0).random(100 * MiB // 8)
    ref = api.put(big)
    first = _timed_gets(api.get, ref, 1)[0]
    putter = _summary(first, _timed_gets(api.get, ref, n))
    reader = api.remote(_Reader).remote([ref])
    other = api.get(reader.run.remote(n))
    return {"putter": putter, "other_process": other}


def part_mesh(n: int) -> dict:
    import meshcompute as mesh

    mesh.init("local", num_cpus=2, object_store_memory=1 << 30)
    try:
        return _run(mesh, n)
    finally:
        mesh.shutdown()


def part_ray(n: int) -> dict:
    import ray

    ray.init(num_cpus=2, object_store_memory=1 << 30, include_dashboard=False, log_to_driver=False)
    try:
        return {**_run(ray, n), "version": ray.__version__}
    finally:
        ray.shutdown()


PARTS = {"mesh": part_mesh, "ray": part_ray}


def _run_part(name: str, n: int) -> dict:
    return run_part(__file__, [name, "--gets", str(n)], 600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--gets", type=int, default=GETS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args.gets)), flush=True)
        return
    names = ["mesh"]
    if not args.no_ray and subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode == 0:
        names.append("ray")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    print(f"get of a 100 MiB numpy array in the local store, us ({args.gets} gets per case)")
    print(f"  {'':<28} {'first':>8} {'median':>8} {'p10':>8} {'p90':>8}")
    for name in names:
        results[name] = r = _run_part(name, args.gets)
        if "error" in r:
            print(f"  {name} failed: {r['error'][-500:]}")
            continue
        for case in ("putter", "other_process"):
            s = r[case]
            print(f"  {name + ', ' + case:<28} {s['first_us']:8.1f} {s['median_us']:8.1f} "
                  f"{s['p10_us']:8.1f} {s['p90_us']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
