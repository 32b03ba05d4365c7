"""Resource admission: fractional CPUs, infeasible tasks, GPUs, custom resources."""

from __future__ import annotations

import logging
import os
import time

import pytest

import meshcompute as mesh
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import wait_for


@mesh.remote
def interval(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _max_overlap(spans):
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.node_options(num_cpus=2, num_gpus=2, resources={"accel": 1})
def test_resources_are_admitted(fresh_node, caplog):
    # Fractional CPUs: four 0.5-CPU tasks run at once on 2 CPUs, never five.
    spans = mesh.get([interval.options(num_cpus=0.5).remote(0.6) for _ in range(8)])
    assert _max_overlap(spans) == 4
    # Whole CPUs: at most two at once.
    spans = mesh.get([interval.remote(0.3) for _ in range(4)])
    assert _max_overlap(spans) == 2
    # A custom resource of 1 serializes its tasks.
    spans = mesh.get([interval.options(num_cpus=0, resources={"accel": 1}).remote(0.2) for _ in range(3)])
    assert _max_overlap(spans) == 1

    @mesh.remote(num_gpus=1)
    def gpu_env():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), mesh.get_gpu_ids()

    envs = mesh.get([gpu_env.remote() for _ in range(4)])
    assert {e[0] for e in envs} <= {"0", "1"} and all(e[0] == str(e[1][0]) for e in envs)

    @mesh.remote(num_gpus=2)
    def two_gpus():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert mesh.get(two_gpus.remote()) == "0,1"

    total = mesh.cluster_resources()
    assert total["CPU"] == 2 and total["GPU"] == 2 and total["accel"] == 1
    assert wait_for(lambda: mesh.available_resources().get("CPU") == 2, timeout=3)

    # An infeasible task stays pending with one clear warning and never runs.
    with caplog.at_level(logging.WARNING, logger="meshcompute"):
        refs = [interval.options(num_cpus=8).remote(0) for _ in range(3)]
        ready, _ = mesh.wait(refs, num_returns=1, timeout=1.0)
    assert ready == []
    warnings = [r for r in caplog.records if "no node of this mesh has that much" in r.getMessage()]
    assert len(warnings) == 1 and "'CPU': 8.0" in warnings[0].getMessage()
    # Other work still runs meanwhile.
    assert len(mesh.get(interval.remote(0))) == 2

    node_id = mesh.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    assert len(mesh.get(interval.options(scheduling_strategy=strategy).remote(0))) == 2
    assert [n["NodeID"] for n in mesh.nodes()] == [node_id]


@pytest.mark.node_options(num_cpus=1)
def test_single_cpu_runs_nested_work(fresh_node):
    @mesh.remote
    def outer(n):
        return sum(mesh.get([inner.remote(i) for i in range(n)]))

    @mesh.remote
    def inner(i):
        return i

    assert mesh.get(outer.remote(10), timeout=30) == 45
    # Leases go back once idle: no CPU is leaked by the blocked parent.
    assert wait_for(lambda: mesh.available_resources().get("CPU") == 1, timeout=3)
