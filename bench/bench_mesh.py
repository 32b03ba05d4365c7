"""Object pulls between two hosts against raw TCP over the same link.

    sudo python bench/bench_mesh.py [--mib 256] [--runs 3]

Builds two hosts in network namespaces on a bridge (scripts/netns.py's test bed),
starts `mesh start` in host 1 and `mesh join` in host 2, and in the same run
measures: raw TCP (Python sockets) host 1 -> host 2; ZeroMQ without and with
CURVE (the control channel's encryption) over the same veth; and the time for a
task on host 2 to read an object that lives in host 1's store (the pull, end to
end: its chunks travel on the bulk channel, sealed with AES-256-GCM).
Each run measures every path, one after the other, so that whatever drifts on
the machine between runs (raw TCP over the veth pair swings by half) falls on all
of them alike.  A run reads three new objects: the first after the pause in which
the other paths were measured (both nodes have returned most freed memory to the
kernel by then), the other two back to back.  Prints MB/s (10^6 bytes/s): the
median of each path, and the pull's share of raw TCP both as a ratio of the
medians and as the median of each run's own ratio.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from meshcompute.testing.netns import TestBed, measure_tcp_throughput, netns_unavailable_reason  # noqa: E402
from meshcompute.wire.auth import generate_token  # noqa: E402

ZMQ_SINK = textwrap.dedent("""
    import sys, zmq
    from meshcompute.wire.auth import MeshKeys, MeshAuthenticator, secure_server
    ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER)
    if sys.argv[3] == "curve":
        keys = MeshKeys.from_token(sys.argv[4]); auth = MeshAuthenticator(ctx, keys).start(); secure_server(s, keys)
    s.bind(f"tcp://{sys.argv[1]}:{sys.argv[2]}")
    print("ready", flush=True)
    n = 0
    while True:
        f = s.recv_multipart(copy=False)
        if len(f[1]) == 1:
            s.send_multipart([f[0], b"done"]); break
""")

ZMQ_SOURCE = textwrap.dedent("""
    import sys, time, zmq
    from meshcompute.wire.auth import MeshKeys, secure_client
    ctx = zmq.Context(); d = ctx.socket(zmq.DEALER)
    if sys.argv[3] == "curve":
        secure_client(d, MeshKeys.from_token(sys.argv[4]))
    d.connect(f"tcp://{sys.argv[1]}:{sys.argv[2]}")
    chunk = b"x" * (4 << 20); n = int(sys.argv[5]) // len(chunk)
    d.send(b"x" * 10); time.sleep(0.5)
    t = time.perf_counter()
    for _ in range(n):
        d.send(chunk, copy=False)
    d.send(b"!"); d.recv()
    print(n * len(chunk) / (time.perf_counter() - t) / 1e6, flush=True)
""")

DRIVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    mesh.init(address=sys.argv[1])
    other = [n["NodeID"] for n in mesh.nodes() if n["NodeID"] != mesh.get_runtime_context().get_node_id()][0]

    @mesh.remote
    def touch(arr):
        return int(arr[0]) + int(arr[-1])

    pinned = touch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other))
    mesh.get(pinned.remote(mesh.put(np.zeros(8))))  # warm up a worker on host 2
    print("ready", flush=True)
    for line in sys.stdin:  # a line: how many objects to read, one after the other
        rates = []
        for _ in range(int(line)):
            arr = np.random.default_rng().integers(0, 2**62, size=int(sys.argv[2]) // 8, dtype=np.int64)
            ref = mesh.put(arr)
            t = time.perf_counter()
            mesh.get(pinned.remote(ref))
            rates.append(arr.nbytes / (time.perf_counter() - t) / 1e6)
            del ref
        print(json.dumps(rates), flush=True)
    mesh.shutdown()
""")


