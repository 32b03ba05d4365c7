"""The util modules' cost per item: ``Pool.map`` and friends against one task per item.

    python bench/bench_util.py                 # 100k items, 2 processes
    python bench/bench_util.py --items 20000 --json out.json

For each way of running ``f(x) = x * x`` over the items it prints the wall time and
the messages the driver sent and received (its runtime's own counters, as
tests/test_message_counts.py reads them), next to the standard library's
``multiprocessing.Pool`` on the same machine. Every case runs on one embedded node
of ``--processes`` CPUs; the pool is warm (started, and the function known) first.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import meshcompute as mesh  # noqa: E402
from meshcompute.owner import context  # noqa: E402
from meshcompute.util.futures import MeshExecutor  # noqa: E402
from meshcompute.util.multiprocessing import Pool  # noqa: E402
from meshcompute.wire.messages import Msg  # noqa: E402

OFF_PATH = {Msg.TASK_STATS, Msg.WORKER_OUTPUT}


def square(x):
    return x * x


def _messages(before: tuple[dict, dict]) -> int:
    core = context.core
    total = 0
    for now, then in ((core.sent, before[0]), (core.received, before[1])):
        total += sum(n - then.get(k, 0) for k, n in now.items() if k not in OFF_PATH)
    return total


def _measure(name: str, fn, n: int, rows: list) -> None:
    core = context.core
    before = (dict(core.sent), dict(core.received))
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    assert list(out) == [x * x for x in range(n)], name
    rows.append({"case": name, "seconds": round(seconds, 3), "messages": _messages(before)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    n, p = args.items, args.processes
    mesh.init(num_cpus=p, object_store_memory=512 << 20)
    rows: list[dict] = []
    remote_square = mesh.remote(square)
    mesh.get([remote_square.remote(i) for i in range(100)])  # warm leases and the function
    _measure("one task per item: get([f.remote(x) ...])", lambda: mesh.get([remote_square.remote(i)
                                                                              for i in range(n)]), n, rows)
    with Pool(p) as pool:
        pool.map(square, range(100))
        _measure("Pool.map (default chunksize)", lambda: pool.map(square, range(n)), n, rows)
        _measure("Pool.map(chunksize=1)", lambda: pool.map(square, range(n), chunksize=1), n, rows)
        _measure("Pool.imap (chunksize=1)", lambda: list(pool.imap(square, range(n))), n, rows)
        _measure("Pool.imap_unordered (chunksize=1)",
                 lambda: sorted(pool.imap_unordered(square, range(n))), n, rows)
    with MeshExecutor(p) as ex:
        list(ex.map(square, range(100)))
        _measure("MeshExecutor.map(chunksize=1)", lambda: list(ex.map(square, range(n))), n, rows)
        _measure("MeshExecutor.submit per item", lambda: [f.result() for f in
                                                           [ex.submit(square, i) for i in range(n)]], n, rows)
    with multiprocessing.get_context("fork").Pool(p) as stdlib_pool:
        stdlib_pool.map(square, range(100))
        for name, fn in (("multiprocessing.Pool.map (stdlib)", lambda: stdlib_pool.map(square, range(n))),
                         ("multiprocessing.Pool.imap (stdlib)", lambda: list(stdlib_pool.imap(square, range(n))))):
            start = time.perf_counter()
            assert fn() == [x * x for x in range(n)]
            rows.append({"case": name, "seconds": round(time.perf_counter() - start, 3), "messages": None})
    mesh.shutdown()
    width = max(len(r["case"]) for r in rows)
    print(f"{n} items, {p} processes")
    print(f"{'case':<{width}}  {'seconds':>8}  {'messages':>9}")
    for r in rows:
        msgs = "-" if r["messages"] is None else str(r["messages"])
        print(f"{r['case']:<{width}}  {r['seconds']:>8.3f}  {msgs:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"items": n, "processes": p, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
