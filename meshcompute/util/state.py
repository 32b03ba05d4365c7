"""Ray's state API (``ray.util.state``): the mesh's nodes, actors, tasks, objects,
placement groups and jobs as lists of dicts, and a summary of its tasks::

    from meshcompute.util.state import list_actors, list_tasks, summarize_tasks

    list_actors(filters=[("state", "=", "ALIVE")])
    list_tasks(filters=[("name", "=", "train"), ("state", "!=", "FINISHED")], detail=True)

Each ``list_*`` takes Ray's ``address``, ``filters`` (``(field, "=" or "!=", value)``,
all of which must hold; strings compare without regard to case), ``limit`` (default
100), ``timeout`` (seconds) and ``detail`` (every field instead of the default ones).
The records are dicts whose fields also read as attributes (``a.state``).

The nodes serve these themselves, with no dashboard process: observe/state.py says
where each listing comes from, docs/observability.md lists the fields and the limits
(tasks: each worker's last 10,000 finished ones, the running ones, the owners'
unfinished ones).  Without ``address`` a driver or task asks its own node; outside one
(no ``init()``), or with ``address`` (``"auto"``, a node id, ``host:port`` or session
dir), a node of this machine is asked, as ``mesh list`` does.
"""

from __future__ import annotations

from typing import Any

from ..host.launcher import find_any_node
from ..observe.state import DEFAULT_LIMIT, Source, check_filters, collect, select
from ..observe.state import summarize_tasks as _summarize
from ..owner import context

__all__ = ["list_actors", "list_jobs", "list_nodes", "list_objects", "list_placement_groups", "list_tasks",
           "summarize_tasks"]


def _source(address: str | None, timeout: float) -> Source:
    core = context.core
    if address is None and core is not None:  # this driver's or task's own node
        return Source(lambda msg, *fields, timeout: core.request_daemon(msg, *fields, timeout=timeout), timeout)
    info = find_any_node(None if address in (None, "auto") else address)
    if info is None:
        raise ConnectionError(f"No meshcompute node of this machine matches {address!r}" if address not in
                              (None, "auto") else "No meshcompute node runs on this machine (and this process "
                              "did not call init()): start one with `mesh start`.")
    return Source.for_node(info, timeout)


def _list(kind: str, address: str | None, filters: Any, limit: int | None, timeout: float,
          detail: bool) -> list[dict[str, Any]]:
    check_filters(kind, filters)  # a bad filter fails before anything is asked
    return select(kind, collect(_source(address, timeout), kind), filters, limit, detail)[0]


def list_nodes(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
               timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """Every node: ``node_id``, ``node_ip``, ``state`` (ALIVE, DEAD), ``state_message``,
    ``resources_total``... (the control store's node table with gossip's view)."""
    return _list("nodes", address, filters, limit, timeout, detail)


def list_actors(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """Every actor, dead ones too (the newest 10,000): ``actor_id``, ``class_name``, ``state``
    (PENDING_CREATION, ALIVE, RESTARTING, DEAD), ``name``, ``node_id``, ``pid``, ``job_id``..."""
    return _list("actors", address, filters, limit, timeout, detail)


def list_tasks(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
               timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """Recent tasks and actor calls: ``task_id``, ``name``, ``state`` (PENDING_ARGS_AVAIL,
    PENDING_NODE_ASSIGNMENT, SUBMITTED_TO_WORKER, RUNNING, FINISHED, FAILED), ``node_id``,
    ``func_or_class_name``...; unfinished ones first, then the newest finished."""
    return _list("tasks", address, filters, limit, timeout, detail)


def list_objects(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                 timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """Objects in the nodes' stores (values over 100 KiB), largest first: ``object_id``,
    ``object_size``, ``reference_type``, ``node_id`` (of the primary copy), owner ``pid``..."""
    return _list("objects", address, filters, limit, timeout, detail)


def list_placement_groups(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
                          timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """Every placement group: ``placement_group_id``, ``name``, ``creator_job_id``, ``state``
    (PENDING, CREATED, RESCHEDULING, REMOVED), ``strategy``, and with ``detail`` its bundles."""
    return _list("placement-groups", address, filters, limit, timeout, detail)


def list_jobs(address: str | None = None, filters: list | None = None, limit: int = DEFAULT_LIMIT,
              timeout: float = 30, detail: bool = False) -> list[dict[str, Any]]:
    """One job per driver (the newest 1,000 that ended, and the running ones): ``job_id``,
    ``status`` (RUNNING, SUCCEEDED once the driver ended), ``entrypoint``, ``driver_info``..."""
    return _list("jobs", address, filters, limit, timeout, detail)


def summarize_tasks(address: str | None = None, timeout: float = 30) -> dict[str, Any]:
    """Task counts by function (or actor method) and state, over what ``list_tasks`` sees:
    ``{"cluster": {"summary": {name: {"func_or_class_name", "type", "state_counts"}},
    "total_tasks", "total_actor_tasks", "summary_by"}}``."""
    return _summarize(collect(_source(address, timeout), "tasks"))
