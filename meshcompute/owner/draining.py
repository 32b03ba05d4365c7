"""Leases on a node that is leaving: no more work goes there, and they go back once idle.

A node asked to stop (SIGTERM, ``mesh stop``, a pod deleted) first drains: it grants
nothing more and tells each owner that holds one of its leases (``NODE_DRAINING``).
The owner takes those leases out of its queues' reach, so nothing new is pushed to
them, lets the tasks already there finish, returns each lease as it goes idle, and
asks for leases elsewhere for what is still queued.  The node leaves once its leases
are back, or when its drain time is up.
"""

from __future__ import annotations

from typing import Any

from ..wire.transport import node_of


def on_node_draining(tasks: Any, sender: str, msg: tuple, frames: list) -> None:
    _, node_id = msg
    if node_of(sender) != node_id:  # a daemon speaks for its own node only
        return
    tasks.nodes.pop(node_id, None)  # not a lease target any more (sched.keys.lease_target)
    for lease in [ls for ls in tasks.lease_by_id.values() if ls.daemon == sender]:
        leases = tasks.leases.get(lease.key)
        if leases and lease in leases:
            leases.remove(lease)  # dispatch sees it no more; lease_idle returns it
        if not lease.inflight:
            tasks.return_lease(lease)
        tasks._size_requests(lease.key, tasks.queues.get(lease.key), tasks.leases.get(lease.key, ()))
