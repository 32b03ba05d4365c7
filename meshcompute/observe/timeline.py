"""Chrome / Perfetto traces of recent tasks (``mesh timeline``, ``meshcompute.timeline()``).

Every worker keeps its last spans in a ring buffer (executor.py) and hands them
over when its daemon asks (``TIMELINE``); the daemon asks its peers for theirs.
Here those lanes become the Trace Event Format: one complete event (``"ph": "X"``)
per task, one process (``pid``) per node, one thread (``tid``) per worker (its
pid), plus metadata events (``"ph": "M"``) naming the nodes and workers.  The
JSON array loads in https://ui.perfetto.dev and chrome://tracing.
"""

from __future__ import annotations

import json
from typing import Any


def build_trace(lanes: list[dict]) -> list[dict]:
    """Trace events from the lanes a TIMELINE request returns."""
    lanes = [lane for lane in lanes if lane.get("kind") != "driver"]  # drivers run no tasks: no lane
    nodes = sorted({lane.get("node_id", "?") for lane in lanes})
    node_pid = {node: i + 1 for i, node in enumerate(nodes)}
    events: list[dict] = []
    for node, pid in node_pid.items():
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"name": f"node {node}"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
    for lane in sorted(lanes, key=lambda lane: (lane.get("node_id", ""), lane.get("pid", 0))):
        pid = node_pid[lane.get("node_id", "?")]
        tid = int(lane.get("pid", 0))
        label = f"actor {lane['actor']}" if lane.get("actor") else "worker"
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                       "args": {"name": f"{label} pid={tid}"}})
        cat = "actor_call" if lane.get("actor") else "task"
        for name, start, dur, task_id, *_ in lane.get("events", ()):
            events.append({
                "name": str(name), "cat": cat, "ph": "X",
                "ts": round(start * 1e6, 3), "dur": round(max(dur, 0.0) * 1e6, 3),
                "pid": pid, "tid": tid,
                "args": {"task_id": task_id, "node_id": lane.get("node_id"),
                         "worker_id": lane.get("worker_id"), "worker_pid": tid},
            })
    return events


def write_trace(events: list[dict], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(events, f)


def task_events(events: list[dict]) -> list[dict]:
    """Only the spans (what a test or a script usually wants)."""
    return [e for e in events if e.get("ph") == "X"]


def collect(request: Any, scope: str = "mesh") -> list[dict]:
    """Ask a daemon for its lanes through ``request(Msg.TIMELINE, scope)``."""
    from ..wire.messages import Msg

    lanes = request(Msg.TIMELINE, scope)
    return build_trace(lanes if isinstance(lanes, list) else [])