def zmq_rate(bed: TestBed, mode: str, token: str, nbytes: int, port: int) -> float:
    """MB/s of ``nbytes`` in 4 MiB messages over one ZeroMQ connection, host 1 -> host 2."""
    sink = bed.spawn(2, [sys.executable, "-c", ZMQ_SINK, bed.address(2), str(port), mode, token],
                     stdout=subprocess.PIPE, text=True, cwd=REPO)
    sink.stdout.readline()
    out = bed.exec(1, [sys.executable, "-c", ZMQ_SOURCE, bed.address(2), str(port), mode, token, str(nbytes)],
                   timeout=300, cwd=REPO)
    sink.wait(30)
    return float(out.stdout.strip().splitlines()[-1])


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line ``proc`` prints, or "" if it prints none within ``timeout`` seconds."""
    if not select.select([proc.stdout], [], [], timeout)[0]:
        return ""
    return proc.stdout.readline()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=256, help="object size (MiB)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"network namespaces are not available: {reason}")
    nbytes = args.mib << 20
    token = generate_token()
    py = sys.executable
    rates: dict[str, list[float]] = {"raw": [], "plain": [], "curve": [], "paused": [], "pull": []}
    with TestBed(2, prefix="mbench") as bed:
        mesh = [py, "-m", "meshcompute.cli"]
        common = ["--port", "7777", "--num-cpus", "2", "--token", token, "--object-store-memory", str(3 * nbytes)]
        assert bed.exec(1, mesh + ["start", "--host", bed.address(1)] + common, cwd=REPO).returncode == 0
        assert bed.exec(2, mesh + ["join", f"{bed.address(1)}:7777", "--host", bed.address(2)] + common,
                        cwd=REPO).returncode == 0
        time.sleep(2)
        driver = bed.spawn(1, [py, "-c", DRIVER, f"{bed.address(1)}:7777", str(nbytes)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            if read_line(driver, 120).strip() != "ready":
                sys.exit("the driver did not start")
            for run in range(args.runs):
                rates["raw"].append(measure_tcp_throughput(bed, 1, 2, nbytes, port=5201 + run))
                rates["plain"].append(zmq_rate(bed, "plain", token, nbytes, 6100 + 2 * run))
                rates["curve"].append(zmq_rate(bed, "curve", token, nbytes, 6101 + 2 * run))
                driver.stdin.write("3\n")
                driver.stdin.flush()
                line = read_line(driver, 600)
                if not line:
                    sys.exit("the driver stopped or stalled")
                paused, *pulls = json.loads(line)
                rates["paused"].append(paused)
                rates["pull"].append(statistics.median(pulls))
                print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                      + f"; pull / raw TCP {rates['pull'][-1] / rates['raw'][-1]:.0%}", flush=True)
            driver.stdin.close()
            driver.wait(60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            bed.exec(1, mesh + ["stop"], cwd=REPO)
    med = statistics.median

    def own(kind: str) -> float:
        return med(p / r for p, r in zip(rates[kind], rates["raw"]))

    print(f"\nobject of {args.mib} MiB, host 1 -> host 2 over a veth pair; medians of {args.runs} runs, MB/s")
    print(f"  raw TCP (Python sockets)          {med(rates['raw']):8.0f}")
    print(f"  ZeroMQ, plain                     {med(rates['plain']):8.0f}")
    print(f"  ZeroMQ, CURVE                     {med(rates['curve']):8.0f}")
    for kind, label in (("pull", "back to back"), ("paused", "after a pause")):
        print(f"  meshcompute pull, {label:13s}   {med(rates[kind]):8.0f}   = "
              f"{med(rates[kind]) / med(rates['raw']):.0%} of raw TCP (median of each run's own ratio: "
              f"{own(kind):.0%}), {med(rates[kind]) / med(rates['curve']):.0%} of CURVE ZeroMQ")
    print("  (a pull: a task on host 2 reads an object host 1 put just before; end to end)")


if __name__ == "__main__":
    main()
