"""Prometheus metrics: two standing nodes serve them, a driver runs work, the counters move.

Scraped with urllib and parsed with prometheus_client's own parser, as Prometheus would.
"""

from __future__ import annotations

import pathlib
import re
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import meshcompute as mesh
from meshcompute.host.launcher import query, start_node, stop_node
from meshcompute.observe.metrics import FAMILIES
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from meshcompute.wire.auth import generate_token

from .conftest import wait_for

MiB = 1 << 20
ROOT = pathlib.Path(__file__).resolve().parent.parent


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels without node): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "node"))
            out[(s.name, labels)] = s.value
    return out


def value(snap: dict, name: str, **labels) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def two_nodes():
    if mesh.is_initialized():
        mesh.shutdown()
    token = generate_token()
    nodes = []
    try:
        nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=2, token=token, standalone=True,
                                object_store_memory=64 * MiB, metrics_port=0))
        seed = nodes[0][1]["tcp"].replace("tcp://", "")
        nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=2, token=token, standalone=True, join=[seed],
                                object_store_memory=64 * MiB, metrics_port=0))
        assert wait_for(lambda: all(len([n for n in query(info)["nodes"] if n["state"] == "alive"]) == 2
                                    for _, info in nodes), timeout=20)
        mesh.init(address=seed)
        yield [info for _, info in nodes]
    finally:
        if mesh.is_initialized():
            mesh.shutdown()
        for proc, info in nodes:
            stop_node(info)
            proc.wait(10)


@mesh.remote
def square(x):
    return x * x


@mesh.remote
def fails():
    raise ValueError("on purpose")


@mesh.remote
def nap(s):
    time.sleep(s)
    return s


@mesh.remote
def total(arr):
    return float(arr.sum())


@pytest.mark.timeout(120)
def test_task_counters_histogram_and_failures_move(two_nodes):
    a, b = two_nodes
    assert a["metrics"].startswith("http://127.0.0.1:") and a["metrics"].endswith("/metrics")
    # The snapshot a scrape reads is at most half a second old.
    before = wait_for(lambda: (lambda s: s if value(s, "mesh_gossip_members", state="alive") == 2 else None)(
        scrape(a["metrics"])), timeout=5, interval=0.2)
    assert before and value(before, "mesh_resource_total", resource="CPU") == 2
    assert mesh.get([square.remote(i) for i in range(100)], timeout=60) == [i * i for i in range(100)]
    with pytest.raises(ValueError):
        mesh.get(fails.remote(), timeout=30)

    def moved():
        snaps = [scrape(n["metrics"]) for n in two_nodes]
        done = sum(value(s, "mesh_tasks_finished_total", function="square") for s in snaps)
        return snaps if done == 100 and value(snaps[0], "mesh_tasks_submitted_total") >= 101 else None

    snaps = wait_for(moved, timeout=15, interval=0.3)
    assert snaps, [scrape(n["metrics"]) for n in two_nodes]
    assert sum(value(s, "mesh_tasks_failed_total", function="fails") for s in snaps) == 1
    assert sum(value(s, "mesh_tasks_failed_total", function="square") for s in snaps) == 0
    # The histogram: every finished square is counted, and its buckets are cumulative.
    assert sum(value(s, "mesh_task_duration_seconds_count", function="square") for s in snaps) == 100
    assert sum(value(s, "mesh_task_duration_seconds_bucket", function="square", le="+Inf") for s in snaps) == 100
    for s in snaps:
        counts = [value(s, "mesh_task_duration_seconds_bucket", function="square", le=le)
                  for le in ("0.001", "0.01", "1.0", "+Inf")]
        assert counts == sorted(counts)
    # The control store: one leader among the two, both know it.
    assert sum(value(s, "mesh_control_role", role="leader") for s in snaps) == 1
    assert all(value(s, "mesh_control_has_leader") == 1 and value(s, "mesh_control_term") >= 1 for s in snaps)


