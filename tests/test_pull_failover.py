"""A pull whose source node dies goes on from another node's copy (real daemons on loopback)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.host.launcher import query
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, pid_alive, wait_for

MiB = 1 << 20


@mesh.remote
def make_block(mib):
    return np.arange(mib * MiB // 8, dtype=np.int64)


@mesh.remote
def checksum(arr):
    return int(arr[::1024].sum()), mesh.get_runtime_context().get_node_id()


@pytest.mark.timeout(120)
def test_a_read_whose_source_dies_mid_pull_completes_from_another_copy():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=768 * MiB) as (token, nodes):
        (_, a), (b_proc, b), (_, c) = nodes
        ids = {n["node_id"] for _, n in nodes}
        assert wait_for(lambda: all({x["node_id"]: x["state"] for x in query(n, "mesh")["nodes"]}
                                    == dict.fromkeys(ids, "alive") for _, n in nodes), timeout=20)
        mesh.init(address=a["tcp"].replace("tcp://", ""))
        try:
            mib = 320
            n = mib * MiB // 8
            expected = int(np.arange(n, dtype=np.int64)[::1024].sum())
            on_b = NodeAffinitySchedulingStrategy(node_id=b["node_id"], soft=False)
            on_c = NodeAffinitySchedulingStrategy(node_id=c["node_id"], soft=False)
            ref = make_block.options(scheduling_strategy=on_b).remote(mib)  # primary copy on B
            # A task on C reads it: C now holds a secondary copy.
            assert mesh.get(checksum.options(scheduling_strategy=on_c).remote(ref), timeout=60) == \
                (expected, c["node_id"])
            # The driver reads it on A, pulling from B; B dies early in the pull.
            killer = threading.Timer(0.15, os.kill, (b["pid"], signal.SIGKILL))
            killer.start()
            start = time.monotonic()
            arr = mesh.get(ref, timeout=60)
            killer.join()
            assert arr.shape == (n,) and int(arr[::1024].sum()) == expected and arr[-1] == n - 1
            assert query(a, "node")["pulls"].get("resumed", 0) == 1, "the pull was not taken over"
            assert time.monotonic() - start < 30
            del arr
        finally:
            mesh.shutdown()
            b_proc.wait(10)
            assert wait_for(lambda: not pid_alive(b["pid"]), timeout=5)
