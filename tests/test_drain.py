"""A node asked to stop drains: the tasks running on it finish, new work goes elsewhere,
and it leaves once its leases are back (a pod's SIGTERM on scale-down loses no work)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import meshcompute as mesh
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


@mesh.remote(max_retries=0)
def slow(seconds):
    time.sleep(seconds)
    return mesh.get_runtime_context().get_node_id()


@mesh.remote(max_retries=0)
def where():
    return mesh.get_runtime_context().get_node_id()


def test_sigterm_lets_running_tasks_finish_and_sends_new_work_elsewhere():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(2, num_cpus=2, object_store_memory=64 * MiB) as (token, nodes):
        (_, home), (proc_b, info_b) = nodes
        mesh.init(address=home["tcp"].replace("tcp://", ""))
        try:
            assert wait_for(lambda: len([n for n in mesh.nodes() if n["Alive"]]) == 2, timeout=20)
            on_b = NodeAffinitySchedulingStrategy(info_b["node_id"], soft=True)
            # Two tasks running on B, with no retries: killing them would fail them.
            running = [slow.options(scheduling_strategy=on_b).remote(3) for _ in range(2)]
            assert wait_for(lambda: _busy(info_b), timeout=20)
            t = time.monotonic()
            os.kill(info_b["pid"], signal.SIGTERM)  # a node of this test's mesh, started above
            time.sleep(0.5)
            # Work submitted while B drains goes to the other node, even when it prefers B.
            later = mesh.get([where.options(scheduling_strategy=on_b).remote() for _ in range(4)], timeout=30)
            assert set(later) == {home["node_id"]}, later
            assert mesh.get(running, timeout=30) == [info_b["node_id"]] * 2
            proc_b.wait(30)
            took = time.monotonic() - t
            assert took < 10, took  # it left once its leases were back, not at the drain deadline
            assert wait_for(lambda: not any(n["NodeID"] == info_b["node_id"] and n["Alive"]
                                            for n in mesh.nodes()), timeout=10)
        finally:
            mesh.shutdown()


def _busy(info: dict) -> bool:
    from meshcompute.host.launcher import query

    try:
        node = query(info, "node")
    except Exception:
        return False
    return node["resources_available"].get("CPU", 2) == 0


def test_a_leaving_leader_hands_the_control_store_over_before_it_goes():
    """SIGTERM to the control store's leader: it hands leadership to another voter
    (Raft's transfer) and leaves only then, so the survivors have a leader the moment
    it is gone -- no election timeout in between."""
    from meshcompute.host.launcher import query

    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=64 * MiB) as (token, nodes):
        infos = [info for _, info in nodes]

        def control(info):
            return query(info, "node")["control"]

        assert wait_for(lambda: len({control(i)["leader"] for i in infos} - {None}) == 1
                        and all(len(control(i)["voters"]) == 3 for i in infos), timeout=30)
        leader_id = control(infos[0])["leader"]
        (proc, leader), = [(p, i) for p, i in nodes if i["node_id"] == leader_id]
        survivor = next(i for i in infos if i["node_id"] != leader_id)
        term = control(survivor)["term"]
        os.kill(leader["pid"], signal.SIGTERM)  # a node of this test's mesh, started above
        proc.wait(30)
        now = control(survivor)  # right after it exited
        assert now["leader"] not in (None, leader_id) and now["term"] == term + 1, now
