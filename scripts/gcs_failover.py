"""Measure control store failover on real daemons: SIGKILL the leader of a 3-node
loopback mesh, time until a write through a survivor succeeds again.

    python scripts/gcs_failover.py --trials 10

Each trial starts a fresh mesh (three daemons on 127.0.0.1), waits until the
three voters agree on a leader, writes a steady stream of KV puts through a
follower, kills the leader with SIGKILL and probes with 0.1 s timeouts. It
prints each trial and min / median / max, and removes every process it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OWN_ROOT = "MESH_SESSIONS_ROOT" not in os.environ
os.environ.setdefault("MESH_SESSIONS_ROOT", tempfile.mkdtemp(prefix="mesh-failover-"))

from meshcompute.host.launcher import query, request, start_node, stop_node  # noqa: E402
from meshcompute.wire.auth import generate_token  # noqa: E402
from meshcompute.wire.messages import Msg  # noqa: E402


def gcs(info, op, timeout):
    return request(info, Msg.GCS_REQUEST, op, timeout, timeout=timeout + 5)


def trial() -> float:
    token = generate_token()
    nodes = []
    try:
        nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, standalone=True,
                                object_store_memory=64 << 20))
        seed = nodes[0][1]["tcp"].replace("tcp://", "")
        for _ in range(2):
            nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, join=[seed],
                                    standalone=True, object_store_memory=64 << 20))
        infos = [info for _, info in nodes]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            views = [query(i, "node")["control"] for i in infos]
            if len({v["leader"] for v in views}) == 1 and views[0]["leader"] and all(len(v["voters"]) == 3
                                                                                     for v in views):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the three nodes did not elect a leader")
        leader = next(i for i in infos if i["node_id"] == views[0]["leader"])
        follower = next(i for i in infos if i is not leader)
        for n in range(20):
            assert gcs(follower, ("kv_put", b"k", b"%d" % n, True), 5)[0] == "ok"
        killed = time.monotonic()
        os.kill(leader["pid"], signal.SIGKILL)
        while True:
            if gcs(follower, ("kv_put", b"k", b"after", True), 0.1)[0] == "ok":
                return time.monotonic() - killed
            if time.monotonic() - killed > 30:
                raise RuntimeError("no leader 30 s after the SIGKILL")
    finally:
        for proc, info in nodes:
            stop_node(info)
            proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args()
    times = []
    try:
        for t in range(args.trials):
            took = trial()
            times.append(took)
            print(f"trial {t + 1}: a write succeeded {took * 1000:.0f} ms after the leader's SIGKILL", flush=True)
    finally:
        if _OWN_ROOT:
            shutil.rmtree(os.environ["MESH_SESSIONS_ROOT"], ignore_errors=True)
    print(f"failover over {len(times)} trials: min {min(times) * 1000:.0f} ms, "
          f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
