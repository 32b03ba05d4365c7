"""Where a lease request goes: this node or a peer (the daemon's half of scheduling).

Every daemon that receives a request decides with ``choose_node``: keep it
(run now, or wait here) or send the owner to a peer (spillback). A request
moves at most once for the ordinary strategies: a request that was sent on
(``spilled``) stays wherever it can ever run, so that stale views can never
bounce it around the mesh.

Decisions are pure: the caller passes the views, the clock and the random
source, so a decision can be replayed and tested.
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .bundles import group_of
from .resources import Shape, normalize_shape
from .views import NodeView

__all__ = ["LOCALITY_MIN_BYTES", "RECENT_WINDOW_S", "normalize_strategy", "PlacementRequest",
           "SpreadCursor", "RecentSends", "choose_node", "feasible_anywhere", "group_target",
           "reject_when_full"]

LOCALITY_MIN_BYTES = 1 << 20
"""Bytes (1 MiB) by which a node must hold more of a task's arguments to matter.

Below this, fetching the arguments costs about as much as one more round trip
to move the request (1 MiB is under a millisecond on a 10 Gb/s link), so
locality is not worth a move, nor a queue of its own (``keys``)."""

RECENT_WINDOW_S = 1.0
"""Seconds a request sent to a peer counts toward its load: about the time
gossip takes to show that peer's new load."""


def normalize_strategy(strategy: Any) -> None | str | tuple[str, str, bool]:
    """The hashable form of a wire strategy: ``None`` (default), ``"SPREAD"`` or ``("node", id, soft)``.

    Anything else, e.g. a strategy from a newer client or a hostile peer, is
    the default: placement then still works, only without the preference.
    """
    if strategy == "SPREAD":
        return "SPREAD"
    if (isinstance(strategy, (tuple, list)) and len(strategy) == 3 and strategy[0] == "node"
            and isinstance(strategy[1], str)):
        return ("node", strategy[1], bool(strategy[2]))
    return None


def _clean_locality(locality: Any) -> Mapping[str, int]:
    # Hints come from peers: keep only what compares as byte counts.
    if not isinstance(locality, Mapping):
        return MappingProxyType({})
    return MappingProxyType({k: int(v) for k, v in locality.items() if isinstance(k, str)
                             and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2**63})


@dataclass(frozen=True)
class PlacementRequest:
    """A lease request as placement needs it.

    ``shape`` is normalized (``ValueError`` if malformed), ``strategy`` and
    ``locality`` (bytes of the task's arguments held per node) are cleaned up.
    ``spilled``: another node already sent it here. ``group_nodes``: for a
    placement group shape, the node of each bundle by bundle index, or None
    while the group is not created. ``group_index`` is filled in from the
    shape: the bundle it asks for, -1 for any bundle of the group.
    """

    shape: Shape
    strategy: Any = None
    locality: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    spilled: bool = False
    group_nodes: tuple[str, ...] | None = None
    group_index: int = -1

    def __post_init__(self) -> None:
        shape = normalize_shape(self.shape)
        group = group_of(shape)
        nodes = None if self.group_nodes is None else tuple(self.group_nodes)
        for name, value in (("shape", shape), ("strategy", normalize_strategy(self.strategy)),
                            ("locality", _clean_locality(self.locality)), ("group_nodes", nodes),
                            ("group_index", group[1] if group else -1)):
            object.__setattr__(self, name, value)


class SpreadCursor:
    """Round robin over the sorted ids of the candidates, for SPREAD.

    Why a cursor and not counts: per-node counts keep history, so a node that
    joins late is 'behind' and took every SPREAD request until it caught up.
    The cursor keeps only the last pick: the next pick is the first candidate
    id after it, so any candidate set, including one that just grew, is
    served in turns from the next pick on: a newcomer gets 1 of every n.
    """

    def __init__(self) -> None:
        self.last: str | None = None

    def pick(self, candidates: Sequence[str], rng: random.Random) -> str:
        """The next candidate in turn (``candidates`` must not be empty)."""
        ids = sorted(set(candidates))
        if not ids:
            raise ValueError("SPREAD needs at least one candidate")
        if self.last is None:
            # Daemons start at different nodes, so their first picks do not pile up on one.
            choice = rng.choice(ids)
        else:
            choice = next((i for i in ids if i > self.last), ids[0])
        self.last = choice
        return choice


class RecentSends:
    """Requests sent to each peer within the last ``RECENT_WINDOW_S``, since its last view.

    Gossiped views lag: without this, every request in a burst would go to
    the same peer that looked idle a moment ago. A send counts against the
    peer's room and load (``choose_node``) until a newer view of the peer
    (a higher gossip ``version``) arrives, which shows it granted or queued,
    or until the window ends. ``now`` is a monotonic clock.
    """

    def __init__(self, window_s: float = RECENT_WINDOW_S) -> None:
        self.window_s = window_s
        self._sent: dict[str, deque[tuple[float, int]]] = {}

    def note(self, node_id: str, now: float, version: int = 0) -> None:
        """A request was sent to ``node_id`` at ``now``, decided on its view ``version``."""
        self._sent.setdefault(node_id, deque()).append((now, version))
        self.count(node_id, now, version)

    def count(self, node_id: str, now: float, version: int = 0) -> int:
        """Requests sent to ``node_id`` in the window that ends at ``now`` and not yet
        shown by its view ``version`` (those decided on an older view are)."""
        sent = self._sent.get(node_id)
        if sent is None:
            return 0
        while sent and (now - sent[0][0] >= self.window_s or sent[0][1] < version):
            sent.popleft()
        if not sent:
            del self._sent[node_id]  # nodes that are gone must not pile up here
            return 0
        return len(sent)