@pytest.mark.timeout(120)
def test_leases_workers_and_running_tasks_show_while_work_runs(two_nodes):
    refs = [nap.options(scheduling_strategy=NodeAffinitySchedulingStrategy(two_nodes[0]["node_id"])).remote(3)
            for _ in range(2)]
    url = two_nodes[0]["metrics"]
    busy = wait_for(lambda: (lambda s: s if value(s, "mesh_tasks_running") == 2 else None)(scrape(url)),
                    timeout=15, interval=0.2)
    assert busy, scrape(url)
    assert value(busy, "mesh_leases") >= 1
    assert value(busy, "mesh_workers", state="leased") == 2
    assert value(busy, "mesh_resource_available", resource="CPU") == 0
    assert mesh.get(refs, timeout=30) == [3, 3]
    idle = wait_for(lambda: (lambda s: s if value(s, "mesh_tasks_running") == 0 else None)(scrape(url)), timeout=15)
    assert idle and value(idle, "mesh_tasks_finished_total", function="nap") == 2


@pytest.mark.timeout(120)
def test_pending_demand_and_an_infeasible_shape_show_for_an_autoscaler(two_nodes):
    ref = square.options(num_cpus=64).remote(1)
    urls = [n["metrics"] for n in two_nodes]

    def waiting():
        snaps = [scrape(u) for u in urls]
        return snaps if sum(value(s, "mesh_lease_requests_infeasible") for s in snaps) >= 1 else None

    snaps = wait_for(waiting, timeout=15, interval=0.2)
    assert snaps, [scrape(u) for u in urls]
    assert sum(value(s, "mesh_infeasible_shapes", shape="CPU=64") for s in snaps) >= 1
    assert sum(value(s, "mesh_pending_demand", resource="CPU") for s in snaps) >= 64
    assert sum(value(s, "mesh_infeasible_demand", resource="CPU") for s in snaps) >= 64
    mesh.cancel(ref)
    gone = wait_for(lambda: sum(value(scrape(u), "mesh_lease_requests_pending") for u in urls) == 0, timeout=15)
    assert gone


@pytest.mark.timeout(120)
def test_store_counters_spills_restores_and_pulls_move(two_nodes):
    a, b = two_nodes
    before_a, before_b = scrape(a["metrics"]), scrape(b["metrics"])
    # 5 x 16 MiB held by the driver on node a (64 MiB store): some of them spill to disk.
    arrays = [mesh.put(np.full(2 * MiB, i, dtype=np.float64)) for i in range(5)]
    assert [float(mesh.get(r)[0]) for r in arrays] == [0.0, 1.0, 2.0, 3.0, 4.0]  # restored as read
    # One of them is read by a task on node b: pulled there.
    on_b = NodeAffinitySchedulingStrategy(b["node_id"])
    assert mesh.get(total.options(scheduling_strategy=on_b).remote(arrays[4]), timeout=60) == 4.0 * 2 * MiB

    def moved():
        sa, sb = scrape(a["metrics"]), scrape(b["metrics"])
        ok = (value(sa, "mesh_object_store_spilled_bytes_total") > value(before_a, "mesh_object_store_spilled_bytes_total")
              and value(sa, "mesh_object_store_restored_bytes_total") > value(before_a, "mesh_object_store_restored_bytes_total")
              and value(sb, "mesh_object_store_pulled_bytes_total")
              >= value(before_b, "mesh_object_store_pulled_bytes_total") + 16 * MiB)
        return (sa, sb) if ok else None

    snaps = wait_for(moved, timeout=15, interval=0.3)
    assert snaps, (scrape(a["metrics"]), scrape(b["metrics"]))
    sa, sb = snaps
    assert value(sa, "mesh_object_store_capacity_bytes") == 64 * MiB
    assert 0 < value(sa, "mesh_object_store_used_bytes") <= 64 * MiB
    assert value(sa, "mesh_object_store_spilled_bytes_on_disk") > 0
    assert value(sb, "mesh_object_store_pulls_total", cause="prefetch") + value(
        sb, "mesh_object_store_pulls_total", cause="read") >= 1
    del arrays


