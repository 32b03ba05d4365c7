"""A mesh of three nodes on loopback: gossip, scheduling, object pulls, failures, auth."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

import meshcompute as mesh
from meshcompute.host.launcher import start_node, stop_node
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from meshcompute.wire.messages import Msg

from .conftest import loopback_mesh, pid_alive, wait_for

MiB = 1 << 20


def _alive_view(info) -> dict:
    from meshcompute.host.launcher import query

    return {n["node_id"]: n["state"] for n in query(info, "mesh")["nodes"]}


@pytest.fixture(scope="module")
def mesh3():
    if mesh.is_initialized():
        mesh.shutdown()
    # No lingering warm pool: a daemon then drops the pages it moved 2 s after the last chunk
    # (node/pulls.py), not 30 s later.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MESH_STORE_WARM_LINGER", "0")
        with loopback_mesh(3, num_cpus=2, object_store_memory=768 * MiB) as (token, nodes):
            try:
                seed = nodes[0][1]["tcp"].replace("tcp://", "")
                ids = {info["node_id"] for _, info in nodes}
                assert wait_for(lambda: all(set(_alive_view(info)) == ids
                                            and set(_alive_view(info).values()) == {"alive"}
                                            for _, info in nodes), timeout=15)
                mesh.init(address=seed)
                yield {"token": token, "nodes": nodes, "ids": [info["node_id"] for _, info in nodes]}
            finally:
                if mesh.is_initialized():
                    mesh.shutdown()


def _shared_resident(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssShmem:"))


@mesh.remote
def where(i):
    time.sleep(0.005)
    return mesh.get_runtime_context().get_node_id()


@mesh.remote
def digest(arr):
    return hashlib.sha256(arr.tobytes()).hexdigest(), mesh.get_runtime_context().get_node_id()


def test_status_lists_three_alive_nodes_with_resources(mesh3):
    _, first = mesh3["nodes"][0]
    out = subprocess.run([sys.executable, "-m", "meshcompute.cli", "status", "--json", "--address",
                          first["tcp"].replace("tcp://", "")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert sorted(n["node_id"] for n in view["nodes"]) == sorted(mesh3["ids"])
    assert all(n["state"] == "alive" and n["resources_total"]["CPU"] == 2 for n in view["nodes"])
    assert mesh.cluster_resources()["CPU"] == 6
    assert len(mesh.nodes()) == 3


def test_tasks_run_on_every_node(mesh3):
    counts = collections.Counter(mesh.get([where.remote(i) for i in range(300)], timeout=60))
    assert set(counts) == set(mesh3["ids"]), counts
    assert sum(counts.values()) == 300


def test_large_array_from_node_a_is_consumed_bit_exact_on_node_c(mesh3):
    a, c = mesh3["ids"][0], mesh3["ids"][2]
    assert mesh.get_runtime_context().get_node_id() == a
    # 64 MiB here (the network-namespace test moves 200 MiB between hosts).
    arr = np.random.default_rng(7).integers(0, 2**63, size=64 * MiB // 8, dtype=np.int64)
    expected = hashlib.sha256(arr.tobytes()).hexdigest()
    ref = mesh.put(arr)  # lives in node A's store
    pinned = NodeAffinitySchedulingStrategy(node_id=c, soft=False)
    got, ran_on = mesh.get(digest.options(scheduling_strategy=pinned).remote(ref), timeout=120)
    assert ran_on == c and got == expected
    # Neither daemon keeps the object's pages in its page table once transfers pause: the
    # holder maps the chunks it serves, the puller those it writes, and each drops them
    # when no chunk moved for as long as its store keeps pages warm (2 s here; a node that
    # moved gigabytes stays small).
    for _, info in mesh3["nodes"]:
        assert wait_for(lambda pid=info["pid"]: _shared_resident(pid) < 16 * MiB, timeout=15), \
            (info["node_id"], _shared_resident(info["pid"]) / MiB)
    # A result made on C comes back to the driver on A.
    @mesh.remote
    def make(n):
        return np.arange(n, dtype=np.int64)

    back = mesh.get(make.options(scheduling_strategy=pinned).remote(30 * MiB // 8), timeout=60)
    assert back[-1] == 30 * MiB // 8 - 1 and back.sum() == (30 * MiB // 8) * (30 * MiB // 8 - 1) // 2


@mesh.remote
def make_block(mib):
    return np.ones(mib * MiB, dtype=np.uint8)


@mesh.remote
def block_sum(arr):
    return int(arr.sum()), mesh.get_runtime_context().get_node_id()


def test_task_runs_where_its_argument_lives_with_one_lease_round_trip(mesh3):
    """Was: the owner asked its own daemon, which answered "ask B" (LEASE_SPILLBACK)."""
    from meshcompute.owner import context

    b = mesh3["ids"][1]
    pinned = NodeAffinitySchedulingStrategy(node_id=b, soft=False)
    block = make_block.options(scheduling_strategy=pinned).remote(4)
    mesh.wait([block])
    core = context.core
    assert wait_for(lambda: b in core.tasks.nodes, timeout=5), "the driver never learned node B's daemon"
    sent, received = dict(core.sent), dict(core.received)

    def delta(now, then, kind):
        return now.get(kind, 0) - then.get(kind, 0)

    total, node = mesh.get(block_sum.remote(block), timeout=30)
    assert (total, node) == (4 * MiB, b)
    assert delta(core.sent, sent, Msg.REQUEST_LEASE) == 1
    assert delta(core.received, received, Msg.LEASE_GRANTED) == 1
    assert delta(core.received, received, Msg.LEASE_SPILLBACK) == 0


def test_arguments_are_pulled_before_the_lease_is_granted(mesh3):
    """Was: the lease was granted and the task pushed, and only then did the worker
    ask for its argument, holding the CPU while the bytes travelled."""
    from meshcompute.host.launcher import query

    a, c = mesh3["ids"][0], mesh3["ids"][2]
    _, info_c = mesh3["nodes"][2]
    arr = np.arange(24 * MiB // 8, dtype=np.int64)
    ref = mesh.put(arr)  # in node A's store
    before = query(info_c, "node")["pulls"]
    pinned = NodeAffinitySchedulingStrategy(node_id=c, soft=False)
    # A shape of its own, so the task needs a new lease (a held one takes tasks with no
    # daemon in between: their arguments are then read, and pulled, by the worker, as in Ray).
    got, ran_on = mesh.get(digest.options(scheduling_strategy=pinned, num_cpus=0.5).remote(ref), timeout=60)
    assert ran_on == c and got == hashlib.sha256(arr.tobytes()).hexdigest()
    after = query(info_c, "node")["pulls"]
    assert after.get("prefetch", 0) - before.get("prefetch", 0) == 1
    assert after.get("read", 0) == before.get("read", 0), "the worker had to pull its argument itself"
    assert mesh.get_runtime_context().get_node_id() == a


def test_get_timeout_bounds_the_read_of_an_object_on_another_node(mesh3):
    """Was: get(timeout=) bounded only the wait for the value to exist; reading it
    from another node's store (a pull) then took as long as the pull took."""
    from meshcompute.exceptions import GetTimeoutError

    b = mesh3["ids"][1]
    pinned = NodeAffinitySchedulingStrategy(node_id=b, soft=False)
    ref = make_block.options(scheduling_strategy=pinned).remote(192)  # in node B's store
    mesh.wait([ref], timeout=60)
    start = time.monotonic()
    with pytest.raises(GetTimeoutError):
        mesh.get(ref, timeout=0.05)  # a pull of 192 MiB takes far longer here
    assert time.monotonic() - start < 1.0
    block = mesh.get(ref, timeout=60)  # the read still works, and the late pin was let go
    assert block.nbytes == 192 * MiB and int(block[::4096].sum()) == 192 * MiB // 4096


