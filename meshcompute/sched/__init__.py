"""Scheduling decisions, in one place, as pure code.

Everything that decides *where* and *when* work runs lives here: functions
and small records, no sockets, threads, clocks or global randomness. Callers
(the daemon, the owner runtime, the control store) pass in what they know,
the time (``now``) and a ``random.Random``, and act on the answer. So every
decision can be tested by a table and replayed, and every daemon given the
same facts decides the same.

Modules:

* ``resources``: request shapes (``normalize_shape``) and a node's
  ``ResourcePool`` (fits, acquire/release, GPU devices, lent CPU, bundles).
* ``bundles``: how placement group bundles appear as resource names.
* ``views``: ``NodeView``, what placement knows of a node.
* ``placement``: the daemon's choice of node for a lease request
  (``choose_node``, SPREAD turns, locality, affinity, placement groups), and
  whether a request sent here goes back to its owner's node (``reject_when_full``).
* ``keys``: ``scheduling_key``, which tasks an owner may queue together, and
  ``lease_target``, which daemon it asks for their lease.
* ``pipeline``: the owner's choice of lease for queued tasks
  (``plan_pushes``), run time means, how many lease requests to keep out.

Imports only the standard library and these modules.
"""

from .keys import lease_target, preferred_node, scheduling_key
from .pipeline import (
    MAX_LEASE_REQUESTS,
    MAX_PIPELINE,
    MEDIUM_TASK_S,
    SHORT_TASK_S,
    RunTimes,
    depth_limit,
    lease_requests_delta,
    plan_pushes,
)
from .placement import (
    PlacementRequest,
    RecentSends,
    SpreadCursor,
    choose_node,
    feasible_anywhere,
    group_target,
    normalize_strategy,
    reject_when_full,
)
from .resources import ResourcePool, Shape, feasible, fits, normalize_shape
from .views import NodeView, local_view

__all__ = [
    "MAX_LEASE_REQUESTS", "MAX_PIPELINE", "MEDIUM_TASK_S", "SHORT_TASK_S", "NodeView", "PlacementRequest", "RecentSends",
    "ResourcePool", "RunTimes", "Shape", "SpreadCursor", "choose_node", "depth_limit", "feasible",
    "feasible_anywhere", "fits", "group_target", "lease_requests_delta", "local_view", "normalize_shape",
    "lease_target", "normalize_strategy", "plan_pushes", "preferred_node", "reject_when_full",
    "scheduling_key",
]
