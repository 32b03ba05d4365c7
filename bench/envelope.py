"""Ray's scalability envelope, side by side: each case through meshcompute and Ray.

    python bench/envelope.py                       # every case but the broadcast, both frameworks
    python bench/envelope.py --scale 1000000       # Ray's own figure of queued tasks (default 200k)
    python bench/envelope.py --scale 20000 --actors 50   # a quick run
    python bench/envelope.py --cases many_returns,get_many --only mesh
    python bench/envelope.py --with-broadcast      # also the 256 MiB broadcast to 4 nodes (heavy)
    python bench/envelope.py --json out.json

The cases are those of Ray's own scalability envelope (its release benchmarks),
with the counts Ray publishes; values are small (a list of 100 ints), so each case
measures what a ref, a return, a task or an actor costs, not copying data:

    many_args     one task with 10,000 ObjectRef arguments (refs of ``put`` values)
    many_returns  one task with num_returns=3000
    get_many      one ``get`` of 10,000 refs (refs of ``put`` values)
    queued        ``--scale`` no-op tasks submitted from one driver, then all gotten
                  (default 200,000; see below)
    actors        ``--actors`` actors created, each called once (default 200)
    broadcast     one 256 MiB array read at once by tasks on 4 other nodes, against one
                  reader (``--with-broadcast``: 5 nodes on this machine, each of one CPU
                  and a 1 GiB store; meshcompute as 5 local daemons, Ray as
                  ``cluster_utils.Cluster``)

Each case runs in a fresh process per framework, with its defaults (``init()`` with
no arguments; the broadcast starts its own nodes), so one case's memory does not
carry into the next.  Printed for each: the case's seconds, Ray's over
meshcompute's ("ratio", above 1 is meshcompute faster), the driver's peak RSS
(``ru_maxrss``), and the peak of the total RSS and PSS of the driver and every
process under it (its node daemons, workers, Ray's raylet and GCS): the most of
samples taken from outside every 0.25 s (PSS every 1 s) and of one taken by the
driver when the case is done, before anything is freed.  PSS splits shared pages
between the processes that map them, so shared memory counts once.  A case that
runs past ``--timeout`` is stopped and shown as "-".

Sizes on a small machine (2 CPUs, 24 GiB, shared): meshcompute queues and runs 1M
tasks in about 2.5 minutes with a 1.3 GiB driver, but Ray took 75 s and 2.8 GiB of
RSS (1.7 GiB PSS) for 100k, so 1M would take it a quarter of an hour and some
10 GiB here: the default queues 200k, and ``--scale 1000000`` asks for the real
figure where the machine allows.  Ray's 200 actors are 200 processes: about
20 GB of RSS (11 GB PSS) and 5 minutes here; use ``--actors 50`` on a machine of
less than 32 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench import _fmt, run_child, tree_memory  # noqa: E402

PAYLOAD = list(range(100))
CASES = ["many_args", "many_returns", "get_many", "queued", "actors", "broadcast"]
LABELS = {
    "many_args": "1 task, 10,000 ref arguments",
    "many_returns": "1 task, num_returns=3000",
    "get_many": "get of 10,000 refs",
    "queued": "{scale:,} queued no-op tasks, then get",
    "actors": "{actors} actors, each called once",
    "broadcast": "256 MiB read by 4 nodes at once",
}
BROADCAST_MIB = 256
NODES = 5


def _snapshot(out: dict) -> dict:
    """The total RSS and PSS of this driver and every process under it, now (while the
    case's objects, tasks and actors still exist): the sampling from outside can miss a
    short case's peak."""
    import psutil

    rss, pss, processes = tree_memory(psutil.Process())
    out.update(tree_rss=rss, tree_pss=pss, tree_processes=processes)
    return out


def _case_many_args(fw, repeat: int) -> dict:
    @fw.remote
    def count(*args):
        return len(args)

    refs = [fw.put(PAYLOAD) for _ in range(10_000)]

    def once() -> float:
        t = time.perf_counter()
        assert fw.get(count.remote(*refs)) == len(refs)
        return time.perf_counter() - t

    return _snapshot({"seconds": statistics.median(once() for _ in range(repeat))})


def _case_many_returns(fw, repeat: int) -> dict:
    @fw.remote(num_returns=3000)
    def many():
        return tuple(PAYLOAD for _ in range(3000))

    def once() -> float:
        t = time.perf_counter()
        values = fw.get(many.remote())
        seconds = time.perf_counter() - t
        assert len(values) == 3000 and values[-1] == PAYLOAD
        return seconds

    return _snapshot({"seconds": statistics.median(once() for _ in range(repeat))})


def _case_get_many(fw, repeat: int) -> dict:
    refs = [fw.put(PAYLOAD) for _ in range(10_000)]

    def once() -> float:
        t = time.perf_counter()
        assert len(fw.get(refs)) == len(refs)
        return time.perf_counter() - t

    return _snapshot({"seconds": statistics.median(once() for _ in range(repeat))})


def _case_queued(fw, scale: int) -> dict:
    @fw.remote
    def noop():
        return None

    t = time.perf_counter()
    refs = [noop.remote() for _ in range(scale)]
    submitted = time.perf_counter() - t
    assert fw.get(refs) == [None] * scale
    return _snapshot({"seconds": time.perf_counter() - t, "submit_seconds": submitted})


def _case_actors(fw, count: int) -> dict:
    @fw.remote
    class Pinger:
        def ping(self):
            return 1

    t = time.perf_counter()
    actors = [Pinger.remote() for _ in range(count)]
    assert sum(fw.get([a.ping.remote() for a in actors])) == count
    out = _snapshot({"seconds": time.perf_counter() - t})
    for a in actors:
        fw.kill(a)
    return out


def _broadcast_nodes(name: str, fw):
    """Start NODES nodes of one CPU; returns (the driver's node id, the other node ids, stop)."""
    store = 1 << 30
    if name == "ray":
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=1, object_store_memory=store)
        fw.init(address=cluster.address)
        cluster.wait_for_nodes()
        def stop_ray() -> None:
            fw.shutdown()  # the driver first: Ray refuses to remove the node it is connected to
            cluster.shutdown()

        return cluster.head_node.node_id, [n.node_id for n in cluster.worker_nodes], stop_ray
    from meshcompute.host.launcher import start_node, stop_node
    from meshcompute.wire.auth import generate_token

    token = generate_token()
    nodes = [start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, standalone=True,
                        object_store_memory=store)]
    seed = nodes[0][1]["tcp"].replace("tcp://", "")
    for _ in range(NODES - 1):
        nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, join=[seed],
                                standalone=True, object_store_memory=store))
    ids = [info["node_id"] for _, info in nodes]
    deadline = time.time() + 60
    fw.init(address=seed)
    while sum(1 for n in fw.nodes() if n.get("Alive")) < NODES and time.time() < deadline:
        time.sleep(0.2)

    def stop():
        fw.shutdown()
        for proc, info in nodes:
            stop_node(info)
            proc.wait(10)

    return ids[0], ids[1:], stop


