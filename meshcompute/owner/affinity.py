"""Tasks pinned to a node that is gone: they can never run, so they fail (Ray's TaskUnschedulableError).

Hard node affinity (``NodeAffinitySchedulingStrategy(node_id, soft=False)``) asks for
the node's ``node:<id>`` marker resource, which only that node has: once the node
died or left, such a task would wait forever. The runtime calls these when a node
goes (for the tasks waiting then, retried ones included) and when a task is
submitted (for a node known to be gone already).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from .. import exceptions as exc

_MARKER = "node:"


def pinned_node(shape: tuple) -> str | None:
    """The node a shape is pinned to (hard affinity), or None."""
    for name, _ in shape:
        if name.startswith(_MARKER):
            return name[len(_MARKER):]
    return None


def fail_pinned_to(tasks: Any, gone: Container[str]) -> None:
    """Fail the tasks not running yet that are pinned to a node in ``gone``."""
    for t in list(tasks.tasks.values()):
        if t.actor_id is None and not t.dispatched:
            fail_if_pinned_to(tasks, t, gone)


def fail_if_pinned_to(tasks: Any, t: Any, gone: Container[str]) -> None:
    """Fail ``t`` (not running yet) if it is pinned to a node in ``gone``.

    A task run again to rebuild results lost with that node is left waiting: its
    results may still be read from a copy on another node, which a failure here
    would spoil (failing rebuilds that nothing can satisfy is left to a later change)."""
    node = pinned_node(t.shape)
    if node is None or node not in gone or t.dispatched or t.task_id not in tasks.tasks \
            or t.task_id in tasks.lineage.specs:
        return
    q = tasks.queues.get(t.key)
    if q is not None and t in q:
        q.remove(t)
        tasks._size_requests(t.key, q, tasks.leases.get(t.key, ()))  # withdraw its lease request
    tasks.fail(t, exc.TaskUnschedulableError(
        f"The task {t.name} cannot run: it is pinned to node {node} (NodeAffinitySchedulingStrategy with "
        f"soft=False), which is no longer in the mesh. Use soft=True to let it run elsewhere."))
