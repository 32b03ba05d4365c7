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
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Protocol

from ..sched.bundles import group_of
from ..sched.placement import (
    PlacementRequest,
    RecentSends,
    SpreadCursor,
    choose_node,
    feasible_anywhere,
    reject_when_full,
)
from ..sched.resources import ResourcePool
from ..sched.views import NodeView, local_view


class Groups(Protocol):
    """The committed placement groups, as the control store's replica on this node has them."""

    def group_nodes(self, shape: tuple) -> tuple[str, ...] | None:
        """The node of each bundle of a shape's group (None: not created)."""

    def group_state(self, pg_id: str) -> str:
        """PENDING, CREATED, RESCHEDULING, REMOVED... (UNKNOWN: never heard of)."""


def _view(p: Any) -> NodeView:
    """A peer as placement sees it, from gossip's ``PeerView``."""
    return NodeView(p.node_id, p.address, p.state == "alive", p.total, p.available, p.queue, version=p.version)


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

    def _views(self, available: dict | None = None) -> tuple[NodeView, list[NodeView], dict]:
        peers = self.peer_views()
        views = [_view(p) for p in peers.values()]
        local = local_view(self.resources, self.node_id, "", self.queued())
        if available is not None:
            local = replace(local, available=MappingProxyType(dict(available)))
        return local, views, peers

    def feasible_somewhere(self, shape: tuple) -> bool:
        """Whether this node or some live peer could ever run ``shape``."""
        local, views, _ = self._views()
        return feasible_anywhere(shape, local, views)

    def note_sent(self, peer: Any) -> None:
        """A request was spilled back to ``peer`` (its gossip view), decided on that view."""
        self.recent.note(peer.node_id, time.monotonic(), peer.version)

    def removed_group(self, shape: tuple) -> str | None:
        """The placement group ``shape`` asks for, if it was removed: no lease can ever be granted."""
        group = group_of(shape)
        if group is not None and self.groups().group_state(group[0]) == "REMOVED":
            return group[0]
        return None

    def _request(self, shape: tuple, strategy: Any, hints: dict) -> PlacementRequest | None:
        try:
            return PlacementRequest(shape, strategy, hints.get("locality") or {}, bool(hints.get("spilled")),
                                    self.groups().group_nodes(shape))
        except (ValueError, TypeError):
            return None  # malformed: it can only wait here (and is reported infeasible)

    def send_back(self, owner_node: str, shape: tuple, strategy: Any, hints: dict) -> Any:
        """The peer view of the owner's node, when a request sent here that cannot be granted
        now must go back there (``reject_when_full``); None to keep it here."""
        req = self._request(shape, strategy, hints)
        p = self.peer_views().get(owner_node) if owner_node != self.node_id else None
        if req is None or p is None or not p.address:
            return None
        return p if reject_when_full(req, _view(p)) else None

    def elsewhere(self, shape: tuple, strategy: Any, hints: dict, owner_node: str) -> Any:
        """For a node that is leaving: the peer view to send a request to -- one with room
        now, else the owner's node -- or None when there is none."""
        target = self.choose(shape, strategy, dict(hints, spilled=False), available={})
        # Else its owner's node places it again, unless it was placed here for affinity, a
        # bundle, SPREAD or its arguments (reject_when_full): then it goes with this node.
        return target if target is not None else self.send_back(owner_node, shape, strategy, hints)

    def choose(self, shape: tuple, strategy: Any, hints: dict, available: dict | None = None) -> Any:
        """The peer view of the node to send the request to, or None to keep it here.
        ``available``: what is free here for this request (default: the pool's free amounts)."""
        req = self._request(shape, strategy, hints)
        if req is None:
            return None
        local, views, peers = self._views(available)
        node = choose_node(req, local, views, spread=self.spread, recent=self.recent, rng=self.rng,
                           now=time.monotonic())
        return peers.get(node) if node is not None else None