def group_target(shape: Shape, group_nodes: Sequence[str] | None, local_node: str) -> str | None:
    """For a placement group shape: the node to run it on (None: here, or wait here).

    ``group_nodes``: the node of each bundle by index (None: not created yet).
    A request for any bundle stays here when a bundle is here; else it goes
    to one of the group's nodes chosen by a stable hash of the shape, so every
    daemon (every process, whatever its PYTHONHASHSEED) names the same one.
    """
    group = group_of(shape)
    if group is None or not group_nodes:
        return None
    index = group[1]
    if index >= 0:
        node = group_nodes[index] if index < len(group_nodes) else None
        return None if node == local_node else node
    nodes = sorted(set(group_nodes))
    if local_node in nodes:
        return None
    key = repr(tuple((str(k), float(v)) for k, v in shape)).encode()
    return nodes[zlib.crc32(key) % len(nodes)]


def reject_when_full(req: PlacementRequest, home: NodeView | None) -> bool:
    """Whether a request sent here by another node goes back when it cannot be granted here now.

    Ray's spillback is "grant or reject": a request placed from a stale view
    of this node must not wait here while the node it came from, or a third
    one, frees up first. So a spilled request of the default strategy, with
    no node holding enough of its arguments to matter, goes back to its
    owner's node (``home``, None when not known alive), whose queue is the one
    place it waits; from there it is placed again on a fresh view. Requests
    placed for a reason that stays true (affinity, SPREAD, a bundle,
    locality) wait where they were sent, and so does a request whose owner's
    node could never run it (a node of 0 CPUs): that node would only send it
    out again, and the two would bounce it between them.
    """
    if home is None or not home.alive or not req.spilled or req.strategy is not None:
        return False
    if group_of(req.shape) is not None or any(k.startswith("node:") for k, _ in req.shape):
        return False
    if any(size >= LOCALITY_MIN_BYTES for size in req.locality.values()):
        return False
    return home.could_hold(req.shape)


def feasible_anywhere(shape: Shape, local: NodeView, peers: Sequence[NodeView]) -> bool:
    """Whether some alive node could ever run the shape. Placement group shapes
    always count as feasible: their bundle names exist only once reserved."""
    if group_of(shape) is not None:
        return True
    return local.could_hold(shape) or any(p.alive and p.could_hold(shape) for p in peers)


def choose_node(req: PlacementRequest, local: NodeView, peers: Sequence[NodeView], *,
                spread: SpreadCursor, recent: RecentSends, rng: random.Random, now: float) -> str | None:
    """The node to send ``req`` to, or None to keep it here (run now or wait here).

    In order: a placement group bundle goes where the bundle is; node affinity
    to its node (soft: only while that node is alive, else as the default);
    a ``spilled`` request stays when it can ever run here; SPREAD takes turns
    over every node that could hold it, this one included; otherwise stay
    when it fits here, unless a peer with room holds ``LOCALITY_MIN_BYTES``
    more of the arguments; when it does not fit here, a peer with room (the
    most argument bytes, then the less loaded of two random picks), else wait
    here if it can ever run here, else a peer that could ever hold it. A
    peer's room is its gossiped free amounts less the requests sent to it
    since that view (``RecentSends``).

    Deterministic for equal inputs (``rng`` state included); peers are taken
    in id order, whatever order the caller passes them in.
    """
    alive = sorted((p for p in peers if p.alive and p.address and p.node_id != local.node_id),
                   key=lambda p: p.node_id)
    if not alive:
        return None
    ids = {p.node_id for p in alive}
    shape = req.shape
    if group_of(shape) is not None:
        target = group_target(shape, req.group_nodes, local.node_id)
        return target if target in ids else None
    strategy = req.strategy
    pinned = [k[5:] for k, _ in shape if k.startswith("node:")]
    if isinstance(strategy, tuple) or pinned:
        node_id = pinned[0] if pinned else strategy[1]
        if node_id == local.node_id:
            return None
        if node_id in ids:
            return node_id
        if pinned or not strategy[2]:
            return None  # hard affinity to a dead node: wait here (the owner is told it is infeasible)
    feasible_here = local.could_hold(shape)
    if req.spilled and feasible_here:
        return None
    if strategy == "SPREAD":
        cands = [p.node_id for p in alive if p.could_hold(shape)] + ([local.node_id] if feasible_here else [])
        if not cands:
            return None
        pick = spread.pick(cands, rng)
        return None if pick == local.node_id else pick
    locality = req.locality
    # Requests sent to a peer since its last view are taken from its room: a
    # burst fills each peer's free slots once instead of piling onto one.
    roomy = [p for p in alive if p.less(shape, recent.count(p.node_id, now, p.version)).has_room(shape)]
    if local.has_room(shape):
        mine = locality.get(local.node_id, 0)
        better = [p for p in roomy if locality.get(p.node_id, 0) >= mine + LOCALITY_MIN_BYTES]
        best = max(better, key=lambda p: locality.get(p.node_id, 0), default=None)
        return best.node_id if best else None
    if not roomy:
        if feasible_here:
            return None
        roomy = [p for p in alive if p.could_hold(shape)]
        if not roomy:
            return None
    most = max(locality.get(p.node_id, 0) for p in roomy)
    cands = [p for p in roomy if locality.get(p.node_id, 0) == most]

    def load(p: NodeView) -> float:
        cpu = p.total.get("CPU", 0.0) or 1.0
        return p.cpu_use() + p.queue + recent.count(p.node_id, now, p.version) / cpu

    return min(rng.sample(cands, min(2, len(cands))), key=load).node_id
