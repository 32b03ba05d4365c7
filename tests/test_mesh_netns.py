"""The mesh across hosts with their own IPs: network namespaces on a bridge.

`mesh start` in one namespace, `mesh join` from two others, a driver in the first.
Needs root and `ip netns`; skipped otherwise.  Marked `netns`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time

import pytest

from meshcompute.testing.netns import TestBed, netns_unavailable_reason
from meshcompute.wire.auth import generate_token

from .conftest import wait_for

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())),
    pytest.mark.timeout(240),
]

PORT = 7777
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent("""
    import collections, hashlib, json, sys, time
    import numpy as np
    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mesh.init(address=sys.argv[1])

    @mesh.remote
    def where(i):
        time.sleep(0.01)
        return mesh.get_runtime_context().get_node_id()

    @mesh.remote
    def digest(arr):
        return hashlib.sha256(arr.tobytes()).hexdigest(), mesh.get_runtime_context().get_node_id()

    counts = collections.Counter(mesh.get([where.remote(i) for i in range(300)], timeout=120))
    me = mesh.get_runtime_context().get_node_id()
    target = sys.argv[2]
    arr = np.random.default_rng(3).integers(0, 2**62, size=200 * 2**20 // 8, dtype=np.int64)
    ref = mesh.put(arr)
    t = time.time()
    got, ran_on = mesh.get(digest.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target)).remote(ref),
                           timeout=120)
    print(json.dumps({"counts": counts, "me": me, "ran_on": ran_on, "pull_s": time.time() - t,
                      "ok": got == hashlib.sha256(arr.tobytes()).hexdigest(),
                      "cpus": mesh.cluster_resources().get("CPU")}), flush=True)
    mesh.shutdown()
""")


def _mesh(bed, i, *args, timeout=60):
    return bed.exec(i, [sys.executable, "-m", "meshcompute.cli", *args], timeout=timeout, cwd=REPO)


def _node_infos() -> list[dict]:
    from meshcompute.host.launcher import local_nodes

    return local_nodes()


def _status(bed, i: int, addr: str) -> dict:
    out = _mesh(bed, i, "status", "--json", "--address", addr)
    assert out.returncode == 0, out.stdout + out.stderr
    return {n["node_id"]: n for n in json.loads(out.stdout)["nodes"]}


def test_three_hosts_form_a_mesh_run_tasks_move_data_and_survive_a_kill():
    token = generate_token()
    with TestBed(3, prefix="mtmesh") as bed:
        try:
            addrs = {i: f"{bed.address(i)}:{PORT}" for i in bed.hosts}
            out = _mesh(bed, 1, "start", "--host", bed.address(1), "--port", str(PORT), "--num-cpus", "2",
                        "--token", token, "--object-store-memory", str(768 << 20))
            assert out.returncode == 0, out.stdout + out.stderr
            for i in (2, 3):
                out = _mesh(bed, i, "join", addrs[1], "--host", bed.address(i), "--port", str(PORT),
                            "--num-cpus", "2", "--token", token, "--object-store-memory", str(768 << 20))
                assert out.returncode == 0, out.stdout + out.stderr
            infos = {n["host"]: n for n in _node_infos()}
            ids = {i: infos[bed.address(i)]["node_id"] for i in bed.hosts}
            assert wait_for(lambda: len([n for n in _status(bed, 1, addrs[1]).values() if n["state"] == "alive"]) == 3,
                            timeout=15)
            view = _status(bed, 1, addrs[1])
            assert all(view[ids[i]]["resources_total"]["CPU"] == 2 for i in bed.hosts)

            # A driver on host 1: 300 tasks over all three hosts; 200 MiB from host 1 read on host 3.
            drv = bed.exec(1, [sys.executable, "-c", DRIVER, addrs[1], ids[3]], timeout=180, cwd=REPO)
            assert drv.returncode == 0, drv.stdout[-2000:] + drv.stderr[-3000:]
            result = json.loads(drv.stdout.strip().splitlines()[-1])
            assert set(result["counts"]) == set(ids.values()), result["counts"]
            assert result["ok"] and result["ran_on"] == ids[3] and result["cpus"] == 6
            print(f"200 MiB pulled from host 1 to host 3 in {result['pull_s']:.2f} s")

            # SIGKILL host 3's daemon: the others see it dead within 2 s, its CPUs leave the totals.
            victim = infos[bed.address(3)]
            killed = time.time()
            os.kill(victim["pid"], signal.SIGKILL)
            assert wait_for(lambda: all(_status(bed, i, addrs[i])[ids[3]]["state"] == "dead" for i in (1, 2)),
                            timeout=10, interval=0.1)
            # When each survivor declared it dead, from its own log (the CLI polls are too coarse).
            for i in (1, 2):
                took = _declared_dead_at(infos[bed.address(i)], ids[3]) - killed
                print(f"host {i} declared host 3 dead {took:.2f} s after the SIGKILL")
                assert 0 < took < 2.0, took
            assert _status(bed, 1, addrs[1])[ids[3]]["alive"] is False

            # Cut host 2's link: host 1 declares it dead; heal: it comes back alive.
            bed.cut(2)
            assert wait_for(lambda: _status(bed, 1, addrs[1])[ids[2]]["state"] == "dead", timeout=10)
            bed.heal(2)
            assert wait_for(lambda: _status(bed, 1, addrs[1])[ids[2]]["state"] == "alive", timeout=30)
        finally:
            _stop_bed_nodes()


def _stop_bed_nodes() -> None:
    """Stop every node served on the test bed's subnet (also cleans up after one that was killed)."""
    from meshcompute.host.launcher import stop_node
    from meshcompute.host.sessions import SESSIONS_ROOT

    for name in os.listdir(SESSIONS_ROOT):
        path = os.path.join(SESSIONS_ROOT, name, "daemon.json")
        if os.path.exists(path):
            with open(path) as f:
                info = json.load(f)
            if (info.get("host") or "").startswith("10.77."):
                stop_node(info)


