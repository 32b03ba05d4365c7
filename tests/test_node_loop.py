"""The node loop stays responsive while its store spills and restores.

A node of a 2-node loopback mesh (256 MiB store) takes 3x its capacity in puts,
all kept referenced, reads them back, and has the other node pull some; meanwhile a separate process sends the
daemon a cheap request (NODE_INFO) every ~10 ms and asks the other node, every
~100 ms, what gossip thinks of the spilling one.  Spill and restore copy bytes
on a helper thread (docs/store.md), so round trips stay short and gossip never
suspects the node.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for

MiB = 1 << 20

PROBE = r"""
import json, select, sys, time
import zmq
from meshcompute.wire.messages import Msg, decode, encode
from meshcompute.wire.transport import Endpoint

spilling, other = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ctx = zmq.Context()
ep = Endpoint(ctx, spilling["node_id"], "probe", spilling["session_dir"])
ep2 = Endpoint(ctx, other["node_id"], "probe", other["session_dir"])


def ask(endpoint, info, req_id, what):
    t0 = time.perf_counter()
    endpoint.send(info["address"], [encode(Msg.NODE_INFO, req_id, what)])
    while True:
        if not endpoint.inbox.poll(10000):
            return None, float("inf")
        msg = decode(endpoint.inbox.recv_multipart()[1])
        if msg[0] == Msg.REPLY and msg[1] == req_id:
            return msg[2], time.perf_counter() - t0


rtts, states, req = [], set(), 0
next_view = 0.0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    req += 1
    _, rtt = ask(ep, spilling, req, "node")
    rtts.append(rtt)
    now = time.monotonic()
    if now >= next_view:
        next_view = now + 0.1
        view, _ = ask(ep2, other, req, "mesh")
        if view is not None:
            states |= {n["state"] for n in view["nodes"] if n["node_id"] == spilling["node_id"]}
    time.sleep(0.01)
ep.close()
ep2.close()
ctx.term()
print(json.dumps({"rtts": rtts, "states": sorted(states)}), flush=True)
"""


@mesh.remote
def digest(arr):
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _payload(i: int, n: int) -> np.ndarray:
    # Half random (spilled raw), half compressible (spilled lz4).
    if i % 2:
        return (np.arange(n, dtype=np.int64) * (i + 1)) % 4099
    return np.random.default_rng(i).integers(0, 1 << 62, n, dtype=np.int64)


@pytest.mark.timeout(240)
def test_spilling_three_times_the_store_keeps_the_loop_responsive():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(2, num_cpus=1, object_store_memory=256 * MiB) as (token, nodes):
        (_, spilling), (_, other) = nodes
        from meshcompute.host.launcher import query

        ids = {spilling["node_id"], other["node_id"]}
        assert wait_for(lambda: all({n["node_id"]: n["state"] for n in query(info, "mesh")["nodes"]}
                                    == dict.fromkeys(ids, "alive") for info in (spilling, other)), timeout=20)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        probe = subprocess.Popen([sys.executable, "-c", PROBE, json.dumps(spilling), json.dumps(other)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert probe.stdout.readline().strip() == "ready"
            mesh.init(address=spilling["tcp"].replace("tcp://", ""))
            # 784 MiB through a 256 MiB store, in objects large enough that each
            # spill or restore copies ~112 MiB: two fit in memory at a time.
            n = 112 * MiB // 8
            refs = [mesh.put(_payload(i, n)) for i in range(7)]
            stats = query(spilling, "node")["store"]
            assert stats["spilled_objects"] >= 5 and stats["used"] <= 256 * MiB, stats
            for _ in range(2):
                for i, ref in enumerate(refs):
                    arr = mesh.get(ref)
                    assert np.array_equal(arr, _payload(i, n)), i
                    del arr  # unpins: the next restore may spill this one
            assert query(spilling, "node")["store"]["restores"] >= 10
            # The other node pulls spilled objects: the source restores each while
            # the puller's chunk requests wait for the transfer's pin.
            there = NodeAffinitySchedulingStrategy(node_id=other["node_id"], soft=False)
            got = mesh.get([digest.options(scheduling_strategy=there).remote(refs[i]) for i in (0, 1, 2)],
                           timeout=120)
            assert got == [hashlib.sha256(_payload(i, n).tobytes()).hexdigest() for i in (0, 1, 2)]
            out, _ = probe.communicate("stop\n", timeout=60)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
            if mesh.is_initialized():
                mesh.shutdown()
        result = json.loads(out.strip().splitlines()[-1])
        rtts = sorted(result["rtts"])
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        print(f"\nNODE_INFO round trips during spills: n={len(rtts)} median={rtts[len(rtts) // 2] * 1e3:.1f} ms "
              f"p99={p99 * 1e3:.1f} ms max={rtts[-1] * 1e3:.1f} ms; states seen by the peer: {result['states']}")
        assert len(rtts) >= 20
        assert result["states"] == ["alive"], result["states"]
        log_path = os.path.join(other["session_dir"], "logs", "daemon.log")
        with open(log_path) as f:
            log = f.read()
        for kind in ("suspect", "dead"):
            assert f"membership: {kind} {spilling['node_id']}" not in log
        assert p99 < 0.050, f"p99 of NODE_INFO round trips was {p99 * 1e3:.1f} ms"


def test_copier_runs_jobs_on_helper_threads_and_completions_on_the_caller():
    import select
    import threading

    from meshcompute.node.copier import Copier

    copier = Copier()
    try:
        seen = []
        caller = threading.get_ident()
        copier.submit(threading.get_ident, lambda result, error: seen.append((result, error, threading.get_ident())))
        copier.submit(lambda: 1 // 0, lambda result, error: seen.append((result, type(error), threading.get_ident())))
        while copier.inflight:
            assert select.select([copier.fd], [], [], 10)[0]
            copier.run_completions()
        ran_on = next(r for r, e, _ in seen if e is None)
        assert ran_on != caller and all(t == caller for _, _, t in seen)
        assert (None, ZeroDivisionError) in [(r, e) for r, e, _ in seen]
    finally:
        copier.stop()


def test_an_idle_copier_thread_keeps_nothing_of_its_last_job():
    import gc
    import select
    import time
    import weakref

    from meshcompute.node.copier import Copier

    class Result:  # what a sealing job returns: a buffer its owner wants back once dropped
        pass

    copier = Copier()
    try:
        results = []
        for _ in range(4):  # every thread runs at least one job, most likely
            copier.submit(Result, lambda result, error: results.append(weakref.ref(result)))
        while copier.inflight:
            assert select.select([copier.fd], [], [], 10)[0]
            copier.run_completions()
        # A thread lets go of its job just after it hands the completion over: wait for that.
        deadline = time.monotonic() + 5
        while not all(r() is None for r in results) and time.monotonic() < deadline:
            time.sleep(0.01)
            gc.collect()
        assert len(results) == 4 and all(r() is None for r in results), "an idle helper thread holds a result"
    finally:
        copier.stop()
