"""Deaths on a real mesh (three daemons on loopback): a node SIGKILLed mid-workload,
an owner that dies while others borrow its objects, a driver whose own node dies.

Each test starts its own mesh, since it kills part of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute import exceptions as exc
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

from .conftest import loopback_mesh, wait_for

MiB = 1 << 20


@pytest.fixture
def mesh3():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=2, object_store_memory=256 * MiB) as (token, nodes):
        try:
            mesh.init(address=nodes[0][1]["tcp"].replace("tcp://", ""))
            assert wait_for(lambda: len([n for n in mesh.nodes() if n["Alive"]]) == 3, timeout=15)
            yield nodes
        finally:
            if mesh.is_initialized():
                mesh.shutdown()


@mesh.remote(max_retries=3, num_returns=2)
def produce(i, runs_dir):
    with open(os.path.join(runs_dir, str(i)), "a") as f:  # one line per run: rebuilds are counted
        f.write(mesh.get_runtime_context().get_node_id() + "\n")
    return np.full(64 * 1024, i, dtype=np.int64), mesh.get_runtime_context().get_node_id()  # 512 KiB: stored


@mesh.remote(max_retries=3)
def consume(arr):
    return int(arr[0]), int(arr.sum())


@pytest.mark.timeout(120)
def test_results_lost_with_a_node_are_rebuilt_from_lineage(mesh3, tmp_path):
    """Was: 69 of 300 consumers failed with ObjectLostError after one of three nodes was
    SIGKILLed: a finished task's spec was discarded, so nothing could run it again."""
    victim_proc, victim = mesh3[2]
    n = 60
    ids = [info["node_id"] for _, info in mesh3]
    pairs = [produce.options(scheduling_strategy=On(node_id=ids[i % 3], soft=True)).remote(i, str(tmp_path)) for i in range(n)]
    arrays = [a for a, _ in pairs]
    assert mesh.get([home for _, home in pairs], timeout=60) == [ids[i % 3] for i in range(n)]
    # Only the node ids were read: each array's one copy is where it was made.
    os.kill(victim["pid"], signal.SIGKILL)
    victim_proc.wait(10)
    results = mesh.get([consume.remote(a) for a in arrays], timeout=90)
    assert results == [(i, i * 64 * 1024) for i in range(n)]
    # Exactly the lost ones were made again: their producers ran a second time, elsewhere.
    runs = {i: (tmp_path / str(i)).read_text().split() for i in range(n)}
    assert {i for i, r in runs.items() if len(r) > 1} == {i for i in range(n) if i % 3 == 2}
    assert all(r[-1] != victim["node_id"] for r in runs.values())


HOLDER = """
import sys, time
import meshcompute as mesh
mesh.init(address=sys.argv[1])

@mesh.remote
def slow():
    time.sleep(600)

keeper = mesh.get_actor("keeper", namespace="death")
stored = mesh.put(bytes(2 * 1024 * 1024))
mesh.get(keeper.keep.remote([stored, slow.remote()]))
print("handed over", flush=True)
time.sleep(600)
"""


@mesh.remote
class Keeper:
    def __init__(self):
        self.refs = []

    def keep(self, refs):
        self.refs = refs

    def read(self, i):
        start = time.monotonic()
        try:
            mesh.get(self.refs[i], timeout=30)
            return "read", time.monotonic() - start
        except exc.OwnerDiedError:
            return "OwnerDiedError", time.monotonic() - start
        except Exception as e:  # noqa: BLE001
            return type(e).__name__, time.monotonic() - start

    def ping(self):
        return "pong"


@pytest.mark.timeout(120)
def test_a_borrower_of_a_dead_owners_objects_gets_owner_died_error_and_keeps_serving(mesh3):
    """Was: get of a ref whose owner was SIGKILLed timed out (30 s), and a detached actor
    holding such a ref stopped answering altogether."""
    seed = mesh3[0][1]["tcp"].replace("tcp://", "")
    keeper = Keeper.options(name="keeper", namespace="death", lifetime="detached",
                            scheduling_strategy=On(node_id=mesh3[1][1]["node_id"], soft=False)).remote()
    try:
        assert mesh.get(keeper.ping.remote(), timeout=30) == "pong"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, seed], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "handed over"
        finally:
            holder.kill()
            holder.wait(10)
        for i in (0, 1):  # a value in the store, and one still pending
            what, took = mesh.get(keeper.read.remote(i), timeout=60)
            assert what == "OwnerDiedError" and took < 5, (i, what, took)
        assert mesh.get(keeper.ping.remote(), timeout=10) == "pong"
    finally:
        mesh.kill(keeper)


ORPHAN = """
import sys, time
import meshcompute as mesh
mesh.init(address=sys.argv[1])

@mesh.remote
def slow():
    time.sleep(600)

ref = slow.remote()
print("waiting", flush=True)
start = time.monotonic()
try:
    mesh.get(ref)
except mesh.exceptions.LocalNodeDiedError:
    print("LocalNodeDiedError", round(time.monotonic() - start, 1), flush=True)
"""


