"""Where a lease request or an actor goes when it does not run here: the spillback policy.

One object with one decision, ``choose``, so that the policy can be replaced
(by a pure scheduler over the same peer views) without touching the lease and
actor code that asks it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from ..sched.bundles import group_of
from .resources import EPS, ResourcePool

RECENT_S = 1.0
"""Requests sent to a peer within this long (s) count against it: gossiped views lag."""


class Placement:
    """Chooses another node for a request, from gossip's peer views, or None to keep it here.

    Owns two counters only: requests recently sent to each peer (so that views
    that lag do not send every request to the same "idle" peer) and SPREAD
    placements per node (round robin).  Reads the node's resources and the
    peers' views; changes neither.
    """

    def __init__(self, node_id: str, resources: ResourcePool, peer_views: Callable[[], dict],
                 group_target: Callable[[tuple], str | None]) -> None:
        self.node_id = node_id
        self.resources = resources
        self.peer_views = peer_views
        self.group_target = group_target  # the committed placement of a group bundle
        self.spilled_to: dict[str, tuple[float, int]] = {}  # peer -> (last time, recent count)
        self.spread_counts: dict[str, int] = {}  # SPREAD placements per node

    def feasible_somewhere(self, shape: tuple) -> bool:
        """Whether some live peer could ever run ``shape``."""
        return any(p.state == "alive" and all(p.total.get(k, 0.0) + EPS >= v for k, v in shape
                                              if not k.startswith("node:"))
                   and all(k[5:] == p.node_id for k, _ in shape if k.startswith("node:"))
                   for p in self.peer_views().values())

    def note_sent(self, node_id: str) -> None:
        """A request was spilled back to ``node_id``."""
        now = time.monotonic()
        at, count = self.spilled_to.get(node_id, (now, 0))
        self.spilled_to[node_id] = (now, count + 1 if now - at < RECENT_S else 1)

    def choose(self, shape: tuple, strategy: Any, hints: dict) -> Any:
        """Choose another node for this request, or None to keep it here.

        Run here when it fits now.  Otherwise prefer a peer whose gossiped view
        has room: the one holding the most argument bytes, then the less loaded
        of two random picks.  A request that already spilled here stays (unless
        it can never run here), so views that are stale cannot bounce it around.
        """
        peers = [p for p in self.peer_views().values() if p.state == "alive" and p.address]
        if not peers:
            return None
        res = self.resources
        if group_of(shape) is not None:
            # Placement groups: the committed placement says where the bundle is.
            node_id = self.group_target(shape)
            return next((p for p in peers if p.node_id == node_id), None) if node_id else None
        if isinstance(strategy, (tuple, list)) and strategy and strategy[0] == "node":
            # Soft affinity: that node when it is alive, else anywhere. Hard
            # affinity is a "node:<id>" resource in the shape (below).
            node_id = strategy[1]
            if node_id == self.node_id:
                return None
            for p in peers:
                if p.node_id == node_id:
                    return p
            return None
        pinned = [k[5:] for k, _ in shape if k.startswith("node:")]
        if pinned:
            if pinned[0] == self.node_id:
                return None
            return next((p for p in peers if p.node_id == pinned[0]), None)

        def total_fits(p) -> bool:
            return all(p.total.get(k, 0.0) + EPS >= v for k, v in shape)

        def free_fits(p) -> bool:
            return all(p.available.get(k, 0.0) + EPS >= v for k, v in shape)

        now = time.monotonic()

        def recent(node_id: str) -> int:
            # Requests we sent there lately: gossiped views lag, so without this
            # every request would go to the same "idle" peer.
            sent = self.spilled_to.get(node_id)
            return sent[1] if sent and now - sent[0] < RECENT_S else 0

        def load(p) -> float:
            cpu = p.total.get("CPU", 0.0) or 1.0
            return (cpu - p.available.get("CPU", 0.0)) / cpu + p.queue + recent(p.node_id) / cpu

        if strategy == "SPREAD":
            # Round-robin over every node that can hold it, this one included.
            cands = [p for p in peers if total_fits(p)]
            if res.feasible(shape):
                cands.append(None)
            if not cands:
                return None
            random.shuffle(cands)
            pick = min(cands, key=lambda p: self.spread_counts.get(p.node_id if p else self.node_id, 0))
            key = pick.node_id if pick else self.node_id
            self.spread_counts[key] = self.spread_counts.get(key, 0) + 1
            return pick
        here_now = res.fits(shape)
        if here_now and not hints.get("locality"):
            return None
        if hints.get("spilled") and res.feasible(shape):
            return None
        locality = hints.get("locality") or {}
        cands = [p for p in peers if free_fits(p)]
        if here_now:
            # Fits here: move only toward clearly more of the argument bytes.
            mine = locality.get(self.node_id, 0)
            better = [p for p in cands if locality.get(p.node_id, 0) > mine]
            return max(better, key=lambda p: locality.get(p.node_id, 0), default=None)
        if not cands:
            if res.feasible(shape):
                return None
            cands = [p for p in peers if total_fits(p)]
            if not cands:
                return None
        most = max(locality.get(p.node_id, 0) for p in cands)
        cands = [p for p in cands if locality.get(p.node_id, 0) == most]
        two = random.sample(cands, min(2, len(cands)))
        return min(two, key=load)
