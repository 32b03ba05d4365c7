"""What docs/observability.md says `mesh top` shows when a node dies: its actors stay,
shown DEAD, both in a view that watches another member and in one that watched the
dead node and moved (a view opened only later does not list them: the docs say so)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import meshcompute as mesh
from meshcompute.observe.client import connect
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for


@mesh.remote
class Keeper:
    def ping(self):
        return os.getpid()


def _actor(client, actor_id: str) -> dict:
    return client.state.data.get(f"actor/{actor_id}") or {}


def _pump(clients, until, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in clients:
            c.poll(0.05)
        if until():
            return True
    return False


@pytest.mark.timeout(150)
def test_actors_of_a_dead_node_show_dead_in_top():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=64 << 20) as (_token, nodes):
        (_, a), (_, b), (_, c) = nodes
        clients = []
        try:
            assert wait_for(lambda: len(mesh_nodes(a)) == 3, timeout=20)
            mesh.init(address=a["tcp"].replace("tcp://", ""))
            on_b, on_c = (Keeper.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["node_id"])).remote()
                          for n in (b, c))
            mesh.get([on_b.ping.remote(), on_c.ping.remote()], timeout=30)
            kb, kc = on_b._actor_id.hex(), on_c._actor_id.hex()
            # A view of the node that dies: it moves to a member that never followed that
            # node's actors (no other view was open), and still shows them, DEAD.
            moving = connect(b)
            clients.append(moving)
            assert _pump(clients, lambda: _actor(moving, kb).get("state") == "ALIVE", 15)
            os.kill(int(b["pid"]), signal.SIGKILL)
            assert _pump(clients, lambda: moving.failovers and _actor(moving, kb).get("state") == "DEAD", 20), \
                (_actor(moving, kb), moving.status)
            assert moving.watched in (a["node_id"], c["node_id"]) and "died" in _actor(moving, kb)["reason"]
            # A view of a member that survives: the actors of the node that dies turn DEAD there.
            staying = connect(a)
            clients.append(staying)
            assert _pump(clients, lambda: _actor(staying, kc).get("state") == "ALIVE", 15)
            os.kill(int(c["pid"]), signal.SIGKILL)
            assert _pump(clients, lambda: all(_actor(v, kc).get("state") == "DEAD" for v in clients), 20), \
                [(_actor(v, kc), v.status) for v in clients]
            # And they stay so, past the time the nodes' leftovers are cleaned up (10 s).
            _pump(clients, lambda: False, 12)
            assert _actor(moving, kb).get("state") == "DEAD"
            assert all(_actor(v, kc).get("state") == "DEAD" for v in clients)
        finally:
            for v in clients:
                v.close()
            if mesh.is_initialized():
                mesh.shutdown()


def mesh_nodes(info: dict) -> list:
    from meshcompute.host.launcher import query

    return [n for n in query(info, "mesh")["nodes"] if n["state"] == "alive"]