def _declared_dead_at(info: dict, node_id: str) -> float:
    import datetime

    with open(os.path.join(info["session_dir"], "logs", "daemon.log")) as f:
        for line in f:
            if f"membership: dead {node_id}" in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp()
    return float("inf")


def _gcs(info: dict, op: tuple, timeout: float):
    from meshcompute.host.launcher import request
    from meshcompute.wire.messages import Msg

    return request(info, Msg.GCS_REQUEST, op, timeout, timeout=timeout + 5)


def _control(info: dict) -> dict:
    from meshcompute.host.launcher import query

    return query(info, "node")["control"]


def test_a_cut_off_minority_cannot_commit_the_majority_can_and_after_healing_all_converge():
    """The control store's leader is cut off from the other two hosts: the
    majority elects a new leader and commits; the old leader cannot commit; once
    the link is back, it catches up and votes again."""
    token = generate_token()
    with TestBed(3, prefix="mtraft") as bed:
        try:
            addrs = {i: f"{bed.address(i)}:{PORT}" for i in bed.hosts}
            common = ["--port", str(PORT), "--num-cpus", "1", "--token", token, "--object-store-memory", str(64 << 20)]
            out = _mesh(bed, 1, "start", "--host", bed.address(1), *common)
            assert out.returncode == 0, out.stdout + out.stderr
            for i in (2, 3):
                out = _mesh(bed, i, "join", addrs[1], "--host", bed.address(i), *common)
                assert out.returncode == 0, out.stdout + out.stderr
            infos = {i: next(n for n in _node_infos() if n["host"] == bed.address(i)) for i in bed.hosts}
            ids = {infos[i]["node_id"]: i for i in bed.hosts}

            def settled() -> bool:
                views = [_control(infos[i]) for i in bed.hosts]
                return (len({v["leader"] for v in views}) == 1 and views[0]["leader"] is not None
                        and all(len(v["voters"]) == 3 for v in views))

            assert wait_for(settled, timeout=30), [_control(infos[i]) for i in bed.hosts]
            assert _gcs(infos[1], ("kv_put", b"before", b"1", True), 5) == ("ok", False)
            old = ids[_control(infos[1])["leader"]]
            majority = [i for i in bed.hosts if i != old]

            bed.cut(old)
            t = time.monotonic()
            # The majority elects a leader among itself and commits.
            status = None
            while time.monotonic() - t < 15:
                status, _ = _gcs(infos[majority[0]], ("kv_put", b"during", b"majority", True), 1.0)
                if status == "ok":
                    break
            assert status == "ok", "the majority did not commit while the old leader was cut off"
            print(f"majority committed {time.monotonic() - t:.2f} s after the cut")
            assert ids[_control(infos[majority[1]])["leader"]] in majority
            # The old leader, alone, cannot commit (nor serve a linearizable read).
            status, reason = _gcs(infos[old], ("kv_put", b"minority", b"lost", True), 3.0)
            assert status == "unavailable", (status, reason)
            assert "no leader" in reason or "did not answer" in reason
            assert _gcs(infos[old], ("kv_get", b"during"), 2.0)[0] == "unavailable"

            bed.heal(old)
            # All converge: the old leader has the majority's write, and it votes again.
            assert wait_for(lambda: _gcs(infos[old], ("kv_get", b"during"), 2.0) == ("ok", b"majority"), timeout=60)
            assert wait_for(settled, timeout=60), [_control(infos[i]) for i in bed.hosts]
            assert _gcs(infos[majority[0]], ("kv_get", b"minority"), 5.0) == ("ok", None)
            assert wait_for(lambda: len({_control(infos[i])["commit_index"] for i in bed.hosts}) == 1, timeout=10)
        finally:
            _stop_bed_nodes()
