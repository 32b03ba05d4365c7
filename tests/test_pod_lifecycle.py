"""The Kubernetes pod lifecycle, simulated on the network-namespace test bed with the image's
command (`mesh-node`) and the manifests' environment and probe (meshcompute/testing/pods.py):
pods started in any order form one mesh and a Job's driver runs on it; a rolling restart one
pod at a time while a workload runs loses nothing; scaling 3 -> 5 -> 2 keeps the mesh and its
control store.  The two long ones are marked `slow`."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from meshcompute.testing.netns import TestBed, netns_unavailable_reason
from meshcompute.wire.auth import generate_token

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())),
]

WORKLOAD = textwrap.dedent("""
    import json, os, sys, time
    import meshcompute as mesh

    mesh.init()
    stop, out = sys.argv[1], sys.argv[2]

    @mesh.remote(max_retries=-1)
    def work(i):
        time.sleep(0.02)
        return i * i

    mesh.kv.put("operate/key", b"before")
    i = bad = 0
    rounds = []
    while not os.path.exists(stop):
        t0 = time.time()
        values = mesh.get([work.remote(j) for j in range(i, i + 20)], timeout=180)
        bad += sum(v != j * j for j, v in zip(range(i, i + 20), values))
        i += 20
        rounds.append(round(time.time() - t0, 2))
        with open(out + ".progress", "w") as f:
            f.write(str(i))
    nodes = sorted(n["NodeID"] for n in mesh.nodes() if n["Alive"])
    with open(out, "w") as f:
        json.dump({"tasks": i, "bad": bad, "kv": mesh.kv.get("operate/key").decode(), "nodes": nodes,
                   "slowest_round_s": max(rounds or [0])}, f)
""")


@pytest.fixture
def pods_on(request):
    """Pods on a bed of ``n`` hosts (the last ones free for Job pods); everything removed after."""
    from meshcompute.testing.pods import Pods

    made = []

    def make(n: int, prefix: str):
        bed = TestBed(n, prefix=prefix, subnet="10.79.0.0/24", replace=True).up()
        pods = Pods(bed, generate_token(), env={"MESH_NUM_CPUS": "1", "MESH_OBJECT_STORE_MEMORY": str(64 << 20),
                                                 "MESH_FOUNDER_WAIT_S": "4"})
        made.append((bed, pods))
        return bed, pods

    yield make
    for bed, pods in made:
        try:
            pods.close()
        finally:
            bed.down()


def _members(pods, k: int) -> dict[str, str]:
    r = pods.mesh(k, "status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return {n["node_id"]: n["state"] for n in json.loads(r.stdout)["nodes"]}


def _alive(pods, k: int) -> int:
    return sum(s == "alive" for s in _members(pods, k).values())


@pytest.mark.timeout(240)
def test_pods_started_in_any_order_form_one_mesh_and_a_job_runs_on_it(pods_on):
    bed, pods = pods_on(4, "mopa")
    # The founder last: the others wait for it, then join; nobody starts a second mesh.
    for k in (2, 1):
        pods.start(k)
    time.sleep(3)
    pods.start(0)
    pods.wait_ready([0, 1, 2], timeout=120)
    for k in (0, 1, 2):
        assert _alive(pods, k) == 3, pods.log_text()
    # A Job's driver on host 4: joins with no CPU, runs, leaves, exits with the driver's status.
    job = pods.job(4, [sys.executable, "-c", "import meshcompute as mesh; mesh.init(); "
                       "print(sum(mesh.get([mesh.remote(lambda x: x + 1).remote(i) for i in range(100)])))"])
    assert job.wait(120) == 0, pods.log_text()
    with open(os.path.join(pods.logs, "job-4.log")) as f:
        assert "5050" in f.read()
    assert wait_until(lambda: _alive(pods, 0) == 3)  # the Job's node left


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def _run_workload(pods, host: int):
    stop, out = os.path.join(pods.scratch, "stop"), os.path.join(pods.scratch, "out.json")
    job = pods.job(host, [sys.executable, "-c", WORKLOAD, stop, out])

    def progress() -> int:
        try:
            with open(out + ".progress") as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    assert wait_until(lambda: progress() >= 100, timeout=90), pods.log_text()
    return job, stop, out, progress


def _finish_workload(pods, job, stop, out) -> dict:
    with open(stop, "w"):
        pass
    assert job.wait(240) == 0, pods.log_text()
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_rolling_restart_one_pod_at_a_time_loses_nothing(pods_on):
    bed, pods = pods_on(4, "mopr")
    pods.scale(3)
    job, stop, out, progress = _run_workload(pods, 4)
    seen = []
    took = pods.rolling_restart(on_step=lambda k: seen.append(progress()))
    assert seen == sorted(seen) and progress() > seen[0], seen  # the work went on through it
    result = _finish_workload(pods, job, stop, out)
    assert result["bad"] == 0 and result["tasks"] >= 100, result
    assert result["kv"] == "before"  # the control store kept what it had acknowledged
    assert len(result["nodes"]) == 4  # three new pods and the Job's node
    for k in range(3):
        assert _alive(pods, k) == 3
    print(f"rolling restart: each pod ready again after {took} s; {result}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scaling_3_to_5_to_2_keeps_the_mesh_and_its_control_store(pods_on):
    bed, pods = pods_on(6, "mops")
    pods.scale(3)
    job, stop, out, progress = _run_workload(pods, 6)
    pods.scale(5)
    assert all(_alive(pods, k) == 6 for k in range(5))  # five pods and the Job's node
    before = progress()
    pods.scale(2)
    assert wait_until(lambda: progress() > before + 100, timeout=60)
    result = _finish_workload(pods, job, stop, out)
    assert result["bad"] == 0 and result["kv"] == "before", result
    for k in (0, 1):
        assert wait_until(lambda k=k: _alive(pods, k) == 2)
    # The control store still answers writes (two voters left, both up).
    r = pods.mesh(0, "status", "--local", "--check")
    assert r.returncode == 0, r.stdout
    print(f"scale 3->5->2: {result}")