def test_actors_are_placed_across_nodes_and_keep_their_order(mesh3):
    c = mesh3["ids"][2]

    @mesh.remote
    class Recorder:
        def __init__(self):
            self.seen = []

        def add(self, x):
            self.seen.append(x)
            return mesh.get_runtime_context().get_node_id()

        def seen_list(self):
            return self.seen

    rec = Recorder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=c, soft=False)).remote()
    nodes = mesh.get([rec.add.remote(i) for i in range(50)], timeout=30)
    assert set(nodes) == {c}
    assert mesh.get(rec.seen_list.remote()) == list(range(50))

    @mesh.remote
    def use(handle):
        return mesh.get(handle.add.remote(-1))

    assert mesh.get(use.remote(rec), timeout=30) == c
    mesh.kill(rec)
    with pytest.raises(mesh.exceptions.ActorDiedError):
        mesh.get(rec.add.remote(0), timeout=10)


def test_spread_uses_every_node_and_infeasible_work_waits_for_a_node_that_can_run_it(mesh3):
    spread = collections.Counter(mesh.get([where.options(scheduling_strategy="SPREAD").remote(i)
                                           for i in range(30)], timeout=60))
    assert set(spread) == set(mesh3["ids"]), spread

    @mesh.remote(resources={"special": 1})
    def needs_special():
        return mesh.get_runtime_context().get_node_id()

    ref = needs_special.remote()
    ready, _ = mesh.wait([ref], timeout=1.0)
    assert ready == []  # no node offers "special" yet
    seed = mesh3["nodes"][0][1]["tcp"].replace("tcp://", "")
    proc, info = start_node(host="127.0.0.1", port=0, num_cpus=1, token=mesh3["token"], join=[seed],
                            standalone=True, resources={"special": 1}, object_store_memory=128 * MiB)
    try:
        assert mesh.get(ref, timeout=30) == info["node_id"]
    finally:
        stop_node(info)
        proc.wait(10)