def _case_broadcast(name: str, fw) -> dict:
    import numpy as np

    if name == "ray":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
    else:
        from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
    _, others, stop = _broadcast_nodes(name, fw)
    try:
        @fw.remote(num_cpus=1)
        def read(arr):
            return float(arr[-1])

        @fw.remote(num_cpus=1)
        def ready():
            return 1

        # A worker on every node first: the reads time the transfer, not starting workers.
        fw.get([ready.options(scheduling_strategy=On(node_id=n, soft=False)).remote() for n in others])
        array = np.ones(BROADCAST_MIB * 2**20 // 8)

        def readers(nodes) -> float:
            ref = fw.put(array)  # a fresh object each time: no node has a copy yet
            t = time.perf_counter()
            fw.get([read.options(scheduling_strategy=On(node_id=n, soft=False)).remote(ref) for n in nodes])
            return time.perf_counter() - t

        one = readers(others[:1])
        four = readers(others)
        return _snapshot({"seconds": four, "one_reader_seconds": one})
    finally:
        stop()


def run_case(name: str, case: str, scale: int, actors: int, repeat: int) -> dict:
    if name == "ray":
        import ray as fw
    else:
        import meshcompute as fw
    if case != "broadcast":
        fw.init()

        @fw.remote
        def warm():
            return None

        fw.get(warm.remote())
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if case == "queued":
        out = _case_queued(fw, scale)
    elif case == "actors":
        out = _case_actors(fw, actors)
    elif case == "broadcast":
        out = _case_broadcast(name, fw)
    else:
        out = globals()[f"_case_{case}"](fw, repeat)
    out["driver_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["driver_start_mib"] = base_rss
    if case != "broadcast":
        fw.shutdown()
    return out


class _PeakMemory:
    """Samples a child's process tree from this process (not the child's: no GIL shared)."""

    def __init__(self) -> None:
        self.rss = self.pss = self.processes = 0

    def __call__(self, pid: int, done: threading.Event) -> None:
        import psutil

        root = psutil.Process(pid)
        last_pss = 0.0
        while not done.is_set():
            with_pss = time.monotonic() - last_pss >= 1.0
            rss, pss, n = tree_memory(root, pss=with_pss)
            if with_pss:
                last_pss = time.monotonic()
                self.pss = max(self.pss, pss)
            self.rss = max(self.rss, rss)
            self.processes = max(self.processes, n)
            done.wait(0.25)


def _measure(name: str, case: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--cases", case,
           "--scale", str(args.scale), "--actors", str(args.actors), "--repeat", str(args.repeat)]
    env = dict(os.environ)
    # init() with no address joins a node or cluster already running on this machine;
    # each case starts its own instead, as on a machine where none runs.
    sessions = tempfile.mkdtemp(prefix="envelope-")
    env["MESH_SESSIONS_ROOT"] = sessions
    if case != "broadcast":
        env["RAY_ADDRESS"] = "local"
    peak = _PeakMemory()
    try:
        figures = run_child(cmd, f"{name} {case}", args.timeout, env=env, watch=peak)
    finally:
        shutil.rmtree(sessions, ignore_errors=True)
    if "seconds" in figures:
        figures.update(total_rss_mib=max(peak.rss, figures.pop("tree_rss")) / 2**20,
                       total_pss_mib=max(peak.pss, figures.pop("tree_pss")) / 2**20,
                       processes=max(peak.processes, figures.pop("tree_processes")))
    return figures


def _print_table(results: dict, args) -> None:
    import ray

    load = os.getloadavg()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}; ray {ray.__version__}; load average at the end "
          f"{load[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    header = (f"{'case':40} {'mesh s':>8} {'ray s':>8} {'ratio':>7} | {'driver peak MiB':>15} | "
              f"{'total RSS MiB':>15} | {'total PSS MiB':>15} | {'processes':>9}")
    print(header)
    print(f"{'':40} {'':>8} {'':>8} {'':>7} | {'mesh':>7} {'ray':>7} | {'mesh':>7} {'ray':>7} | "
          f"{'mesh':>7} {'ray':>7} | {'mesh':>4} {'ray':>4}")
    print("-" * len(header))
    for case, per in results.items():
        m, r = per.get("mesh", {}), per.get("ray", {})
        ms, rs = m.get("seconds"), r.get("seconds")
        ratio = f"{rs / ms:.1f}x" if ms and rs else "-"
        label = LABELS[case].format(scale=args.scale, actors=args.actors)

        def pair(key, m=m, r=r):
            return f"{_fmt(m.get(key)):>7} {_fmt(r.get(key)):>7}"

        print(f"{label:40} {_fmt(ms):>8} {_fmt(rs):>8} {ratio:>7} | {pair('driver_peak_mib')} | "
              f"{pair('total_rss_mib')} | {pair('total_pss_mib')} | "
              f"{_fmt(m.get('processes')):>4} {_fmt(r.get('processes')):>4}")
    extra = []
    for case, key, what in (("queued", "submit_seconds", "submitting alone"),
                            ("broadcast", "one_reader_seconds", "one reader instead of 4")):
        if case in results:
            m, r = results[case].get("mesh", {}).get(key), results[case].get("ray", {}).get(key)
            extra.append(f"{case}, {what}: meshcompute {_fmt(m)} s, Ray {_fmt(r)} s")
    if extra:
        print("\n" + "\n".join(extra))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["mesh", "ray"])
    p.add_argument("--cases", default=",".join(CASES[:-1]), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--with-broadcast", action="store_true", help="also the broadcast case (5 nodes)")
    p.add_argument("--scale", type=int, default=200_000, help="queued tasks in the 'queued' case")
    p.add_argument("--actors", type=int, default=200, help="actors in the 'actors' case")
    p.add_argument("--repeat", type=int, default=5,
                   help="the three one-call cases run this many times in their process; the median is shown")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one case of one framework")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.with_broadcast and "broadcast" not in cases:
        cases.append("broadcast")
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.child:
        print("RESULT " + json.dumps(run_case(args.child, cases[0], args.scale, args.actors, args.repeat)), flush=True)
        return
    names = [args.only] if args.only else ["mesh", "ray"]
    results: dict = {}
    for case in cases:
        results[case] = {}
        for name in names:
            results[case][name] = _measure(name, case, args)
            print(f"{case} {name}: " + json.dumps({k: round(v, 3) for k, v in results[case][name].items()}),
                  flush=True)
    _print_table(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "scale": args.scale, "actors": args.actors,
                       "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
