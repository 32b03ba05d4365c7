"""The util modules on a mesh of two nodes: a pool's processes spread over the nodes in
proportion to their CPUs, and a queue is shared across nodes."""

from __future__ import annotations

import collections
import time

import pytest

import meshcompute as mesh
from meshcompute.util.futures import MeshExecutor
from meshcompute.util.multiprocessing import Pool
from meshcompute.util.queue import Queue
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for


@pytest.fixture(scope="module")
def mesh2():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(2, num_cpus=2, object_store_memory=256 << 20) as (_, nodes):
        try:
            seed = nodes[0][1]["tcp"].replace("tcp://", "")
            mesh.init(address=seed)
            assert wait_for(lambda: mesh.cluster_resources().get("CPU") == 4, timeout=15)
            yield [info["node_id"] for _, info in nodes]
        finally:
            if mesh.is_initialized():
                mesh.shutdown()


def where(_):
    time.sleep(0.2)
    return mesh.get_runtime_context().get_node_id()


@mesh.remote
def consume(q, n):
    return [q.get(timeout=30) for _ in range(n)], mesh.get_runtime_context().get_node_id()


@pytest.mark.timeout(120)
def test_pool_processes_spread_over_the_nodes(mesh2):
    with Pool() as pool:  # one process per CPU of the mesh: 2 on each node
        assert pool._engine.processes == 4
        counts = collections.Counter(pool.map(where, range(8), chunksize=1))
    assert set(counts) == set(mesh2) and min(counts.values()) >= 2
    with MeshExecutor() as ex:
        counts = collections.Counter(ex.map(where, range(8)))
    assert set(counts) == set(mesh2)


@pytest.mark.timeout(120)
def test_queue_is_shared_across_nodes(mesh2):
    q = Queue()
    other = [n for n in mesh2 if n != mesh.get_runtime_context().get_node_id()][0]
    ref = consume.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other)).remote(q, 3)
    for item in ("a", "b", "c"):
        q.put(item)
    items, node = mesh.get(ref, timeout=60)
    assert items == ["a", "b", "c"] and node == other
    q.shutdown()
