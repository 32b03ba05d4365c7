"""What NODE_INFO answers: this node's record, and the other nodes' as gossip knows them."""

from __future__ import annotations

import os
from typing import Any


def node_record(d: Any) -> dict:
    """This node (a Daemon): state, resources, store, workers, tasks, its part in the control store."""
    return {
        "node_id": d.node_id,
        "address": d.address,
        "state": "alive",
        "alive": True,
        "resources_total": dict(d.resources.total),
        "resources_available": {k: max(0.0, v) for k, v in d.resources.available.items()},
        "store": d.store.statistics(),
        "workers": len(d.workers.workers),
        "pid": os.getpid(),
        "session_dir": d.session_dir,
        "queued": len(d.leases.pending),
        "tasks": d.processes.task_totals(),
        "control": d.control.status(),  # leader, term, commit index, role
        "pulls": dict(d.pulls.started),
        "dropped": dict(d.drops.counts),  # refused messages and handler errors, by kind
        "jobs": sorted(d.jobs.running),  # submitted jobs running here
    }


def peer_records(peer_views: dict) -> list[dict]:
    """The other nodes, as gossiped (up to a fraction of a second old)."""
    return [{
        "node_id": p.node_id, "address": p.address, "state": p.state,
        "alive": p.state in ("alive", "suspect"),
        "resources_total": p.total, "resources_available": p.available,
        "store": {"used": p.store[0], "capacity": p.store[1]} if p.store else {},
        "queued": p.queue,
        "control": ({"role": p.gcs[0], "term": p.gcs[1], "commit_index": p.gcs[2],
                     "leader": p.gcs[3] or None} if p.gcs else {}),
    } for p in peer_views.values()]
