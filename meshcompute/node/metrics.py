"""The node's Prometheus snapshot, built on the loop from its state objects (read only).

``start_metrics(daemon)`` is the daemon's one hook: with a metrics port it starts
observe/metrics.py's HTTP server (a thread of its own) and returns a
``NodeMetrics`` whose ``refresh()`` the loop calls every liveness period; without
one it returns an object whose ``refresh()`` does nothing.  ``NodeMetrics``
reads the parts of the node it reports on through the narrow ``MetricsSource``
and never changes them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..observe.metrics import MAX_SHAPES, ROLES, MetricsServer, Snapshot, metrics_host
from ..observe.stats import OTHER
from ..sched.bundles import group_of, is_public


@dataclass(frozen=True)
class MetricsSource:
    """What the snapshot reads: the daemon's state objects, and getters for what changes."""

    address: Callable[[], str]
    resources: Any  # sched.resources.ResourcePool
    processes: Any  # processes.Processes
    leases: Any  # leases.LeaseTable
    workers: Any  # workers.WorkerPool
    actors: Any  # actors.ActorDirectory
    table: Any  # store.table.StoreTable
    pulls: Any  # pulls.Pulls
    placement: Any  # placement.Placement
    membership: Callable[[], Any]  # gossip.shell.Membership, or None on an embedded node
    control: Callable[[], Any]  # gcs.shell.Control


class _Off:
    url = None

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def start_metrics(d: Any) -> Any:
    """Serve the node's metrics when it was started with a metrics port (else a no-op)."""
    port = getattr(d, "metrics_port", None)
    if port is None:
        return _Off()
    server = MetricsServer(d.node_id, metrics_host(d.host), port)
    source = MetricsSource(lambda: d.address, d.resources, d.processes, d.leases, d.workers, d.actors,
                           d.store.table, d.pulls, d.placement, lambda: d.membership, lambda: d.control)
    metrics = NodeMetrics(server, source)
    metrics.refresh()
    return metrics


