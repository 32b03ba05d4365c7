"""The control store on real daemons: a Raft group over loopback meshes.

KV reads and writes from any node, names unique across the mesh, the leader
SIGKILLed during a stream of writes (failover time, no acknowledged write lost,
a linearizable history, named actors still resolve, the dead voter replaced by
a learner), no quorum -> a clear error, placement groups.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import meshcompute as mesh
from meshcompute.exceptions import ControlStoreUnavailableError, PlacementGroupRemovedError
from meshcompute.host.launcher import query, request
from meshcompute.raft.linearizability import UNKNOWN, KVModel, Operation, check_operations
from meshcompute.util import placement_group, placement_group_table, remove_placement_group
from meshcompute.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)
from meshcompute.wire.messages import Msg

from .conftest import loopback_mesh, wait_for

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gcs(info: dict, op: tuple, timeout: float = 5.0):
    """One control store request straight to a node's daemon: (status, value)."""
    return request(info, Msg.GCS_REQUEST, op, timeout, timeout=timeout + 5)


def control(info: dict) -> dict:
    return query(info, "node")["control"]


def settled(infos: list[dict], voters: int) -> bool:
    """Every node agrees on one leader and sees ``voters`` voters."""
    try:
        views = [control(i) for i in infos]
    except Exception:
        return False
    leaders = {v["leader"] for v in views}
    return len(leaders) == 1 and None not in leaders and all(len(v["voters"]) == voters for v in views)


@pytest.fixture(scope="module")
def mesh3():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=2, object_store_memory=64 * MiB) as (token, nodes):
        infos = [info for _, info in nodes]
        try:
            assert wait_for(lambda: settled(infos, 3), timeout=20), [control(i) for i in infos]
            mesh.init(address=infos[0]["tcp"].replace("tcp://", ""))
            yield infos
        finally:
            if mesh.is_initialized():
                mesh.shutdown()


def test_the_first_three_nodes_vote_and_every_node_knows_the_leader(mesh3):
    ids = {i["node_id"] for i in mesh3}
    views = [control(i) for i in mesh3]
    assert all(set(v["voters"]) == ids and v["learners"] == [] for v in views)
    assert sorted(v["role"] for v in views) == ["follower", "follower", "leader"]
    assert len({v["term"] for v in views}) == 1