@pytest.mark.timeout(60)
def test_a_driver_whose_node_dies_gets_local_node_died_error():
    """Was: a driver whose own node died hung in get() forever."""
    from meshcompute.host.launcher import start_node, stop_node

    proc, info = start_node(host="127.0.0.1", port=0, num_cpus=1, standalone=True, object_store_memory=64 * MiB)
    driver = None
    try:
        driver = subprocess.Popen([sys.executable, "-c", ORPHAN, info["tcp"].replace("tcp://", "")],
                                  stdout=subprocess.PIPE, text=True)
        assert driver.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        os.kill(info["pid"], signal.SIGKILL)
        proc.wait(10)
        line = driver.stdout.readline().split()
        assert line[0] == "LocalNodeDiedError" and float(line[1]) < 5, line
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        stop_node(info)


@mesh.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, delay=0.0):
        time.sleep(delay)
        self.n += 1
        return self.n, mesh.get_runtime_context().get_node_id()

    def where(self):
        return mesh.get_runtime_context().get_node_id()

    def pid(self):
        return os.getpid()


@mesh.remote
def call_through(handle):
    return mesh.get(handle.where.remote(), timeout=60)


@pytest.mark.timeout(120)
def test_actors_on_a_dead_node_are_placed_again_keeping_names_and_retrying_calls(mesh3):
    """Was: a max_restarts=2 actor whose node was SIGKILLed raised ActorDiedError, its
    in-flight call was not retried, and its name was gone."""
    victim_proc, victim = mesh3[2]
    there = victim["node_id"]
    survivor = Counter.options(name="survivor", namespace="death", max_restarts=2, max_task_retries=-1,
                               scheduling_strategy=On(node_id=there, soft=True)).remote()
    pinned = Counter.options(max_restarts=2, scheduling_strategy=On(node_id=there, soft=False)).remote()
    once = Counter.options(scheduling_strategy=On(node_id=there, soft=True)).remote()
    assert mesh.get([survivor.where.remote(), pinned.where.remote(), once.where.remote()], timeout=30) == [there] * 3
    running = survivor.incr.remote(2.0)
    time.sleep(0.5)
    os.kill(victim["pid"], signal.SIGKILL)
    victim_proc.wait(10)
    n, where = mesh.get(running, timeout=60)  # retried on the new instance
    assert n == 1 and where != there
    assert mesh.get(mesh.get_actor("survivor", namespace="death").where.remote(), timeout=30) == where
    assert mesh.get(call_through.remote(survivor), timeout=60) == where  # a handle that crossed processes
    with pytest.raises(exc.ActorDiedError, match="soft=False"):
        mesh.get(pinned.where.remote(), timeout=30)
    with pytest.raises(exc.ActorDiedError, match="max_restarts"):
        mesh.get(once.where.remote(), timeout=30)


@mesh.remote(max_retries=3)
def nap(i):
    time.sleep(3.0)
    return i


@pytest.mark.timeout(120)
def test_a_node_taken_for_dead_that_returns_gets_its_cpus_back_and_keeps_one_instance_of_each_actor(mesh3):
    """Was: when a driver heard a node died it dropped its leases there without returning
    them; if the node was only unreachable, its CPUs stayed leased to nobody."""
    from meshcompute.host.launcher import query

    _, frozen = mesh3[2]
    there = frozen["node_id"]
    actor = Counter.options(max_restarts=1, scheduling_strategy=On(node_id=there, soft=True)).remote()
    assert mesh.get(actor.where.remote(), timeout=30) == there
    old_pid = mesh.get(pid_of.remote(actor), timeout=30)
    refs = [nap.options(scheduling_strategy=On(node_id=there, soft=True)).remote(i) for i in range(2)]
    assert wait_for(lambda: query(frozen, "node")["resources_available"].get("CPU") == 0, timeout=20)
    os.kill(frozen["pid"], signal.SIGSTOP)  # unreachable, not dead
    try:
        assert wait_for(lambda: not [n for n in mesh.nodes() if n["NodeID"] == there and n["Alive"]], timeout=20)
        assert mesh.get(refs, timeout=60) == [0, 1]  # retried elsewhere
        assert mesh.get(actor.where.remote(), timeout=60) != there  # placed again elsewhere
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    # Back: the leases dropped there are handed back, and the old instance of the actor stops.
    assert wait_for(lambda: query(frozen, "node")["resources_available"].get("CPU") == 2, timeout=20)
    assert wait_for(lambda: not _alive(old_pid), timeout=20)
    assert mesh.get(actor.where.remote(), timeout=30) != there


@mesh.remote
def pid_of(handle):
    return mesh.get(handle.pid.remote())


def _alive(pid: int) -> bool:
    from meshcompute.host.sessions import pid_alive

    return pid_alive(pid)