class NodeMetrics:
    def __init__(self, server: MetricsServer, source: MetricsSource) -> None:
        self.server = server
        self.src = source
        self.url = server.url
        self.leader: str | None = None  # the last control store leader seen
        self.leader_changes = 0

    def close(self) -> None:
        self.server.close()

    def refresh(self) -> None:
        """Build a new snapshot and publish it (the HTTP thread reads only the published one)."""
        snap: Snapshot = {}
        self._resources(snap)
        self._tasks(snap)
        self._leases(snap)
        self._store(snap)
        self._gossip(snap)
        self._control(snap)
        self.server.publish(snap)

    def _resources(self, snap: Snapshot) -> None:
        res = self.src.resources
        snap["mesh_node_info"] = [((self.src.address(),), 1)]
        snap["mesh_resource_total"] = [((k,), v) for k, v in sorted(res.public_total().items())]
        snap["mesh_resource_available"] = [((k,), v) for k, v in sorted(res.public_available().items())]

    def _tasks(self, snap: Snapshot) -> None:
        procs = self.src.processes
        t = procs.task_totals()
        snap["mesh_tasks_submitted"] = [((), t["submitted"])]
        snap["mesh_tasks_running"] = [((), t["running"])]
        snap["mesh_tasks_queued"] = [((), t["queued"])]
        fns = sorted(procs.function_totals().items())
        snap["mesh_tasks_finished"] = [((name,), rec[0]) for name, rec in fns]
        snap["mesh_tasks_failed"] = [((name,), rec[1]) for name, rec in fns]
        snap["mesh_task_duration_seconds"] = [((name,), rec[3], rec[2]) for name, rec in fns]
        states = collections.Counter(w.state for w in self.src.workers.workers.values())
        snap["mesh_workers"] = [((s,), states.get(s, 0))
                                for s in ("starting", "idle", "leased", "actor", "stopping")]
        actors = collections.Counter(a.state for a in self.src.actors.actors.values())
        snap["mesh_actors"] = [((s,), actors.get(s, 0)) for s in ("PENDING", "ALIVE", "RESTARTING", "DEAD")]

    def _leases(self, snap: Snapshot) -> None:
        leases, res, placement = self.src.leases, self.src.resources, self.src.placement
        demand: collections.Counter = collections.Counter()
        infeasible: collections.Counter = collections.Counter()
        shapes: collections.Counter = collections.Counter()
        feasible: dict[tuple, bool] = {}
        n_infeasible = 0
        for req in list(leases.pending):
            shape = req.shape
            for k, v in shape:
                if is_public(k):
                    demand[k] += v
            if group_of(shape) is not None:
                continue  # waits for its placement group, which is feasible or failed on its own
            ok = feasible.get(shape)
            if ok is None:
                ok = feasible[shape] = res.feasible(shape) or placement.feasible_somewhere(shape)
            if not ok:
                n_infeasible += 1
                for k, v in shape:
                    if is_public(k):
                        infeasible[k] += v
                label = ",".join(f"{k}={v:g}" for k, v in shape)
                if label not in shapes and len(shapes) >= MAX_SHAPES - 1:
                    label = OTHER
                shapes[label] += 1
        snap["mesh_leases"] = [((), len(leases.leases))]
        snap["mesh_lease_requests_pending"] = [((), len(leases.pending))]
        snap["mesh_lease_requests_infeasible"] = [((), n_infeasible)]
        # The usual resources always appear (at 0), so that an autoscaler's query has a series.
        for k in ("CPU", "GPU"):
            demand.setdefault(k, 0.0)
            infeasible.setdefault(k, 0.0)
        snap["mesh_pending_demand"] = [((k,), v) for k, v in sorted(demand.items())]
        snap["mesh_infeasible_demand"] = [((k,), v) for k, v in sorted(infeasible.items())]
        snap["mesh_infeasible_shapes"] = [((k,), v) for k, v in sorted(shapes.items())]

    def _store(self, snap: Snapshot) -> None:
        t, pulls = self.src.table, self.src.pulls
        snap["mesh_object_store_used_bytes"] = [((), t.allocator.used)]
        snap["mesh_object_store_capacity_bytes"] = [((), t.capacity)]
        snap["mesh_object_store_objects"] = [((), len(t.objects))]
        snap["mesh_object_store_spilled_bytes_on_disk"] = [((), t.spilled_bytes)]
        snap["mesh_object_store_spilled_bytes"] = [((), t.counts["spilled_bytes"])]
        snap["mesh_object_store_restored_bytes"] = [((), t.counts["restored_bytes"])]
        snap["mesh_object_store_pulled_bytes"] = [((), pulls.pulled_bytes if pulls else 0)]
        started = pulls.started if pulls else {}
        snap["mesh_object_store_pulls"] = [((c,), started.get(c, 0)) for c in ("prefetch", "read")]

    def _gossip(self, snap: Snapshot) -> None:
        m = self.src.membership()
        states = collections.Counter({"alive": 1})  # this node
        stats = None
        if m is not None:
            states.update(p.state for p in m.peers().values())
            stats = m.swim.stats
        snap["mesh_gossip_members"] = [((s,), states.get(s, 0)) for s in ("alive", "suspect", "dead", "left")]
        snap["mesh_gossip_suspicions"] = [((), stats.suspicions if stats else 0)]
        snap["mesh_gossip_probe_failures"] = [((), stats.probe_failures if stats else 0)]
        snap["mesh_gossip_refutes"] = [((), stats.refutes if stats else 0)]

    def _control(self, snap: Snapshot) -> None:
        control = self.src.control()
        st = control.status() if control is not None else {}
        leader = st.get("leader")
        if leader and self.leader and leader != self.leader:
            self.leader_changes += 1
        if leader:
            self.leader = leader
        role = st.get("role")
        snap["mesh_control_role"] = [((r,), 1 if r == role else 0) for r in ROLES]
        snap["mesh_control_term"] = [((), st.get("term", 0))]
        snap["mesh_control_commit_index"] = [((), st.get("commit_index", 0))]
        snap["mesh_control_has_leader"] = [((), 1 if leader else 0)]
        snap["mesh_control_leader_changes"] = [((), self.leader_changes)]
