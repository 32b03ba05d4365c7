"""The SWIM + Lifeguard membership state machine, with no I/O.

A :class:`Swim` instance is driven entirely by its caller (the I/O shell or
the simulator):

* ``on_packet(src, msg, now)`` / ``on_datagram(src, data, now)`` for every
  received packet,
* ``on_tick(now)`` whenever ``now >= next_deadline()`` (calling it more often
  is harmless),
* ``join(seeds, now)``, ``leave(now)``, ``update_meta(now)`` on application
  request.

Each returns an :class:`Output`: packets to send as ``(dest_addr, message)``
(encode with :func:`~meshcompute.gossip.messages.encode`) and membership
events.  ``now`` is float **seconds** on any monotonic clock; the instance never
reads a clock, never sleeps, never opens sockets and takes every random
decision from the injected ``random.Random``, so a given seed and input
sequence always produce the same outputs.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .awareness import Awareness
from .broadcast import BroadcastQueue
from .config import GossipConfig
from .member import EventKind, Member, MemberEvent, MemberInfo, MemberState
from .messages import (
    COMPOUND_OVERHEAD,
    Ack,
    Alive,
    Compound,
    Dead,
    Leave,
    MalformedPacket,
    Message,
    Meta,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    decode,
    part_size,
)
from .suspicion import Suspicion, suspicion_timeout

__all__ = [
    "Swim",
    "Output",
    "SwimStats",
    "MetaDelegate",
    "NullMetaDelegate",
    "MemoryMetaDelegate",
    "MetaTooLarge",
]

ALIVE = MemberState.ALIVE
SUSPECT = MemberState.SUSPECT
DEAD = MemberState.DEAD
LEFT = MemberState.LEFT

# timer kinds
_T_PROBE = 0
_T_PROBE_TIMEOUT = 1
_T_PROBE_END = 2
_T_RELAY = 3
_T_GOSSIP = 4
_T_PUSH_PULL = 5
_T_RECONNECT = 6
_T_SUSPICION = 7
_T_REAP = 8
_T_JOIN = 9

_EPS = 1e-9


class MetaTooLarge(ValueError):
    """The local meta blob exceeds ``GossipConfig.meta_max_bytes``."""


class MetaDelegate(Protocol):
    """Narrow application-state interface (memberlist's Delegate, meta part).

    ``local_meta`` returns this node's current resource view as an opaque blob
    (at most ``meta_max_bytes``).  ``merge_remote_meta`` is called once for
    every strictly newer version of another node's blob that this node accepts.
    Both are called synchronously from inside Swim methods and must not block.
    """

    def local_meta(self) -> bytes: ...

    def merge_remote_meta(self, node: str, version: int, blob: bytes) -> None: ...


class NullMetaDelegate:
    """No application state."""

    def local_meta(self) -> bytes:
        return b""

    def merge_remote_meta(self, node: str, version: int, blob: bytes) -> None:
        return None


class MemoryMetaDelegate:
    """Keeps the local blob in ``local`` and the newest remote blobs in ``remote``."""

    def __init__(self, local: bytes = b"") -> None:
        self.local = local
        self.remote: dict[str, tuple[int, bytes]] = {}

    def local_meta(self) -> bytes:
        return self.local

    def merge_remote_meta(self, node: str, version: int, blob: bytes) -> None:
        self.remote[node] = (version, blob)


@dataclass(slots=True)
class Output:
    """What one call into Swim wants done: packets to send and events to report."""

    packets: list[tuple[str, Message]] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.packets.extend(other.packets)
        self.events.extend(other.events)


@dataclass(slots=True)
class SwimStats:
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    refutes: int = 0
    suspicions: int = 0
    dead_downgraded: int = 0  # Dead rumours about members alive here, taken as suspicions
    push_pulls_received: int = 0
    malformed: int = 0
    meta_rejected: int = 0


class _Probe:
    __slots__ = (
        "seq",
        "target",
        "incarnation",
        "addr",
        "end",
        "indirect",
        "expected_nacks",
        "nacks",
        "acked",
    )

    def __init__(self, seq: int, target: str, incarnation: int, addr: str, end: float) -> None:
        self.seq = seq
        self.target = target
        self.incarnation = incarnation
        self.addr = addr
        self.end = end
        self.indirect = False
        self.expected_nacks = 0
        self.nacks = 0
        self.acked = False


class _Relay:
    __slots__ = ("origin_seq", "origin_addr", "nack", "nacked")

    def __init__(self, origin_seq: int, origin_addr: str, nack: bool) -> None:
        self.origin_seq = origin_seq
        self.origin_addr = origin_addr
        self.nack = nack
        self.nacked = False


class Swim:
    """One node's view of the cluster and its SWIM/Lifeguard protocol engine."""

    def __init__(
        self,
        node_id: str,
        addr: str,
        *,
        rng: random.Random,
        config: GossipConfig | None = None,
        delegate: MetaDelegate | None = None,
        now: float = 0.0,
        incarnation: int = 0,
        meta_version: int = 0,
    ) -> None:
        if not node_id or not addr:
            raise ValueError("node_id and addr must be non-empty")
        self.config = config if config is not None else GossipConfig()
        self.config.validate()
        self.node_id = node_id
        self.addr = addr
        self._rng = rng
        self._delegate: MetaDelegate = delegate if delegate is not None else NullMetaDelegate()
        self.stats = SwimStats()

        self._me = Member(node_id, addr, incarnation, ALIVE, now, meta_version, b"")
        self._members: dict[str, Member] = {node_id: self._me}
        self._member_list: list[str] = []  # other members, for O(1) random choice
        self._member_index: dict[str, int] = {}
        self._num_live = 1  # ALIVE or SUSPECT, self included
        self._dead: dict[str, None] = {}  # DEAD (not LEFT) members, insertion ordered
        self._probe_order: list[str] = []
        self._probe_pos = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._pending_meta: dict[str, tuple[int, bytes]] = {}
        self._broadcasts: BroadcastQueue[Message] = BroadcastQueue(
            self.config.retransmit_mult, lambda: self._num_live
        )
        self._awareness = Awareness(self.config.awareness_max_multiplier)
        self._left = False
        self._joining = False
        self._seeds: tuple[str, ...] = ()
        self._pp_gen = 0
        self._timers: list[tuple[float, int, int, object]] = []
        self._tc = 0

        blob = bytes(self._delegate.local_meta())
        if len(blob) > self.config.meta_max_bytes:
            raise MetaTooLarge(f"local meta is {len(blob)} B > {self.config.meta_max_bytes}")
        if blob:
            self._me.meta = blob
            self._me.meta_version = meta_version + 1

        cfg = self.config
        self._at(now + rng.uniform(0, cfg.probe_interval), _T_PROBE, None)
        self._at(now + rng.uniform(0, cfg.gossip_interval), _T_GOSSIP, None)
        self._at(now + rng.uniform(0, cfg.push_pull_interval), _T_PUSH_PULL, 0)
        self._at(now + rng.uniform(0, cfg.reconnect_interval), _T_RECONNECT, None)

    # ================================================================ public API
    def join(self, seeds: Iterable[str], now: float) -> Output:
        """Announce ourselves and push-pull with every seed address (may be empty).

        Re-sent every ``join_retry_interval`` while no other live member is known.
        """
        out = Output()
        self._seeds = tuple(s for s in seeds if s != self.addr)
        me = self._me
        self._broadcast(("m", me.node), Alive(me.node, me.addr, me.incarnation))
        if me.meta_version:
            self._broadcast(("r", me.node), Meta(me.node, me.meta_version, me.meta))
        if self._seeds:
            self._joining = True
            for s in self._seeds:
                self._send_push_pull(out, s, join=True, reply=False)
            self._at(now + self.config.join_retry_interval, _T_JOIN, None)
        return out

    def leave(self, now: float) -> Output:
        """Gracefully leave: bump incarnation, broadcast LEAVE, stop probing.

        Keep feeding ticks and packets until :meth:`leave_done` (or for a few
        gossip intervals) so the rumour spreads, then stop the node.
        """
        out = Output()
        if self._left:
            return out
        self._left = True
        self._probe = None
        me = self._me
        me.incarnation += 1
        self._set_state(me, LEFT, now)
        self._broadcast(("m", me.node), Leave(me.node, me.incarnation))
        for m in self._k_random(self.config.gossip_nodes, _is_live):
            self._gossip_to(out, m.addr)
        return out

    def leave_done(self) -> bool:
        """True once our LEAVE rumour used up its retransmissions."""
        return self._left and ("m", self.node_id) not in self._broadcasts

    def update_meta(self, now: float, blob: bytes | None = None) -> Output:
        """Re-read ``delegate.local_meta()`` (or use ``blob``); if changed, bump version and gossip it."""
        if blob is None:
            blob = self._delegate.local_meta()
        blob = bytes(blob)
        if len(blob) > self.config.meta_max_bytes:
            raise MetaTooLarge(f"local meta is {len(blob)} B > {self.config.meta_max_bytes}")
        me = self._me
        if me.meta_version and blob == me.meta:
            return Output()
        me.meta_version += 1
        me.meta = blob
        self._broadcast(("r", me.node), Meta(me.node, me.meta_version, blob))
        return Output()

    def on_datagram(self, src: str, data: bytes, now: float) -> Output:
        """Decode and handle raw bytes; malformed packets are counted and dropped."""
        try:
            msg = decode(data)
        except MalformedPacket:
            self.stats.malformed += 1
            return Output()
        return self.on_packet(src, msg, now)

    def on_packet(self, src: str, msg: Message, now: float) -> Output:
        """Handle one decoded packet. ``src`` is the transport source (informational):
        replies go to addresses carried inside the messages."""
        out = Output()
        if type(msg) is Compound:
            for part in msg.parts:
                self._handle(part, now, out)
        else:
            self._handle(msg, now, out)
        return out

    def on_tick(self, now: float) -> Output:
        """Run every timer due at or before ``now``."""
        out = Output()
        timers = self._timers
        while timers and timers[0][0] <= now + _EPS:
            when, _, kind, arg = heapq.heappop(timers)
            self._fire(kind, arg, when, now, out)
        return out

    def next_deadline(self) -> float | None:
        """Earliest time at which ``on_tick`` has work (None: nothing scheduled)."""
        return self._timers[0][0] if self._timers else None

    def preload(self, members: Iterable[MemberInfo], now: float) -> None:
        """Install known members silently (no events, no rumours).

        For simulations that start from a converged cluster and for restoring a
        snapshot; a live system normally learns members through :meth:`join`.
        """
        for info in members:
            if info.node == self.node_id or info.node in self._members:
                continue
            m = self._add_member(info.node, info.addr, info.incarnation, now, insert_probe=False)
            if info.state != ALIVE:
                self._set_state(m, info.state, info.state_change)
            m.meta_version, m.meta = info.meta_version, info.meta
        self._probe_order = []
        self._probe_pos = 0
        self._pp_gen += 1
        period = self.config.push_pull_period(self._num_live)
        self._at(now + self._rng.uniform(0, period), _T_PUSH_PULL, self._pp_gen)

    # ---------------------------------------------------------------- queries
    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard awareness score: 0 = healthy; timeouts scale by score+1."""
        return self._awareness.score

    @property
    def num_live(self) -> int:
        """Members believed ALIVE or SUSPECT, self included."""
        return self._num_live

    @property
    def left(self) -> bool:
        return self._left

    @property
    def joined(self) -> bool:
        """True once at least one other live member is known."""
        return self._num_live > 1

    @property
    def local_meta_version(self) -> int:
        return self._me.meta_version

    def state_of(self, node: str) -> MemberState | None:
        m = self._members.get(node)
        return None if m is None else m.state

    def meta_version_of(self, node: str) -> int:
        m = self._members.get(node)
        return 0 if m is None else m.meta_version

    def member(self, node: str) -> MemberInfo | None:
        m = self._members.get(node)
        return None if m is None else m.info()

    def members(self) -> list[MemberInfo]:
        """Every member record, self included (dead/left ones until reclaimed)."""
        return [m.info() for m in self._members.values()]

    def live_members(self) -> list[MemberInfo]:
        """Other members currently ALIVE or SUSPECT."""
        return [m.info() for m in self._members.values() if m.state <= SUSPECT and m is not self._me]

    def pending_broadcasts(self) -> int:
        return len(self._broadcasts)

    # ================================================================= internals
    def _at(self, when: float, kind: int, arg: object) -> None:
        self._tc += 1
        heapq.heappush(self._timers, (when, self._tc, kind, arg))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _event(self, out: Output, kind: EventKind, m: Member, now: float) -> None:
        out.events.append(MemberEvent(kind, m.node, m.addr, m.incarnation, now, m.meta_version))

    def _broadcast(self, key: tuple[str, str], msg: Message) -> None:
        self._broadcasts.enqueue(key, msg, part_size(msg))

    def _send(self, out: Output, dest: str, primary: Message, extra: tuple[Message, ...] = ()) -> None:
        """Send ``primary`` (+ ``extra``) with as many queued rumours as fit the budget."""
        parts: list[Message] = [primary, *extra]
        if self._broadcasts:
            used = COMPOUND_OVERHEAD + sum(part_size(p) for p in parts)
            parts.extend(self._broadcasts.take(self.config.packet_budget_bytes - used))
        out.packets.append((dest, primary if len(parts) == 1 else Compound(tuple(parts))))

    def _gossip_to(self, out: Output, dest: str) -> bool:
        parts = self._broadcasts.take(self.config.packet_budget_bytes - COMPOUND_OVERHEAD)
        if not parts:
            return False
        out.packets.append((dest, parts[0] if len(parts) == 1 else Compound(tuple(parts))))
        return True

    def _send_push_pull(self, out: Output, dest: str, join: bool, reply: bool) -> None:
        entries = tuple(
            PushPullEntry(m.node, m.addr, m.incarnation, m.state, m.meta_version, m.meta)
            for m in self._members.values()
        )
        out.packets.append((dest, PushPull(self.node_id, self.addr, join, reply, entries)))

    # ------------------------------------------------------------ member list
    def _add_member(self, node: str, addr: str, inc: int, now: float, insert_probe: bool = True) -> Member:
        m = Member(node, addr, inc, ALIVE, now)
        self._members[node] = m
        self._member_index[node] = len(self._member_list)
        self._member_list.append(node)
        self._num_live += 1
        if insert_probe:
            self._insert_probe(node)
        return m

    def _insert_probe(self, node: str) -> None:
        order = self._probe_order
        pos = self._rng.randint(self._probe_pos, len(order))
        order.insert(pos, node)

    def _remove_member(self, node: str) -> None:
        m = self._members.pop(node)
        idx = self._member_index.pop(node)
        last = self._member_list.pop()
        if last != node:
            self._member_list[idx] = last
            self._member_index[last] = idx
        if m.state <= SUSPECT:
            self._num_live -= 1
        self._dead.pop(node, None)

    def _set_state(self, m: Member, new: MemberState, now: float) -> None:
        old = m.state
        if old <= SUSPECT < new:
            self._num_live -= 1
        elif new <= SUSPECT < old:
            self._num_live += 1
        if old == DEAD:
            self._dead.pop(m.node, None)
        if new == DEAD:
            self._dead[m.node] = None
        m.state = new
        m.state_change = now
        if new != SUSPECT:
            m.suspicion = None

    def _k_random(self, k: int, pred: Callable[[Member], bool]) -> list[Member]:
        lst = self._member_list
        n = len(lst)
        picked: list[Member] = []
        if n == 0 or k <= 0:
            return picked
        members = self._members
        if n <= 64:
            # small cluster: exact sampling, so no eligible member is missed by bad luck
            eligible = [m for m in (members[x] for x in lst) if pred(m)]
            return self._rng.sample(eligible, min(k, len(eligible)))
        seen: set[str] = set()
        randrange = self._rng.randrange
        for _ in range(3 * n):
            if len(picked) >= k:
                break
            m = members[lst[randrange(n)]]
            if m.node in seen or not pred(m):
                continue
            seen.add(m.node)
            picked.append(m)
        return picked

    # ------------------------------------------------------------------ timers
    def _fire(self, kind: int, arg: object, when: float, now: float, out: Output) -> None:
        cfg = self.config
        if kind == _T_PROBE:
            if self._left:
                return
            self._start_probe(now, out)
            self._at(_next(when, now, self._awareness.scale(cfg.probe_interval)), _T_PROBE, None)
        elif kind == _T_PROBE_TIMEOUT:
            self._probe_timeout(arg, now, out)  # type: ignore[arg-type]
        elif kind == _T_PROBE_END:
            p = self._probe
            if p is not None and p.seq == arg:
                self._probe = None
                if not p.acked:
                    self._probe_failed(p, now, out)
        elif kind == _T_RELAY:
            r = self._relays.get(arg)  # type: ignore[arg-type]
            if r is None:
                return
            if not r.nacked:
                r.nacked = True
                if r.nack:
                    out.packets.append((r.origin_addr, Nack(r.origin_seq, self.node_id)))
                # keep the entry a while: a late ack is still worth forwarding
                self._at(now + cfg.probe_interval, _T_RELAY, arg)
            else:
                del self._relays[arg]  # type: ignore[arg-type]
        elif kind == _T_GOSSIP:
            if self._broadcasts:
                horizon = now - cfg.gossip_to_the_dead_time
                for m in self._k_random(
                    cfg.gossip_nodes,
                    lambda m: m.state <= SUSPECT or (m.state == DEAD and m.state_change >= horizon),
                ):
                    if not self._gossip_to(out, m.addr):
                        break
            self._at(_next(when, now, cfg.gossip_interval), _T_GOSSIP, None)
        elif kind == _T_PUSH_PULL:
            if arg != self._pp_gen:
                return
            if not self._left:
                picked = self._k_random(1, _is_alive)
                if picked:
                    self._send_push_pull(out, picked[0].addr, join=False, reply=False)
            self._at(_next(when, now, cfg.push_pull_period(self._num_live)), _T_PUSH_PULL, self._pp_gen)
        elif kind == _T_RECONNECT:
            if not self._left and self._dead:
                dead = list(self._dead)
                m = self._members[dead[self._rng.randrange(len(dead))]]
                self._send_push_pull(out, m.addr, join=False, reply=False)
            self._at(_next(when, now, cfg.reconnect_interval), _T_RECONNECT, None)
        elif kind == _T_SUSPICION:
            node, s = arg  # type: ignore[misc]
            m = self._members.get(node)
            if m is None or m.suspicion is not s or m.state != SUSPECT or now + _EPS < s.deadline:
                return
            self._dead_msg(node, m.incarnation, self.node_id, now, out)
        elif kind == _T_REAP:
            m = self._members.get(arg)  # type: ignore[arg-type]
            if (
                m is not None
                and m.state >= DEAD
                and now + _EPS >= m.state_change + cfg.dead_node_reclaim_time
            ):
                self._remove_member(m.node)
        elif kind == _T_JOIN:
            if self._left or not self._seeds or self.joined:
                self._joining = False
                return
            for s in self._seeds:
                self._send_push_pull(out, s, join=True, reply=False)
            self._at(now + cfg.join_retry_interval, _T_JOIN, None)

    # ------------------------------------------------------------------ probing
    def _next_probe_target(self) -> Member | None:
        members = self._members
        checked = 0
        limit = len(self._probe_order) + len(self._member_list) + 1
        while checked <= limit:
            if self._probe_pos >= len(self._probe_order):
                order = [n for n in self._member_list if members[n].state <= SUSPECT]
                self._rng.shuffle(order)
                self._probe_order = order
                self._probe_pos = 0
                if not order:
                    return None
            node = self._probe_order[self._probe_pos]
            self._probe_pos += 1
            checked += 1
            m = members.get(node)
            if m is not None and m.state <= SUSPECT:
                return m
        return None

    def _start_probe(self, now: float, out: Output) -> None:
        old = self._probe
        if old is not None:
            self._probe = None
            if not old.acked:
                self._probe_failed(old, now, out)
        m = self._next_probe_target()
        if m is None:
            return
        cfg = self.config
        seq = self._next_seq()
        interval = self._awareness.scale(cfg.probe_interval)
        timeout = self._awareness.scale(cfg.probe_timeout)
        self._probe = _Probe(seq, m.node, m.incarnation, m.addr, now + interval)
        self.stats.probes += 1
        # Lifeguard: a suspect hears about its suspicion in the probe itself
        extra = (Suspect(m.node, m.incarnation, self.node_id),) if m.state != ALIVE else ()
        self._send(out, m.addr, Ping(seq, m.node, self.node_id, self.addr), extra)
        self._at(now + timeout, _T_PROBE_TIMEOUT, seq)
        self._at(now + interval, _T_PROBE_END, seq)

    def _probe_timeout(self, seq: int, now: float, out: Output) -> None:
        p = self._probe
        if p is None or p.seq != seq or p.acked or p.indirect:
            return
        p.indirect = True
        target = p.target
        helpers = self._k_random(self.config.indirect_checks, lambda m: m.state == ALIVE and m.node != target)
        req = PingReq(seq, target, p.addr, self.node_id, self.addr, True)
        for h in helpers:
            self._send(out, h.addr, req)
        p.expected_nacks = len(helpers)
        self.stats.indirect_probes += 1

    def _probe_failed(self, p: _Probe, now: float, out: Output) -> None:
        self.stats.probe_failures += 1
        if p.expected_nacks > 0:
            delta = max(0, p.expected_nacks - p.nacks)
        else:
            delta = 1
        self._awareness.apply_delta(delta)
        m = self._members.get(p.target)
        if m is not None and m.state <= SUSPECT:
            self._suspect(p.target, p.incarnation, self.node_id, now, out)

    # ------------------------------------------------------------------ dispatch
    def _handle(self, msg: Message, now: float, out: Output) -> None:
        t = type(msg)
        if t is Ping:
            if msg.target and msg.target != self.node_id:
                return  # meant for a previous owner of this address
            self._send(out, msg.source_addr, Ack(msg.seq, self.node_id))
        elif t is Ack:
            p = self._probe
            if p is not None and msg.seq == p.seq and msg.source == p.target:
                if not p.acked:
                    p.acked = True
                    self._awareness.apply_delta(-1)
                return
            r = self._relays.pop(msg.seq, None)
            if r is not None:
                self._send(out, r.origin_addr, Ack(r.origin_seq, msg.source))
        elif t is Alive:
            self._alive(msg.node, msg.addr, msg.incarnation, now, out)
        elif t is Suspect:
            self._suspect(msg.node, msg.incarnation, msg.source, now, out)
        elif t is Dead:
            self._dead_msg(msg.node, msg.incarnation, msg.source, now, out)
        elif t is Leave:
            self._leave(msg.node, msg.incarnation, now, out)
        elif t is Meta:
            self._meta(msg.node, msg.version, msg.payload, now, out)
        elif t is Nack:
            p = self._probe
            if p is not None and msg.seq == p.seq and not p.acked:
                p.nacks += 1
        elif t is PingReq:
            seq = self._next_seq()
            self._relays[seq] = _Relay(msg.seq, msg.source_addr, msg.nack)
            self._send(out, msg.target_addr, Ping(seq, msg.target, self.node_id, self.addr))
            cfg = self.config
            # nack early enough to reach the origin inside its indirect window
            self._at(now + 0.8 * (cfg.probe_interval - cfg.probe_timeout), _T_RELAY, seq)
        elif t is PushPull:
            self.stats.push_pulls_received += 1
            if not msg.reply:
                self._send_push_pull(out, msg.source_addr, join=False, reply=True)
            # the seed's view is old news to the cluster: a joiner need not re-gossip it
            rebroadcast = not (msg.reply and self._joining)
            self._merge(msg, now, out, rebroadcast)
            if msg.reply:
                self._joining = False
        # Compound parts are flattened by on_packet; nested compounds cannot be decoded.

    def _merge(self, pp: PushPull, now: float, out: Output, rebroadcast: bool) -> None:
        for e in pp.entries:
            st = e.state
            if st == ALIVE:
                self._alive(e.node, e.addr, e.incarnation, now, out, rebroadcast)
            elif st == LEFT:
                self._leave(e.node, e.incarnation, now, out, rebroadcast)
            else:
                # a remote DEAD is only a suspicion here: the node may refute it
                self._suspect(e.node, e.incarnation, pp.source, now, out, rebroadcast)
            if e.meta_version:
                self._meta(e.node, e.meta_version, e.meta, now, out, rebroadcast)

    # --------------------------------------------------------- state machine
    def _refute(self, accused_inc: int, now: float, out: Output, accuser: str | None) -> None:
        me = self._me
        me.incarnation = max(me.incarnation, accused_inc) + 1
        self._awareness.apply_delta(1)
        self.stats.refutes += 1
        self._broadcast(("m", me.node), Alive(me.node, me.addr, me.incarnation))
        if accuser is not None and accuser != me.node:
            acc = self._members.get(accuser)
            if acc is not None and acc.state <= SUSPECT:
                self._gossip_to(out, acc.addr)  # our fresh ALIVE goes first

    def _alive(
        self, node: str, addr: str, inc: int, now: float, out: Output, rebroadcast: bool = True
    ) -> None:
        m = self._members.get(node)
        if m is not None and inc <= m.incarnation and m is not self._me:
            return  # fast path: old news
        if node == self.node_id:
            me = self._me
            if not self._left and (inc > me.incarnation or (inc == me.incarnation and addr != me.addr)):
                self._refute(inc, now, out, None)
            return
        if m is None:
            m = self._add_member(node, addr, inc, now)
            pending = self._pending_meta.pop(node, None)
            if pending is not None:
                m.meta_version, m.meta = pending
                self._delegate.merge_remote_meta(node, pending[0], pending[1])
            self._event(out, EventKind.JOINED, m, now)
            if rebroadcast:
                self._broadcast(("m", node), Alive(node, addr, inc))
                if pending is not None:
                    self._broadcast(("r", node), Meta(node, pending[0], pending[1]))
            if pending is not None:
                self._event(out, EventKind.META_UPDATED, m, now)
            return
        m.incarnation = inc
        old = m.state
        moved = addr != m.addr
        m.addr = addr
        if old != ALIVE:
            self._set_state(m, ALIVE, now)
            if old >= DEAD:
                self._insert_probe(node)
            self._event(out, EventKind.ALIVE, m, now)
        elif moved:
            self._event(out, EventKind.UPDATED, m, now)
        if rebroadcast:
            self._broadcast(("m", node), Alive(node, addr, inc))

    def _suspect(
        self, node: str, inc: int, source: str, now: float, out: Output, rebroadcast: bool = True
    ) -> None:
        m = self._members.get(node)
        if m is None or inc < m.incarnation:
            return
        if m is self._me:
            if not self._left:
                self._refute(inc, now, out, source)
            return
        state = m.state
        if state == SUSPECT:
            s = m.suspicion
            if s is not None and s.confirm(source):
                self._at(s.deadline, _T_SUSPICION, (node, s))
                if rebroadcast:
                    self._broadcast(("m", node), Suspect(node, inc, source))
            return
        if state != ALIVE:
            return
        cfg = self.config
        m.incarnation = inc
        self._set_state(m, SUSPECT, now)
        n = self._num_live
        k = cfg.suspicion_max_confirmations
        if n - 2 < k:
            k = 0
        lo = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        s = Suspicion(source, k, lo, lo * cfg.suspicion_max_timeout_mult, now)
        m.suspicion = s
        self._at(s.deadline, _T_SUSPICION, (node, s))
        self.stats.suspicions += 1
        self._event(out, EventKind.SUSPECT, m, now)
        if rebroadcast:
            self._broadcast(("m", node), Suspect(node, inc, source))
            if source == self.node_id:
                self._gossip_to(out, m.addr)  # tell the suspect at once so it can refute

    def _dead_msg(
        self, node: str, inc: int, source: str, now: float, out: Output, rebroadcast: bool = True
    ) -> None:
        m = self._members.get(node)
        if m is None or inc < m.incarnation or m.state >= DEAD:
            return
        if m is self._me:
            if not self._left:
                self._refute(inc, now, out, source)
            return
        if source != self.node_id:
            # Someone else's verdict about a member we hold alive or suspect: it may be
            # stale (a node cut off from it declared it dead, and the partition just
            # healed, and it keeps gossiping that verdict for a while). It only counts
            # as a suspicion (a confirmation of ours, if we suspect it already): the
            # member can refute it, and it dies here only when our own suspicion times
            # out. Otherwise each heal would kill healthy members.
            self.stats.dead_downgraded += 1
            self._suspect(node, inc, source, now, out, rebroadcast)
            return
        m.incarnation = inc
        self._set_state(m, DEAD, now)
        self._event(out, EventKind.DEAD, m, now)
        if rebroadcast:
            self._broadcast(("m", node), Dead(node, inc, source))
        self._at(now + self.config.dead_node_reclaim_time, _T_REAP, node)

    def _leave(self, node: str, inc: int, now: float, out: Output, rebroadcast: bool = True) -> None:
        m = self._members.get(node)
        if m is None or inc < m.incarnation or m.state == LEFT:
            return
        if m is self._me:
            if not self._left:
                self._refute(inc, now, out, None)
            return
        m.incarnation = inc
        self._set_state(m, LEFT, now)
        self._event(out, EventKind.LEFT, m, now)
        if rebroadcast:
            self._broadcast(("m", node), Leave(node, inc))
        self._at(now + self.config.dead_node_reclaim_time, _T_REAP, node)

    def _meta(
        self, node: str, version: int, payload: bytes, now: float, out: Output, rebroadcast: bool = True
    ) -> None:
        m = self._members.get(node)
        if m is not None and version <= m.meta_version and m is not self._me:
            return  # fast path: old news
        if len(payload) > self.config.meta_max_bytes:
            self.stats.meta_rejected += 1
            return
        if node == self.node_id:
            me = self._me
            if (
                not self._left
                and version >= me.meta_version
                and (version > me.meta_version or payload != me.meta)
            ):
                # a stale blob from an earlier life of this node id: supersede it
                me.meta_version = version + 1
                self._broadcast(("r", node), Meta(node, me.meta_version, me.meta))
            return
        if m is None:
            pending = self._pending_meta.get(node)
            if pending is None or version > pending[0]:
                self._pending_meta[node] = (version, payload)
                if len(self._pending_meta) > 2 * len(self._members) + 64:
                    del self._pending_meta[next(iter(self._pending_meta))]
            return
        m.meta_version = version
        m.meta = payload
        self._delegate.merge_remote_meta(node, version, payload)
        self._event(out, EventKind.META_UPDATED, m, now)
        if rebroadcast:
            self._broadcast(("r", node), Meta(node, version, payload))


def _is_live(m: Member) -> bool:
    return m.state <= SUSPECT


def _is_alive(m: Member) -> bool:
    return m.state == ALIVE


def _next(when: float, now: float, interval: float) -> float:
    """Next firing of a periodic timer: keep phase unless we fell a whole period behind."""
    nxt = when + interval
    return nxt if nxt > now else now + interval
