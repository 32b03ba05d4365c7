"""A node's Prometheus metrics: the families, and the HTTP endpoint that serves them.

The node loop builds a *snapshot* (plain data: family name -> samples) every
half second and hands it over by replacing one reference; prometheus_client's
HTTP server thread turns the latest snapshot into metric families when it is
scraped.  So a scrape never touches the loop's state objects, and the loop
never waits for a scrape.  node/metrics.py builds the snapshot.

Every family carries a ``node`` label (the node's id); FAMILIES below is the
whole list, each with its type, its other labels and what it means
(docs/observability.md shows the same table).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ..exceptions import MeshError
from .stats import LATENCY_BUCKETS

# name: (type, labels besides "node", help). Counters are exposed with the suffix _total.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "mesh_node_info": ("gauge", ("address",),
                       "1 for the node that serves these metrics, labelled with its address"),
    "mesh_resource_total": ("gauge", ("resource",), "Resources the node offers (CPU, GPU, memory, custom)"),
    "mesh_resource_available": ("gauge", ("resource",), "Resources free now (not leased, not reserved)"),
    "mesh_tasks_submitted": ("counter", (),
                             "Tasks and actor calls submitted by the drivers and workers of this node"),
    "mesh_tasks_running": ("gauge", (), "Tasks and actor calls running in this node's workers"),
    "mesh_tasks_queued": ("gauge", (),
                          "Tasks waiting in this node's owners for a worker, or in workers to start"),
    "mesh_tasks_finished": ("counter", ("function",),
                            "Tasks and actor calls that ended here (with a result or an error), by function"),
    "mesh_tasks_failed": ("counter", ("function",), "Of those, the attempts that raised, by function"),
    "mesh_task_duration_seconds": ("histogram", ("function",),
                                   "How long tasks and actor calls ran, by function"),
    "mesh_leases": ("gauge", (), "Workers leased from this node to owners now"),
    "mesh_lease_requests_pending": ("gauge", (), "Lease requests waiting at this node for resources"),
    "mesh_lease_requests_infeasible": ("gauge", (), "Of those, the requests no live node could ever run"),
    "mesh_pending_demand": ("gauge", ("resource",), "Resources asked for by the lease requests waiting here"),
    "mesh_infeasible_demand": ("gauge", ("resource",), "Resources asked for by the infeasible ones"),
    "mesh_infeasible_shapes": ("gauge", ("shape",),
                               "Infeasible lease requests by resource shape (at most 16 shapes)"),
    "mesh_workers": ("gauge", ("state",),
                     "Worker processes by state (starting, idle, leased, actor, stopping)"),
    "mesh_actors": ("gauge", ("state",),
                    "Actors placed on this node by state (PENDING, ALIVE, RESTARTING, DEAD)"),
    "mesh_object_store_used_bytes": ("gauge", (), "Bytes of the shared-memory store in use"),
    "mesh_object_store_capacity_bytes": ("gauge", (), "Size of the shared-memory store"),
    "mesh_object_store_objects": ("gauge", (), "Objects in the store (in memory or spilled)"),
    "mesh_object_store_spilled_bytes_on_disk": ("gauge", (), "Bytes of spill files on disk now"),
    "mesh_object_store_spilled_bytes": ("counter", (), "Bytes of objects written to spill files"),
    "mesh_object_store_restored_bytes": ("counter", (), "Bytes of spilled objects read back into memory"),
    "mesh_object_store_pulled_bytes": ("counter", (), "Bytes of objects copied here from other nodes"),
    "mesh_object_store_pulls": ("counter", ("cause",),
                                "Pulls started: prefetch (a task's argument) or read (a get on this node)"),
    "mesh_gossip_members": ("gauge", ("state",),
                            "Members of the mesh by gossip state, as this node sees them"),
    "mesh_gossip_suspicions": ("counter", (),
                               "Times this node began to suspect a member (its own probe or a rumour)"),
    "mesh_gossip_probe_failures": ("counter", (),
                                   "Probes this node sent that got no answer, direct or indirect"),
    "mesh_gossip_refutes": ("counter", (), "Suspicions about this node that it refuted"),
    "mesh_control_role": ("gauge", ("role",), "1 for this node's role in the control store's Raft group"),
    "mesh_control_term": ("gauge", (), "The control store's Raft term, as this node knows it"),
    "mesh_control_commit_index": ("gauge", (), "The control store's commit index on this node"),
    "mesh_control_has_leader": ("gauge", (), "1 while this node knows a control store leader"),
    "mesh_control_leader_changes": ("counter", (), "Leader changes (failovers) this node saw"),
}
ROLES = ("leader", "follower", "candidate", "precandidate", "learner", "joining")
MAX_SHAPES = 16

Snapshot = dict[str, list]
"""family name -> [(label values besides node, value)]; histograms: (labels, [count per bucket], sum)."""


class SnapshotCollector:
    """Turns the last published snapshot into metric families (on the HTTP server's thread)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.snapshot: Snapshot = {}  # replaced whole by the node loop, never changed in place

    def describe(self) -> list:
        return []  # nothing to check at registration: the families come from the snapshot

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.snapshot
        for name, (kind, labels, text) in FAMILIES.items():
            names = ["node", *labels]
            if kind == "histogram":
                fam = HistogramMetricFamily(name, text, labels=names)
                for values, counts, total in snap.get(name, ()):
                    fam.add_metric([self.node_id, *values], _cumulative(counts), total)
            else:
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = family(name, text, labels=names)
                for values, value in snap.get(name, ()):
                    fam.add_metric([self.node_id, *values], value)
            yield fam


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


class MetricsServer:
    """prometheus_client's HTTP server (its own thread) over a SnapshotCollector, plus the
    daemon process's own CPU, memory and descriptors (``process_*``)."""

    def __init__(self, node_id: str, host: str, port: int) -> None:
        # Imported here: prometheus_client brings http.server and ssl (4 MiB), and a node
        # without a metrics port (the default) never serves them.
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector(node_id)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        try:
            self.httpd, self.thread = start_http_server(port, host, self.registry)
        except OSError as e:  # not in the socket's words, which the launcher reads as the mesh port's
            why = "the port is taken" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise MeshError(f"cannot serve metrics on {host}:{port}: {why}") from None
        self.port = self.httpd.server_port
        self.url = f"http://{host}:{self.port}/metrics"

    def publish(self, snapshot: Snapshot) -> None:
        self.collector.snapshot = snapshot

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def metrics_host(node_host: str | None) -> str:
    """Where a node serves its metrics: ``$MESH_METRICS_HOST`` (e.g. 0.0.0.0), else the address it
    serves the mesh on, else loopback (an embedded node)."""
    return os.environ.get("MESH_METRICS_HOST") or node_host or "127.0.0.1"