def test_mesh_status_shows_leader_term_and_commit_of_every_node(mesh3):
    mesh.kv.put("status-probe", b"1")
    addr = mesh3[1]["tcp"].replace("tcp://", "")

    def status():
        out = subprocess.run([sys.executable, "-m", "meshcompute.cli", "status", "--json", "--address", addr],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # Other nodes' figures come by gossip: wait until they are fresh.
    assert wait_for(lambda: len({n["control"].get("commit_index") for n in status()["nodes"]}) == 1, timeout=10)
    view = status()
    roles = sorted(n["control"]["role"] for n in view["nodes"])
    assert roles == ["follower", "follower", "leader"]
    leader = view["leader"]
    assert leader in {i["node_id"] for i in mesh3}
    assert all(n["control"]["leader"] == leader and n["control"]["term"] >= 1 and n["control"]["commit_index"] > 0
               for n in view["nodes"])
    table = subprocess.run([sys.executable, "-m", "meshcompute.cli", "status", "--address", addr],
                           capture_output=True, text=True, timeout=30, env=dict(os.environ, COLUMNS="200"))
    assert f"control store leader: {leader}" in table.stdout
    assert "leader" in table.stdout and "follower" in table.stdout


def test_kv_written_through_one_node_is_read_through_every_node(mesh3):
    assert mesh.kv.put("shared/a", b"1") is False
    assert mesh.kv.put("shared/a", b"2", overwrite=False) is True  # existed: unchanged
    for info in mesh3:
        assert gcs(info, ("kv_get", b"shared/a")) == ("ok", b"1")
    assert gcs(mesh3[2], ("kv_put", b"shared/b", b"from-c", True)) == ("ok", False)
    assert mesh.kv.get("shared/b") == b"from-c"
    assert mesh.kv.list("shared/") == [b"shared/a", b"shared/b"]
    assert mesh.kv.exists("shared/a") and not mesh.kv.exists("shared/zzz")
    assert mesh.kv.delete("shared/", by_prefix=True) == 2
    assert mesh.kv.list("shared/") == []
    with pytest.raises(TypeError):
        mesh.kv.put("k", 3)  # values are bytes or str


def test_compare_and_set_from_every_node_at_once_has_exactly_one_winner(mesh3):
    results = {}

    def contend(i, info):
        results[i] = gcs(info, ("kv_cas", b"lock", None, f"owner-{i}".encode()))

    threads = [threading.Thread(target=contend, args=(i, info)) for i, info in enumerate(mesh3 * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, (status, (swapped, _)) in results.items() if status == "ok" and swapped]
    assert len(results) == 9 and len(winners) == 1
    assert mesh.kv.get("lock") == f"owner-{winners[0]}".encode()
    assert mesh.kv.cas("lock", f"owner-{winners[0]}", None) is True
    assert mesh.kv.get("lock") is None


NAMED_DRIVER = textwrap.dedent("""
    import json, sys
    import meshcompute as mesh
    mesh.init(address=sys.argv[1])
    out = {}
    h = mesh.get_actor("registry", namespace="shared-ns")
    out["call"] = mesh.get(h.whoami.remote())

    @mesh.remote
    class Other:
        pass

    try:
        Other.options(name="registry", namespace="shared-ns").remote()
        out["dup"] = "created"
    except ValueError as e:
        out["dup"] = str(e)
    same = Other.options(name="registry", namespace="shared-ns", get_if_exists=True).remote()
    out["get_if_exists"] = mesh.get(same.whoami.remote())
    ok = Other.options(name="registry", namespace="elsewhere").remote()
    out["other_namespace"] = ok is not None
    try:
        mesh.get_actor("nobody", namespace="shared-ns")
        out["missing"] = "found"
    except ValueError as e:
        out["missing"] = str(e)
    print(json.dumps(out))
    mesh.shutdown()
""")


@mesh.remote
class Registry:
    def whoami(self):
        return mesh.get_runtime_context().get_node_id()


def test_actor_names_are_unique_across_the_mesh_and_resolve_from_any_node(mesh3):
    node0 = mesh3[0]["node_id"]
    reg = Registry.options(name="registry", namespace="shared-ns", lifetime="detached",
                           scheduling_strategy=NodeAffinitySchedulingStrategy(node0)).remote()
    try:
        assert mesh.get(reg.whoami.remote(), timeout=30) == node0
        out = subprocess.run([sys.executable, "-c", NAMED_DRIVER, mesh3[2]["tcp"].replace("tcp://", "")],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["call"] == node0
        assert "already taken" in res["dup"]
        assert res["get_if_exists"] == node0
        assert res["other_namespace"] is True
        assert "no such live actor" in res["missing"]
    finally:
        mesh.kill(reg)
    # Once the actor is dead its name is free again, everywhere.
    assert wait_for(lambda: gcs(mesh3[1], ("name_lookup", "shared-ns", "registry")) == ("ok", None), timeout=10)


def test_jobs_and_nodes_are_recorded(mesh3):
    status, nodes = gcs(mesh3[1], ("nodes",))
    assert status == "ok" and set(nodes) == {i["node_id"] for i in mesh3}
    assert all(n["state"] == "ALIVE" for n in nodes.values())
    status, jobs = gcs(mesh3[1], ("jobs",))
    assert status == "ok"
    mine = [j for j in jobs.values() if j["pid"] == os.getpid()]
    assert len(mine) == 1 and mine[0]["finished"] is None and mine[0]["node_id"] == mesh3[0]["node_id"]


# ------------------------------------------------------------------ placement groups


@mesh.remote(num_cpus=1)
def node_of_task():
    return mesh.get_runtime_context().get_node_id()


def _cpus_free() -> float:
    return sum(n["resources_available"].get("CPU", 0) for n in query_mesh())


def query_mesh():
    from meshcompute.api.session import _mesh_view

    return _mesh_view()


def test_strict_spread_puts_each_bundle_on_its_own_node_and_tasks_run_in_their_bundle(mesh3):
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert mesh.get(pg.ready(), timeout=30) == pg
    table = placement_group_table(pg)
    assert table["state"] == "CREATED"
    where = table["bundles_to_node_id"]
    assert sorted(where.values()) == sorted(i["node_id"] for i in mesh3)
    ran = mesh.get([node_of_task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                    for i in range(3)], timeout=60)
    assert ran == [where[i] for i in range(3)]
    remove_placement_group(pg)
    assert wait_for(lambda: placement_group_table(pg)["state"] == "REMOVED", timeout=10)


def test_strict_pack_keeps_bundles_together_and_an_actor_lives_in_its_bundle(mesh3):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(30)
    where = placement_group_table(pg)["bundles_to_node_id"]
    assert where[0] == where[1]

    @mesh.remote(num_cpus=1)
    class InBundle:
        def node(self):
            return mesh.get_runtime_context().get_node_id()

    a = InBundle.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote()
    assert mesh.get(a.node.remote(), timeout=30) == where[1]
    remove_placement_group(pg)
    # Removing the group stops what runs in it.
    with pytest.raises(mesh.exceptions.ActorDiedError):
        for _ in range(100):
            mesh.get(a.node.remote(), timeout=30)
            time.sleep(0.1)


def test_a_group_that_cannot_be_placed_reserves_nothing_and_waits(mesh3):
    before = 6.0  # 3 nodes x 2 CPUs, once what earlier tests ran has let go
    assert wait_for(lambda: _cpus_free() == before, timeout=10)
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")  # 4 bundles, 3 nodes
    assert not pg.wait(1.5)
    assert placement_group_table(pg)["state"] == "PENDING"
    assert _cpus_free() == before
    ready = pg.ready()
    remove_placement_group(pg)
    with pytest.raises(PlacementGroupRemovedError):
        mesh.get(ready, timeout=10)
    with pytest.raises(ValueError):
        placement_group([{"CPU": 1}], strategy="EVERYWHERE")
    with pytest.raises(ValueError):
        placement_group([])


def test_removing_a_group_gives_its_resources_back(mesh3):
    before = 6.0
    assert wait_for(lambda: _cpus_free() == before, timeout=10)
    pg = placement_group([{"CPU": 2}, {"CPU": 1}], strategy="PACK")
    assert pg.wait(30)
    assert wait_for(lambda: _cpus_free() == before - 3, timeout=10)
    remove_placement_group(pg)
    assert wait_for(lambda: _cpus_free() == before, timeout=10)


def test_tasks_of_a_removed_group_fail_with_task_placement_group_removed(mesh3):
    """Tasks queued behind the group's one CPU, and tasks submitted after the removal,
    fail with Ray's error; before, they waited forever for bundles that were gone."""
    from meshcompute.exceptions import TaskPlacementGroupRemoved

    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    in_group = PlacementGroupSchedulingStrategy(pg)

    @mesh.remote(num_cpus=1, max_retries=0)
    def hold(seconds):
        time.sleep(seconds)
        return "done"

    running = hold.options(scheduling_strategy=in_group).remote(60)
    queued = [hold.options(scheduling_strategy=in_group).remote(0) for _ in range(3)]
    time.sleep(0.5)  # the first holds the bundle; the others wait for it
    remove_placement_group(pg)
    for ref in queued:
        with pytest.raises(TaskPlacementGroupRemoved, match="placement group"):
            mesh.get(ref, timeout=30)
    with pytest.raises(mesh.exceptions.MeshError):  # stopped with its bundle (no retries left)
        mesh.get(running, timeout=30)
    with pytest.raises(TaskPlacementGroupRemoved):
        mesh.get(hold.options(scheduling_strategy=in_group).remote(0), timeout=30)
    assert mesh.get(hold.remote(0), timeout=30) == "done"  # the rest of the mesh is unaffected


# ------------------------------------------------------------------ failures


@mesh.remote
class Pinger:
    def ping(self):
        return "pong"


def test_sigkill_of_the_leader_during_writes_keeps_every_acknowledged_write():
    """4 nodes (3 voters + a learner). The leader dies in the middle of a stream
    of writes from three clients: a new leader serves within 1.5 s, every
    acknowledged write is there, the history is linearizable, a named actor
    still resolves, and the learner takes the dead voter's place."""
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(4, num_cpus=1, object_store_memory=64 * MiB) as (token, nodes):
        infos = [info for _, info in nodes]
        assert wait_for(lambda: settled(infos, 3), timeout=30), [control(i) for i in infos]
        leader_id = control(infos[0])["leader"]
        leader = next(i for i in infos if i["node_id"] == leader_id)
        survivors = [i for i in infos if i is not leader]
        mesh.init(address=survivors[0]["tcp"].replace("tcp://", ""))
        try:
            pinger = Pinger.options(name="pinger", namespace="failover", lifetime="detached",
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(survivors[1]["node_id"])).remote()
            assert mesh.get(pinger.ping.remote(), timeout=30) == "pong"

            t0 = time.monotonic()
            history: list[Operation] = []
            acked: list[bytes] = []
            stop = threading.Event()
            lock = threading.Lock()

            def client(cid: int) -> None:
                rng = random.Random(cid)
                info = survivors[cid % len(survivors)]
                n = 0
                while not stop.is_set():
                    n += 1
                    key = rng.choice([b"x", b"y"])
                    kind = rng.choice(["put", "get", "cas", "unique"])
                    call = time.monotonic() - t0
                    try:
                        if kind == "unique":
                            k = f"acked/{cid}/{n}".encode()
                            status, _ = gcs(info, ("kv_put", k, b"1", True), 5.0)
                            if status == "ok":
                                with lock:
                                    acked.append(k)
                            continue
                        if kind == "put":
                            value = f"{cid}-{n}".encode()
                            inp, op = ("put", key, value), ("kv_put", key, value, True)
                        elif kind == "get":
                            inp, op = ("get", key, None), ("kv_get", key)
                        else:
                            old, new = rng.choice([None, b"%d-%d" % (cid, n - 1)]), f"{cid}-{n}".encode()
                            inp, op = ("cas", key, (old, new)), ("kv_cas", key, old, new)
                        status, value = gcs(info, op, 5.0)
                    except Exception:
                        status, value = "lost", None
                    ret = time.monotonic() - t0
                    if status != "ok":
                        out, ret = UNKNOWN, None  # may or may not have taken effect
                    elif kind == "put":
                        out = None
                    elif kind == "get":
                        out = value
                    else:
                        out = value[0]
                    with lock:
                        history.append(Operation(cid, inp, call, out, ret))

            threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            killed = time.monotonic()
            os.kill(leader["pid"], signal.SIGKILL)
            # Probe: how soon does a write through a survivor succeed again?
            served = None
            while time.monotonic() - killed < 10:
                status, _ = gcs(survivors[2], ("kv_put", b"probe", b"1", True), 0.2)
                if status == "ok":
                    served = time.monotonic() - killed
                    break
            time.sleep(1.5)
            stop.set()
            for t in threads:
                t.join(30)
            assert served is not None and served < 1.5, f"no new leader served within 1.5 s ({served})"
            new_leader = control(survivors[0])["leader"]
            assert new_leader in {s["node_id"] for s in survivors}

            for info in survivors:
                status, keys = gcs(info, ("kv_list", b"acked/"))
                assert status == "ok"
                missing = set(acked) - set(keys)
                assert not missing, f"acknowledged writes lost on {info['node_id']}: {sorted(missing)[:5]}"
            assert len(acked) > 20
            result = check_operations(KVModel(), history)
            assert result.ok is True, result.describe()
            assert len([op for op in history if op.ret is not None and op.call > killed - t0]) > 5

            again = mesh.get_actor("pinger", namespace="failover")
            assert mesh.get(again.ping.remote(), timeout=30) == "pong"

            # After the grace period the learner replaces the dead voter.
            ids = {s["node_id"] for s in survivors}
            assert wait_for(lambda: all(set(control(i)["voters"]) == ids for i in survivors), timeout=20), \
                [control(i) for i in survivors]
            assert settled(survivors, 3)
            mesh.kill(again)
        finally:
            mesh.shutdown()
        print(f"\nleader failover: a write through a survivor succeeded {served:.3f} s after SIGKILL; "
              f"{len(history)} ops checked linearizable, {len(acked)} acknowledged unique writes kept")


def test_without_a_quorum_requests_fail_with_how_long_it_has_been_unavailable():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=64 * MiB) as (token, nodes):
        infos = [info for _, info in nodes]
        assert wait_for(lambda: settled(infos, 3), timeout=30)
        mesh.init(address=infos[0]["tcp"].replace("tcp://", ""))
        try:
            mesh.kv.put("before", b"1")
            for _, info in nodes[1:]:
                os.kill(info["pid"], signal.SIGKILL)
            t = time.monotonic()
            with pytest.raises(ControlStoreUnavailableError, match=r"no leader for \d+\.\d s"):
                mesh.kv.put("after", b"1", timeout=2.5)
            assert 2.0 < time.monotonic() - t < 10
            with pytest.raises(ControlStoreUnavailableError):
                mesh.kv.get("before", timeout=1)
        finally:
            mesh.shutdown()
