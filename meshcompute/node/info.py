"""NODE_INFO's answer: what a daemon tells about itself (and, for "mesh", its peers as gossiped)."""

from __future__ import annotations

import os
from typing import Any


def node_info(d: Any, what: str) -> dict:
    """The answer to NODE_INFO ``what`` ("node" or "mesh") from daemon ``d`` (node/daemon.py)."""
    info = {
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
        "served_bytes": d.pulls.served_bytes,  # chunks sent to peers' pulls, ever
        "dropped": dict(d.drops.counts),  # refused messages and handler errors, by kind
        "bulk": d.bulk.endpoint if d.bulk is not None else None,  # where peers fetch our objects' chunks
        "jobs": sorted(d.jobs.running),  # submitted jobs running here
    }
    if what != "mesh":
        return info
    nodes = [info]
    for p in d.peer_views().values():
        nodes.append({
            "node_id": p.node_id, "address": p.address, "state": p.state,
            "alive": p.state in ("alive", "suspect"),
            "resources_total": p.total, "resources_available": p.available,
            "store": {"used": p.store[0], "capacity": p.store[1]} if p.store else {},
            "queued": p.queue,
            # As gossiped (up to a fraction of a second old).
            "control": ({"role": p.gcs[0], "term": p.gcs[1], "commit_index": p.gcs[2],
                         "leader": p.gcs[3] or None} if p.gcs else {}),
        })
    return {"nodes": nodes, "leader": d.control.status()["leader"], "self": d.node_id}


def usage(d: Any) -> dict:
    """What the monitor feed samples of daemon ``d``: resources, store, task counters."""
    t = d.store.table
    return {"total": d.resources.total, "available": d.resources.available,
            "store": {"used": t.allocator.used, "capacity": t.capacity, "spilled_bytes": t.spilled_bytes,
                      "spilled_objects": t.spilled_objects, "objects": len(t.objects)},
            "tasks": d.processes.task_totals(), "workers": len(d.workers.workers),
            "pending_leases": len(d.leases.pending)}
