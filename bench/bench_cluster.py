"""Scheduling over several nodes: one driver's batches of sleep-bound tasks, meshcompute against Ray.

    python bench/bench_cluster.py                      # 3 nodes x 2 CPUs, 3,000 tasks of 10 ms, both
    python bench/bench_cluster.py --only mesh --batches 5
    python bench/bench_cluster.py --tasks 3000 --task-ms 2 --cpus 1 --busy   # CPU-bound 2 ms tasks

meshcompute runs ``--nodes`` local daemons on loopback (``mesh start`` and ``mesh join``
as separate processes, each with ``--cpus`` CPUs); Ray runs
``ray.cluster_utils.Cluster`` with as many nodes of as many CPUs. Each framework
runs in a fresh subprocess; the same code drives both, only the imported module
differs. After a warm-up batch (workers started on every node), each of
``--batches`` batches submits ``--tasks`` tasks at once and gets them all.

Per batch it prints: the ideal time (tasks x task time / slots), the time taken,
slot use (ideal / taken: 100% is every slot busy all along), "busy" (the tasks'
own measured run times over slots x time taken: what a loaded machine's late
wake-ups from sleep cost is in the first figure but not in this one) and tasks
per node (from the runtime context's node id each task returns); the last line gives
meshcompute's median slot use over Ray's ("ratio", higher is better for us).
Sleep-bound tasks leave the CPUs to the frameworks themselves, so on a small
machine this measures scheduling, not the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(framework: str, args: argparse.Namespace) -> None:
    import collections

    task_s = args.task_ms / 1000
    stop = []
    if framework == "mesh":
        sys.path.insert(0, REPO)
        import meshcompute as rt
        from meshcompute.host.launcher import query, start_node, stop_node
        from meshcompute.wire.auth import generate_token

        token = generate_token()
        nodes = [start_node(host="127.0.0.1", port=0, num_cpus=args.cpus, token=token, standalone=True,
                            object_store_memory=256 << 20)]
        seed = nodes[0][1]["tcp"].replace("tcp://", "")
        for _ in range(args.nodes - 1):
            nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=args.cpus, token=token, join=[seed],
                                    standalone=True, object_store_memory=256 << 20))
        ids = {info["node_id"] for _, info in nodes}
        deadline = time.time() + 30
        while time.time() < deadline and not all(
                {n["node_id"] for n in query(info, "mesh")["nodes"] if n["state"] == "alive"} == ids
                for _, info in nodes):
            time.sleep(0.1)
        rt.init(address=seed)

        def stop_all() -> None:
            rt.shutdown()
            for proc, info in nodes:
                stop_node(info)
                proc.wait(10)
        stop.append(stop_all)
    else:
        import ray as rt
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus})
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=args.cpus)
        cluster.wait_for_nodes()
        rt.init(address=cluster.address)

        def stop_all() -> None:
            rt.shutdown()
            cluster.shutdown()
        stop.append(stop_all)
    busy = args.busy

    @rt.remote(num_cpus=1)
    def work(i):
        start = time.perf_counter()
        if busy:
            while time.perf_counter() - start < task_s:
                pass
        else:
            time.sleep(task_s)
        return rt.get_runtime_context().get_node_id(), time.perf_counter() - start

    slots = args.nodes * args.cpus
    try:
        rt.get([work.remote(i) for i in range(slots * 20)])  # warm: workers started on every node
        rows = []
        for _ in range(args.batches):
            start = time.perf_counter()
            done = rt.get([work.remote(i) for i in range(args.tasks)])
            took = time.perf_counter() - start
            counts = collections.Counter(node for node, _ in done)
            rows.append({"seconds": took, "per_node": sorted(counts.values(), reverse=True),
                         "nodes_used": len(counts), "ran_s": sum(ran for _, ran in done)})
    finally:
        stop[0]()
    print(json.dumps(rows), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs (task slots) per node")
    ap.add_argument("--tasks", type=int, default=3000, help="tasks per batch")
    ap.add_argument("--task-ms", type=float, default=10.0)
    ap.add_argument("--busy", action="store_true", help="tasks spin on the CPU instead of sleeping")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--only", choices=["mesh", "ray"])
    ap.add_argument("--child", choices=["mesh", "ray"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    slots = args.nodes * args.cpus
    ideal = args.tasks * args.task_ms / 1000 / slots
    print(f"{args.nodes} nodes x {args.cpus} CPUs, {args.tasks} tasks of {args.task_ms:g} ms "
          f"({'CPU-bound' if args.busy else 'sleep'}) per batch; ideal {ideal:.2f} s a batch; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    use: dict[str, list[float]] = {}
    for fw in [f for f in ("mesh", "ray") if args.only in (None, f)]:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", fw, "--nodes", str(args.nodes),
               "--cpus", str(args.cpus), "--tasks", str(args.tasks), "--task-ms", str(args.task_ms),
               "--batches", str(args.batches)] + (["--busy"] if args.busy else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if out.returncode != 0:
            sys.exit(f"{fw} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        use[fw] = []
        for i, r in enumerate(rows):
            u = ideal / r["seconds"]
            use[fw].append(u)
            busy = r["ran_s"] / slots / r["seconds"]
            print(f"  {fw:4} batch {i + 1}: {r['seconds']:6.2f} s, slot use {u:6.1%} (busy {busy:6.1%}), "
                  f"{args.tasks / r['seconds']:6.0f} tasks/s, nodes used {r['nodes_used']}, per node {r['per_node']}")
    if len(use) == 2:
        m, r = statistics.median(use["mesh"]), statistics.median(use["ray"])
        print(f"median slot use: meshcompute {m:.1%}, Ray {r:.1%}; ratio {m / r:.2f}x")


if __name__ == "__main__":
    main()
