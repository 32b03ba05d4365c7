"""What the scheduler knows of a node: a snapshot, never the live object.

Peers are known from gossip, which lags by up to a few gossip rounds: their
``available`` may be stale (see ``placement.RecentSends``). The local node is
known exactly, from its ``ResourcePool`` (``local_view``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from .bundles import gpu_amount
from .resources import EPSILON, ResourcePool, Shape, pick_gpus

__all__ = ["NodeView", "local_view"]

@dataclass(frozen=True)
class NodeView:
    """One node as placement sees it.

    ``total``/``available``: resource amounts. Gossip carries only public names
    (no ``node:<id>`` marker, no bundle names); the marker is implied by
    ``node_id`` (``has_room``/``could_hold`` below). ``queue``: requests waiting
    on that node. ``gpu_free``: per-device free fractions when known (the
    local node), so that a GPU request is checked against real devices.
    """

    node_id: str
    address: str
    alive: bool
    total: Mapping[str, float]
    available: Mapping[str, float]
    queue: int = 0
    gpu_free: Mapping[int, float] | None = None
    version: int = 0

    def could_hold(self, shape: Shape) -> bool:
        """Whether this node could ever run the shape (its totals)."""
        return _covers(self, shape, self.total)

    def has_room(self, shape: Shape) -> bool:
        """Whether this node could run the shape now (its free amounts and, if known, devices)."""
        if not _covers(self, shape, self.available):
            return False
        gpus = gpu_amount(shape)
        return not gpus or self.gpu_free is None or pick_gpus(self.gpu_free, gpus) is not None

    def less(self, shape: Shape, times: int) -> NodeView:
        """This view with ``times`` more of ``shape`` taken from ``available`` (requests on their way)."""
        if times <= 0:
            return self
        available = dict(self.available)
        for k, v in shape:
            if k in available:
                available[k] -= v * times
        return replace(self, available=MappingProxyType(available))

    def cpu_use(self) -> float:
        """Fraction of the node's CPU in use (0 when it has none: such a node is never 'loaded')."""
        cpu = self.total.get("CPU", 0.0) or 1.0
        return (cpu - self.available.get("CPU", 0.0)) / cpu


def _covers(view: NodeView, shape: Shape, pool: Mapping[str, float]) -> bool:
    for k, v in shape:
        if k.startswith("node:") and k not in pool:
            # Gossip leaves the marker out: only the named node has it.
            if k[5:] != view.node_id:
                return False
        elif pool.get(k, 0.0) + EPSILON < v:
            return False
    return True


def local_view(pool: ResourcePool, node_id: str, address: str, queue: int = 0) -> NodeView:
    """This node as placement sees it: everything, bundles and devices included."""
    # Copies: a view must not change under a decision that is still using it.
    return NodeView(node_id, address, True, MappingProxyType(dict(pool.total)),
                    MappingProxyType(dict(pool.available)), queue, MappingProxyType(dict(pool.gpu_free)))
