"""Deterministic discrete-event network for driving many :class:`Swim` nodes.

Virtual time (float seconds) advances only through a heap of events: packet
deliveries and per-node timer ticks (each node is ticked exactly at its
``next_deadline()``).  Every random choice -- loss, delay, duplication,
reordering, and each node's protocol randomness -- comes from generators
seeded from ``SimNetwork(seed)``, and no iteration depends on hash order, so a
seed replays bit-for-bit, in this process or any other.

Faults: per-packet ``loss`` probability, uniform ``latency`` range,
``duplicate`` probability, ``reorder`` probability (extra delay up to
``reorder_delay`` so later packets overtake), :meth:`partition`,
:meth:`isolate`, :meth:`heal`, :meth:`crash` (stops sending and receiving),
and graceful :meth:`leave`.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .config import GossipConfig
from .member import MemberInfo, MemberState
from .messages import Message, encode
from .swim import MemoryMetaDelegate, Output, Swim

__all__ = ["SimNetwork", "SimNode", "SimStats"]

_DELIVER = 0
_TICK = 1
_STOP = 2

LogEntry = tuple[float, str, str, str, int]  # (time, observer, event kind, subject, incarnation)


class SimNode:
    __slots__ = (
        "index",
        "node_id",
        "addr",
        "swim",
        "delegate",
        "crashed",
        "left",
        "group",
        "tick_gen",
        "tick_at",
    )

    def __init__(self, index: int, node_id: str, addr: str, swim: Swim, delegate: MemoryMetaDelegate) -> None:
        self.index = index
        self.node_id = node_id
        self.addr = addr
        self.swim = swim
        self.delegate = delegate
        self.crashed = False
        self.left = False
        self.group = 0
        self.tick_gen = 0
        self.tick_at: float | None = None

    @property
    def running(self) -> bool:
        return not self.crashed

    def __repr__(self) -> str:
        return f"SimNode({self.node_id}, crashed={self.crashed}, left={self.left})"


@dataclass(slots=True)
class SimStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    bytes: int = 0  # only counted with wire=True
    ticks: int = 0


NodeRef = SimNode | int | str


class SimNetwork:
    """A seeded, fully deterministic network of Swim nodes."""

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_delay: float = 0.05,
        wire: bool = False,
        record: bool = True,
    ) -> None:
        if not 0 <= loss < 1 or not 0 <= duplicate < 1 or not 0 <= reorder <= 1:
            raise ValueError("probabilities must be in [0, 1)")
        if not 0 <= latency[0] <= latency[1]:
            raise ValueError("latency must be (lo, hi) with 0 <= lo <= hi")
        self.seed = seed
        self.loss = loss
        self.latency = latency
        self.duplicate = duplicate
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.wire = wire
        self.record = record
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self.log: list[LogEntry] = []
        self.stats = SimStats()
        self._rng = random.Random(seed)
        self._by_addr: dict[str, SimNode] = {}
        self._by_id: dict[str, SimNode] = {}
        self._q: list[tuple[float, int, int, int, object, object]] = []
        self._qc = 0
        self._next_group = 1

    # ------------------------------------------------------------------ nodes
    def _node_rng(self, index: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + index + 1)

    def _make(self, config: GossipConfig | None, meta: bytes, node_id: str | None) -> SimNode:
        index = len(self.nodes)
        node_id = node_id or f"n{index:04d}"
        addr = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:7946"
        delegate = MemoryMetaDelegate(meta)
        swim = Swim(node_id, addr, rng=self._node_rng(index), config=config, delegate=delegate, now=self.now)
        node = SimNode(index, node_id, addr, swim, delegate)
        self.nodes.append(node)
        self._by_addr[addr] = node
        self._by_id[node_id] = node
        return node

    def add_node(
        self,
        *,
        config: GossipConfig | None = None,
        meta: bytes = b"",
        seeds: Sequence[str] | None = None,
        node_id: str | None = None,
    ) -> SimNode:
        """Start a node at the current time and join it (default seed: node 0)."""
        node = self._make(config, meta, node_id)
        if seeds is None:
            seeds = [self.nodes[0].addr] if node.index > 0 else []
        self._process(node, node.swim.join(seeds, self.now))
        return node

    def bootstrap(
        self,
        n: int,
        *,
        config: GossipConfig | None = None,
        meta: bytes | Callable[[int], bytes] = b"",
    ) -> list[SimNode]:
        """Create ``n`` nodes that already know each other (a converged cluster)."""
        start = len(self.nodes)
        new = [self._make(config, meta(i) if callable(meta) else meta, None) for i in range(start, start + n)]
        infos: list[MemberInfo] = []
        for node in self.nodes:
            info = node.swim.member(node.node_id)
            assert info is not None
            infos.append(info)
        for node in self.nodes:
            node.swim.preload(infos, self.now)
            self._schedule_tick(node)
        return new

    def node(self, ref: NodeRef) -> SimNode:
        if isinstance(ref, SimNode):
            return ref
        if isinstance(ref, int):
            return self.nodes[ref]
        return self._by_id[ref]

    def live_nodes(self) -> list[SimNode]:
        """Nodes neither crashed nor gone after a leave."""
        return [n for n in self.nodes if not n.crashed and not n.left]

    # ----------------------------------------------------------------- faults
    def crash(self, ref: NodeRef) -> None:
        """Stop the node dead: no more sends, receives or timers (like SIGKILL)."""
        self.node(ref).crashed = True

    def partition(self, *groups: Iterable[NodeRef]) -> None:
        """Split the network: nodes talk only within their group. Unlisted nodes share one group."""
        for n in self.nodes:
            n.group = 0
        for g in groups:
            gid = self._next_group
            self._next_group += 1
            for ref in g:
                self.node(ref).group = gid
        self._next_group += 1

    def isolate(self, ref: NodeRef) -> None:
        """Cut one node off from everyone (it keeps running)."""
        self.node(ref).group = self._next_group
        self._next_group += 1

    def heal(self) -> None:
        for n in self.nodes:
            n.group = 0

    def leave(self, ref: NodeRef, linger: float = 1.0) -> None:
        """Graceful leave; the node keeps gossiping for ``linger`` s, then stops."""
        node = self.node(ref)
        self._process(node, node.swim.leave(self.now))
        node.left = True
        self._push(self.now + linger, _STOP, node.index, None, None)

    def update_meta(self, ref: NodeRef, blob: bytes) -> int:
        """Change a node's resource view; returns the new meta version."""
        node = self.node(ref)
        node.delegate.local = blob
        self._process(node, node.swim.update_meta(self.now))
        return node.swim.local_meta_version

    def inject(self, ref: NodeRef, msg: Message, src: str = "sim:inject") -> None:
        """Hand ``msg`` to a node right now, bypassing the network."""
        node = self.node(ref)
        self._process(node, node.swim.on_packet(src, msg, self.now))

    # -------------------------------------------------------------------- run
    def run_until(self, t_end: float) -> None:
        q = self._q
        nodes = self.nodes
        while q and q[0][0] <= t_end:
            t, _, kind, idx, a, b = heapq.heappop(q)
            self.now = t
            node = nodes[idx]
            if kind == _DELIVER:
                if node.crashed:
                    self.stats.dropped += 1
                    continue
                src = self._by_addr.get(a)  # type: ignore[arg-type]
                if src is not None and src.group != node.group:
                    self.stats.dropped += 1
                    continue
                self.stats.delivered += 1
                if self.wire:
                    out = node.swim.on_datagram(a, b, t)  # type: ignore[arg-type]
                else:
                    out = node.swim.on_packet(a, b, t)  # type: ignore[arg-type]
                self._process(node, out)
            elif kind == _TICK:
                if node.crashed or a != node.tick_gen:
                    continue
                node.tick_at = None
                self.stats.ticks += 1
                self._process(node, node.swim.on_tick(t))
            else:  # _STOP
                node.crashed = True
        if t_end > self.now:
            self.now = t_end

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(self, pred: Callable[[], bool], timeout: float, step: float = 0.01) -> float | None:
        """Advance in ``step`` increments until ``pred()``; return the time, or None on timeout."""
        deadline = self.now + timeout
        while True:
            if pred():
                return self.now
            if self.now >= deadline - 1e-12:
                return None
            self.run_until(min(deadline, self.now + step))

    # ---------------------------------------------------------------- helpers
    def sees(self, observer: NodeRef, subject: NodeRef) -> MemberState | None:
        return self.node(observer).swim.state_of(self.node(subject).node_id)

    def all_see(
        self, subject: NodeRef, state: MemberState, observers: Iterable[SimNode] | None = None
    ) -> bool:
        sid = self.node(subject).node_id
        obs = self.live_nodes() if observers is None else observers
        return all(o.swim.state_of(sid) == state for o in obs if o.node_id != sid)

    def events(self, kind: str | None = None, subject: str | None = None) -> list[LogEntry]:
        return [
            e for e in self.log if (kind is None or e[2] == kind) and (subject is None or e[3] == subject)
        ]

    def digest(self) -> str:
        """Hash of the event log and counters: equal for equal seeds and inputs."""
        h = hashlib.sha256()
        for e in self.log:
            h.update(repr(e).encode())
        h.update(repr(self.stats).encode())
        return h.hexdigest()

    # -------------------------------------------------------------- internals
    def _push(self, t: float, kind: int, idx: int, a: object, b: object) -> None:
        self._qc += 1
        heapq.heappush(self._q, (t, self._qc, kind, idx, a, b))

    def _process(self, node: SimNode, out: Output) -> None:
        if out.events and self.record:
            now = self.now
            nid = node.node_id
            for e in out.events:
                self.log.append((now, nid, e.kind.value, e.node, e.incarnation))
        if out.packets and not node.crashed:
            for dest, msg in out.packets:
                self._transmit(node, dest, msg)
        self._schedule_tick(node)

    def _transmit(self, src: SimNode, dest: str, msg: Message) -> None:
        st = self.stats
        st.sent += 1
        dst = self._by_addr.get(dest)
        if dst is None or dst.group != src.group:
            st.dropped += 1
            return
        payload: object = msg
        if self.wire:
            data = encode(msg)
            st.bytes += len(data)
            payload = data
        rng = self._rng
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            st.duplicated += 1
        lo, hi = self.latency
        for _ in range(copies):
            if self.loss and rng.random() < self.loss:
                st.dropped += 1
                continue
            delay = rng.uniform(lo, hi)
            if self.reorder and rng.random() < self.reorder:
                delay += rng.uniform(0, self.reorder_delay)
            self._push(self.now + delay, _DELIVER, dst.index, src.addr, payload)

    def _schedule_tick(self, node: SimNode) -> None:
        if node.crashed:
            return
        nd = node.swim.next_deadline()
        if nd is None:
            return
        if nd < self.now:
            nd = self.now
        if node.tick_at is None or nd < node.tick_at:
            node.tick_gen += 1
            node.tick_at = nd
            self._push(nd, _TICK, node.index, node.tick_gen, None)
