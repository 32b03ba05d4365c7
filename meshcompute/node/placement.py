"""The daemon's side of placement: today's views in, sched/'s decision out.

The policy itself is :func:`meshcompute.sched.placement.choose_node` (pure,
table-tested).  This object only gathers what it needs -- this node's
resource pool, gossip's peer views, the committed node of each placement
group bundle -- and keeps the two pieces of state the policy carries between
decisions: the SPREAD cursor and the requests recently sent to each peer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..sched.bundles import group_of
from ..sched.placement import PlacementRequest, RecentSends, SpreadCursor, choose_node, feasible_anywhere
from ..sched.resources import ResourcePool
from ..sched.views import NodeView, local_view


class Groups(Protocol):
    """The committed placement groups, as the control store's replica on this node has them."""

    def group_nodes(self, shape: tuple) -> tuple[str, ...] | None:
        """The node of each bundle of a shape's group (None: not created)."""

    def group_state(self, pg_id: str) -> str:
        """PENDING, CREATED, RESCHEDULING, REMOVED... (UNKNOWN: never heard of)."""


class Placement:
    """Chooses another node for a request, or None to keep it here."""

    def __init__(self, node_id: str, resources: ResourcePool, peer_views: Callable[[], dict],
                 groups: Callable[[], Groups], queued: Callable[[], int]) -> None:
        self.node_id = node_id
        self.resources = resources
        self.peer_views = peer_views
        self.groups = groups  # made after this object: asked for at each use
        self.queued = queued  # requests waiting here
        self.spread = SpreadCursor()
        self.recent = RecentSends()
        self.rng = random.Random()

    def _views(self) -> tuple[NodeView, list[NodeView], dict]:
        peers = self.peer_views()
        views = [NodeView(p.node_id, p.address, p.state == "alive", p.total, p.available, p.queue)
                 for p in peers.values()]
        return local_view(self.resources, self.node_id, "", self.queued()), views, peers

    def feasible_somewhere(self, shape: tuple) -> bool:
        """Whether this node or some live peer could ever run ``shape``."""
        local, views, _ = self._views()
        return feasible_anywhere(shape, local, views)

    def note_sent(self, node_id: str) -> None:
        """A request was spilled back to ``node_id``."""
        self.recent.note(node_id, time.monotonic())

    def removed_group(self, shape: tuple) -> str | None:
        """The placement group ``shape`` asks for, if it was removed: no lease can ever be granted."""
        group = group_of(shape)
        if group is not None and self.groups().group_state(group[0]) == "REMOVED":
            return group[0]
        return None

    def choose(self, shape: tuple, strategy: Any, hints: dict) -> Any:
        """The peer view of the node to send the request to, or None to keep it here."""
        try:
            req = PlacementRequest(shape, strategy, hints.get("locality") or {}, bool(hints.get("spilled")),
                                   self.groups().group_nodes(shape))
        except (ValueError, TypeError):
            return None  # malformed: it can only wait here (and is reported infeasible)
        local, views, peers = self._views()
        node = choose_node(req, local, views, spread=self.spread, recent=self.recent, rng=self.rng,
                           now=time.monotonic())
        return peers.get(node) if node is not None else None