def test_connection_without_the_token_is_refused_and_the_node_keeps_serving(mesh3):
    _, first = mesh3["nodes"][0]
    ctx = zmq.Context()
    try:
        # No CURVE at all, then CURVE with the wrong token.
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(first["tcp"])
        from meshcompute.wire.auth import MeshKeys, secure_client

        wrong = ctx.socket(zmq.DEALER)
        wrong.setsockopt(zmq.LINGER, 0)
        secure_client(wrong, MeshKeys.from_token("this is not the mesh token"))
        wrong.connect(first["tcp"])
        from meshcompute.wire.messages import Msg, encode

        for sock in (plain, wrong):
            for _ in range(5):
                try:
                    sock.send_multipart([encode(Msg.NODE_INFO, 1, "mesh")], zmq.NOBLOCK)
                except zmq.Again:
                    pass  # no handshake completed, so there is not even a pipe to queue on
        assert not plain.poll(500) and not wrong.poll(500)  # no answer ever comes
        plain.close()
        wrong.close()
    finally:
        ctx.destroy(linger=0)
    assert len(mesh.get([where.remote(i) for i in range(20)], timeout=30)) == 20
    log_path = os.path.join(first["session_dir"], "logs", "daemon.log")
    assert wait_for(lambda: "refused" in open(log_path).read().lower(), timeout=5)


DRIVER = """
import sys, time
import meshcompute as mesh
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
mesh.init(address=sys.argv[1])

@mesh.remote
def hold(s):
    time.sleep(s)

refs = [hold.options(scheduling_strategy=On(node_id=n, soft=False)).remote(120) for n in sys.argv[2:] for _ in (0, 1)]
print("submitted", flush=True)
time.sleep(600)
"""


def test_a_killed_drivers_leases_on_other_nodes_come_back(mesh3):
    """Was: a SIGKILLed driver's leases on other nodes were never released (0 of 2 CPUs
    free on B and C 30 s later): daemons only noticed the death of their own processes."""
    from meshcompute.host.launcher import query

    (_, a), (_, b), (_, c) = mesh3["nodes"]
    seed = a["tcp"].replace("tcp://", "")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, seed, b["node_id"], c["node_id"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "submitted"

        def free(info) -> float:
            return query(info, "node")["resources_available"].get("CPU", 0.0)

        assert wait_for(lambda: free(b) == 0 and free(c) == 0, timeout=30), "the driver's tasks never ran"
        driver.kill()
        driver.wait(10)
        killed = time.monotonic()
        assert wait_for(lambda: free(b) == 2 and free(c) == 2, timeout=10)
        assert time.monotonic() - killed < 5
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)


def test_sigkill_of_a_node_is_seen_and_its_work_runs_elsewhere(mesh3):
    victim_proc, victim = mesh3["nodes"][2]
    survivors = [info for _, info in mesh3["nodes"][:2]]

    @mesh.remote(max_retries=3)
    def long_task(i):
        time.sleep(1.0)
        return i

    refs = [long_task.remote(i) for i in range(12)]
    time.sleep(0.5)  # spread over the three nodes by now
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    assert wait_for(lambda: all(_alive_view(s).get(victim["node_id"]) == "dead" for s in survivors), timeout=5)
    detected = time.time() - killed_at
    assert detected < 2.5, f"took {detected:.2f} s to declare the node dead"
    assert mesh.get(refs, timeout=60) == list(range(12))
    assert wait_for(lambda: mesh.cluster_resources().get("CPU") == 4, timeout=5)
    victim_proc.wait(5)
    assert wait_for(lambda: not pid_alive(victim["pid"]), timeout=5)