def test_metrics_are_off_unless_asked_and_a_taken_port_is_named(two_nodes):
    proc, info = start_node(num_cpus=1, object_store_memory=32 * MiB)  # an embedded-style node, no port
    try:
        assert info["metrics"] is None
    finally:
        stop_node(info)
        proc.wait(10)
    taken = int(two_nodes[0]["metrics"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(mesh.exceptions.MeshError, match=f"cannot serve metrics on 127.0.0.1:{taken}: the port is taken"):
        start_node(host="127.0.0.1", port=0, num_cpus=1, object_store_memory=32 * MiB, metrics_port=taken,
                   token=generate_token(), standalone=True)


def test_every_metric_family_is_documented():
    doc = (ROOT / "docs" / "observability.md").read_text()
    for name, (kind, labels, _) in FAMILIES.items():
        shown = f"{name}_total" if kind == "counter" else name
        row = rf"\| `{re.escape(shown)}` \| {kind} \| {', '.join(f'`{lab}`' for lab in labels) or '—'} \|"
        assert re.search(row, doc), f"{shown} ({kind}, {labels}) is not in docs/observability.md's table"


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    import json

    dash = json.loads((ROOT / "deploy" / "grafana" / "meshcompute.json").read_text())
    known = set()
    for name, (kind, _, _) in FAMILIES.items():
        known |= {f"{name}_total"} if kind == "counter" else {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 16
    used = {m for e in exprs for m in re.findall(r"\bmesh_[a-z_]+", e)}
    assert used <= known, used - known
    # The families an operator looks at first are all on it.
    assert {"mesh_tasks_finished_total", "mesh_pending_demand", "mesh_object_store_used_bytes",
            "mesh_gossip_members", "mesh_control_term", "mesh_task_duration_seconds_bucket"} <= used


def test_function_names_are_bounded_and_counts_of_exited_processes_stay():
    from meshcompute.node.processes import MAX_NODE_FUNCTIONS, Processes
    from meshcompute.observe.stats import LATENCY_BUCKETS, MAX_FUNCTIONS, OTHER, FunctionStats

    fs = FunctionStats()
    for i in range(100):
        fs.record(f"f{i}", 0.002, failed=i % 10 == 0)
    snap = fs.snapshot()
    assert len(snap) == MAX_FUNCTIONS and snap[OTHER][0] == 100 - (MAX_FUNCTIONS - 1)
    assert sum(r[0] for r in snap.values()) == 100 and fs.failed == 10
    assert all(r[3][1] == r[0] for r in snap.values())  # 2 ms: the second bucket (le 5 ms)

    procs = Processes()
    for p in range(3):
        addr = f"n/w{p}@ipc://x"
        procs.register(addr, 100 + p, driver=False)
        by_fn = {f"g{p}_{i}": [1, 0, 0.5, [0] * len(LATENCY_BUCKETS) + [1]] for i in range(40)}
        by_fn["bad"] = [1, 2]  # a malformed entry is skipped, the rest counts
        procs.on_task_stats(addr, ("TASK_STATS", {"finished": 40, "submitted": 1, "failed": 0, "running": 1,
                                                  "queued": "x", "by_fn": by_fn}), [])
    totals = procs.function_totals()
    assert len(totals) == MAX_NODE_FUNCTIONS and sum(r[0] for r in totals.values()) == 120
    assert procs.task_totals() == {"finished": 120, "submitted": 3, "failed": 0, "running": 3, "queued": 0}
    procs.gone("n/w0@ipc://x")
    assert procs.task_totals()["finished"] == 120 and procs.task_totals()["running"] == 2
    assert sum(r[0] for r in procs.function_totals().values()) == 120
