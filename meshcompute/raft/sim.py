"""Deterministic simulation of a Raft group, with invariant checkers.

:class:`SimNetwork` runs N :class:`~meshcompute.raft.core.Raft` nodes in one
process, in virtual ticks, over a simulated network that can drop, delay,
duplicate and reorder messages and be partitioned. Nodes can crash (losing
everything not persisted: the core, the state machine, pending reads) and
restart from their :class:`~meshcompute.raft.storage.MemoryStorage`, which plays
the disk. Clients run put/get/cas commands against a tiny KV state machine
(:class:`KVStateMachine`); gets use ReadIndex. Every random choice comes from
``random.Random(seed)``, so any seed replays exactly.

Invariants checked while the simulation runs (a violation raises
:class:`SafetyViolation` naming the invariant, the seed and the tick):

* Election Safety (§5.2): at most one leader per term.
* Log Matching (§5.3): two entries with the same index and term hold the same
  command and follow the same entry (checked on every entry any node persists).
* Leader Completeness (§5.4): a new leader holds every entry known committed.
* State Machine Safety (§5.4.3): no two nodes apply different entries at one
  index; snapshots equal the state obtained by applying the log.
* Commit durability: a node's committed prefix never changes, including
  across crashes (it restarts from its persisted state).
* ``applied <= committed <= last_index`` on every node after every Ready.

At the end of a randomized run (:meth:`SimNetwork.run_random`) faults stop,
partitions heal and crashed members restart; the group must converge (liveness
check), and the client history must be linearizable (checked with
:mod:`meshcompute.raft.linearizability`).

The class also has a manual mode (no random faults, messages held until
delivered explicitly) used by the scenario tests in tests/raft/testdata.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .core import Raft, Ready, StateType
from .errors import Compacted, InvalidConfChange, NotLeader, ProposalDropped, RaftError
from .linearizability import CheckResult, KVModel, Operation, check_operations
from .messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    decode_conf_entry,
)
from .storage import MemoryStorage

__all__ = [
    "SafetyViolation",
    "KVStateMachine",
    "SimNode",
    "SimNetwork",
    "SimStats",
    "encode_command",
    "decode_command",
]


class SafetyViolation(AssertionError):
    """A Raft safety invariant (or linearizability) was violated in a simulation."""


# ---------------------------------------------------------------------------
# KV state machine
# ---------------------------------------------------------------------------


def encode_command(op: tuple[str, str, Any], tag: str = "") -> bytes:
    """``("put", k, v)`` -> b"put k=v"; ``("get", k, None)`` -> b"get k";
    ``("cas", k, (old, new))`` -> b"cas k old new" (``_`` stands for absent).
    A client tag ("c3#17") is prefixed so the client can recognise its command."""
    kind, key, arg = op
    if kind == "put":
        body = f"put {key}={arg}"
    elif kind == "get":
        body = f"get {key}"
    elif kind == "cas":
        old, new = arg
        body = f"cas {key} {'_' if old is None else old} {new}"
    else:
        raise ValueError(f"unknown KV command {kind!r}")
    return (f"{tag} {body}" if tag else body).encode()


def decode_command(data: bytes) -> tuple[str, tuple[str, str, Any]]:
    """Inverse of encode_command: (tag, op)."""
    words = data.decode().split(" ")
    tag = ""
    if words and "#" in words[0]:
        tag, words = words[0], words[1:]
    kind = words[0]
    if kind == "put":
        key, _, val = words[1].partition("=")
        return tag, ("put", key, val)
    if kind == "get":
        return tag, ("get", words[1], None)
    if kind == "cas":
        old = None if words[2] == "_" else words[2]
        return tag, ("cas", words[1], (old, words[3]))
    raise ValueError(f"unknown KV command {data!r}")


class KVStateMachine:
    """A deterministic string->string map; entries that are not KV commands are no-ops."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, e: Entry) -> tuple[str, Any] | None:
        """Apply a committed entry; returns (client tag, output) for KV commands."""
        self.applied = e.index
        if e.type != EntryType.NORMAL or not e.data:
            return None
        try:
            tag, (kind, key, arg) = decode_command(e.data)
        except (ValueError, IndexError, UnicodeDecodeError):
            return None
        out: Any = None
        if kind == "put":
            self.data[key] = arg
        elif kind == "get":
            out = self.data.get(key)
        else:
            old, new = arg
            out = self.data.get(key) == old
            if out:
                self.data[key] = new
        return tag, out

    def snapshot(self) -> bytes:
        return json.dumps({"applied": self.applied, "data": self.data}, sort_keys=True).encode()

    def restore(self, blob: bytes, index: int) -> None:
        d = json.loads(blob) if blob else {"data": {}}
        self.data = dict(d["data"])
        self.applied = index

    def digest(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.data.items()))

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.data.items())) or "(empty)"


# ---------------------------------------------------------------------------
# nodes and clients
# ---------------------------------------------------------------------------


class SimNode:
    """A simulated server: a Raft core over a MemoryStorage "disk", plus a KV state machine."""

    def __init__(self, node_id: int, storage: MemoryStorage, config: Config, rng_seed: int) -> None:
        self.id = node_id
        self.storage = storage
        self.config = config
        self.rng_seed = rng_seed
        self.restarts = 0
        self.raft: Raft | None = None
        self.kv = KVStateMachine()
        # ReadIndex answers waiting for the state machine: ctx -> read index.
        self.pending_reads: dict[bytes, int] = {}
        # Highest commit index already checked for durability on this node.
        self.checked_commit = 0
        self.start()

    @property
    def alive(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        # Fresh volatile state; the application restores from its snapshot and the
        # core replays committed entries after it.
        snap = self.storage.snapshot()
        self.kv = KVStateMachine()
        if snap.index > 0:
            self.kv.restore(snap.data, snap.index)
        rng = random.Random(self.rng_seed * 1000 + self.restarts)
        self.raft = Raft(self.config, self.storage, rng)
        self.pending_reads = {}
        self.checked_commit = min(self.checked_commit, self.raft.log.committed)

    def crash(self) -> None:
        self.raft = None
        self.pending_reads = {}
        self.restarts += 1


@dataclass
class _PendingOp:
    seq: int
    node: int
    op: tuple[str, str, Any]
    call: int
    deadline: int
    is_read: bool


@dataclass
class SimClient:
    id: int
    seq: int = 0
    leader_hint: int = NONE
    pending: _PendingOp | None = None


@dataclass
class SimStats:
    ticks: int = 0
    messages_sent: int = 0
    messages_delivered: int = 0
    commits: int = 0
    elections: int = 0
    # Ticks from the loss of a leader (crash, isolation, or cluster start) to
    # the election of the next one.
    election_times: list[int] = field(default_factory=list)
    crashes: int = 0
    conf_changes: int = 0
    snapshots_sent: int = 0
    ops_completed: int = 0
    ops_unknown: int = 0
    linearizability: CheckResult | None = None


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------


@dataclass
class FaultProfile:
    """Probabilities per tick (or per message) of the random run's faults."""

    drop: float = 0.02  # per message
    duplicate: float = 0.01  # per message
    max_delay: int = 2  # ticks; each message is delayed uniformly in [0, max_delay]
    long_delay: float = 0.01  # per message: delayed up to 4*election_tick (reordering)
    crash: float = 0.006  # per tick: crash a random node
    crash_leader: float = 0.004  # per tick: crash the current leader
    restart: float = 0.05  # per tick: restart a random crashed node
    partition: float = 0.004  # per tick: start a random partition
    heal: float = 0.03  # per tick: heal all partitions
    compact_every: int = 25  # entries applied between snapshots taken by a node
    conf_change: float = 0.0  # per tick: propose a membership change
    transfer: float = 0.002  # per tick: ask the leader to transfer leadership
    client_rate: float = 0.5  # per tick per idle client: issue an operation
    # per Ready: crash after sending Ready.messages but before persisting
    # (legal: those messages may leave before the fsync); the after-persist
    # messages are lost with the process.
    crash_mid_ready: float = 0.002

    @classmethod
    def chaos(cls, rng: random.Random, election_tick: int = 10) -> FaultProfile:
        """A random mix of fault rates, from calm to hostile, so that different
        seeds stress different parts of the protocol. Ordinary delays stay well
        below the election timeout (§5.6 timing requirement) so that the group
        can make progress between faults; rare long delays reorder messages."""
        c = rng.choice
        return cls(
            drop=c((0.0, 0.01, 0.05, 0.15)),
            duplicate=c((0.0, 0.02, 0.1)),
            max_delay=c((0, 1, max(1, election_tick // 4))),
            long_delay=c((0.0, 0.01, 0.05)),
            crash=c((0.0, 0.005, 0.02)),
            crash_leader=c((0.0, 0.005, 0.02)),
            restart=c((0.03, 0.1, 0.5)),
            partition=c((0.0, 0.005, 0.02)),
            heal=c((0.02, 0.1)),
            compact_every=c((0, 5, 25)),
            conf_change=c((0.0, 0.0, 0.01, 0.05)),
            transfer=c((0.0, 0.005)),
            client_rate=c((0.2, 0.5)),
            crash_mid_ready=c((0.0, 0.002, 0.01, 0.03)),
        )


class SimNetwork:
    """N Raft nodes over a simulated network, driven in virtual ticks."""

    def __init__(
        self,
        seed: int = 0,
        *,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight_msgs: int = 256,
        max_size_per_msg: int = 1 << 20,
        logger: Callable[[str], None] | None = None,
        faults: FaultProfile | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_inflight_msgs = max_inflight_msgs
        self.max_size_per_msg = max_size_per_msg
        self.logger = logger
        self.faults = faults or FaultProfile()
        self.nodes: dict[int, SimNode] = {}
        self.now = 0
        # (deliver_at, seq, message)
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._blocked: set[tuple[int, int]] = set()
        # Manual mode: sent messages wait for deliver(); random mode: delivered on time.
        self.manual = True
        # Hooks for the scenario printer.
        self.on_ready: Callable[[int, Ready], None] | None = None
        self.on_drop: Callable[[Message, str], None] | None = None
        # --- checker state ---
        self._leader_of_term: dict[int, int] = {}
        self._entries_seen: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self._committed: dict[int, tuple[int, int, bytes]] = {}
        self._max_committed = 0
        self._digest_at: dict[int, tuple[tuple[str, str], ...]] = {}
        # --- clients / history ---
        self.clients: list[SimClient] = []
        self.history: list[Operation] = []
        self._event = 0
        self.stats = SimStats()
        self._leader_lost_at: int | None = 0
        self._last_leader_term = 0
        self._retired: dict[int, int] = {}

    # ------------------------------------------------------------------ setup
    def _config(self, node_id: int, **overrides: Any) -> Config:
        kw: dict[str, Any] = dict(
            id=node_id,
            election_tick=self.election_tick,
            heartbeat_tick=self.heartbeat_tick,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_inflight_msgs=self.max_inflight_msgs,
            max_size_per_msg=self.max_size_per_msg,
            logger=self.logger,
        )
        kw.update(overrides)
        return Config(**kw)

    def add_node(self, node_id: int, voters: tuple[int, ...] = (), learners: tuple[int, ...] = (), **cfg: Any) -> SimNode:
        """Add a node. With ``voters`` it is a founding member of that configuration;
        without, it starts empty and learns the configuration from the leader."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already exists")
        cs = ConfState(voters=frozenset(voters), learners=frozenset(learners)) if voters else None
        storage = MemoryStorage(cs)
        node = SimNode(node_id, storage, self._config(node_id, **cfg), self.rng.getrandbits(32))
        self.nodes[node_id] = node
        return node

    @classmethod
    def randomized(cls, seed: int, election_tick: int = 10) -> SimNetwork:
        """A network whose size, options and fault profile are all drawn from ``seed``."""
        prng = random.Random(f"raft-sim-profile-{seed}")
        c = prng.choice
        return cls.with_nodes(
            c((3, 3, 4, 5)),
            seed=seed,
            election_tick=election_tick,
            heartbeat_tick=1,
            pre_vote=prng.random() < 0.8,
            check_quorum=prng.random() < 0.8,
            max_inflight_msgs=c((1, 2, 4, 256)),
            # 60 bytes: one KV command per MsgApp; 1 MiB: everything at once.
            max_size_per_msg=c((60, 200, 1 << 20)),
            faults=FaultProfile.chaos(prng, election_tick),
        )

    @classmethod
    def with_nodes(cls, n: int, seed: int = 0, **kw: Any) -> SimNetwork:
        net = cls(seed, **kw)
        ids = tuple(range(1, n + 1))
        for i in ids:
            net.add_node(i, voters=ids)
        return net

    # ------------------------------------------------------------------ network
    def partition(self, a: int, b: int) -> None:
        """Cut the link between a and b (both directions)."""
        self._blocked.add((a, b))
        self._blocked.add((b, a))

    def isolate(self, n: int) -> None:
        for other in self.nodes:
            if other != n:
                self.partition(n, other)

    def heal(self) -> None:
        self._blocked.clear()

    def connected(self, a: int, b: int) -> bool:
        return (a, b) not in self._blocked

    def send(self, m: Message) -> None:
        self.stats.messages_sent += 1
        if (m.frm, m.to) in self._blocked:
            self._drop(m, "partitioned")
            return
        delay = 0
        if not self.manual:
            f, rng = self.faults, self.rng
            if rng.random() < f.drop:
                self._drop(m, "random drop")
                return
            delay = int(rng.random() * (f.max_delay + 1))
            r = rng.random()
            if r < f.long_delay:
                # Far out of order: overtaken by many later messages.
                delay = 1 + int(rng.random() * 4 * self.election_tick)
            elif r < f.long_delay + f.duplicate:
                self._enqueue(self.now + int(rng.random() * (f.max_delay + 2)), m)
        self._enqueue(self.now + delay, m)

    def _enqueue(self, at: int, m: Message) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, m))

    def _drop(self, m: Message, why: str) -> None:
        if self.on_drop is not None:
            self.on_drop(m, why)
        if m.type == MessageType.SNAP:
            sender = self.nodes.get(m.frm)
            if sender is not None and sender.raft is not None:
                sender.raft.report_snapshot(m.to, ok=False)

    def pending_messages(self, to: set[int] | None = None) -> list[Message]:
        return [m for _, _, m in sorted(self._queue) if to is None or m.to in to]

    def take_messages(self, to: set[int] | None = None) -> list[Message]:
        """Remove and return queued messages (for the given recipients), oldest first."""
        items = sorted(self._queue)
        taken = [it for it in items if to is None or it[2].to in to]
        kept = [it for it in items if not (to is None or it[2].to in to)]
        self._queue = kept
        heapq.heapify(self._queue)
        return [m for _, _, m in taken]

    def deliver(self, m: Message) -> bool:
        """Step ``m`` into its recipient unless the link is cut or the node is down."""
        dst = self.nodes.get(m.to)
        if dst is None or dst.raft is None:
            self._drop(m, "recipient down")
            return False
        if not self.connected(m.frm, m.to):
            self._drop(m, "partitioned")
            return False
        self.stats.messages_delivered += 1
        dst.raft.step(m)
        if m.type == MessageType.SNAP:
            self.stats.snapshots_sent += 1
            sender = self.nodes.get(m.frm)
            if sender is not None and sender.raft is not None:
                sender.raft.report_snapshot(m.to, ok=True)
        return True

    # ------------------------------------------------------------------ nodes
    def crash(self, n: int) -> None:
        node = self.nodes[n]
        if node.raft is None:
            return
        if node.raft.role == StateType.LEADER:
            self._note_leader_loss(n)
        node.crash()
        self.stats.crashes += 1
        # A client waiting on this node will time out.

    def restart(self, n: int) -> None:
        node = self.nodes[n]
        if node.raft is not None:
            return
        node.start()
        self._check_restart(node)

    def _note_leader_loss(self, n: int) -> None:
        node = self.nodes.get(n)
        if node is not None and node.raft is not None and node.raft.role == StateType.LEADER:
            if self._leader_lost_at is None:
                self._leader_lost_at = self.now
                self._last_leader_term = node.raft.term

    def leader(self) -> int:
        """The live leader with the highest term, or NONE."""
        best, best_term = NONE, -1
        for n in self.nodes.values():
            r = n.raft
            if r is not None and r.role == StateType.LEADER and r.term > best_term:
                best, best_term = n.id, r.term
        return best

    # ------------------------------------------------------------------ Ready
    def process_ready(self, n: int) -> Ready | None:
        """Handle one Ready of node n as a real server would: persist, send, apply, advance."""
        node = self.nodes[n]
        r = node.raft
        if r is None or not r.has_ready():
            return None
        rd = r.ready()
        if self.on_ready is not None:
            self.on_ready(n, rd)
        # Crashes are most interesting right before a term/vote or new entries
        # reach the disk, so those Readies are 20 times likelier to be hit.
        p = self.faults.crash_mid_ready * (20 if rd.must_sync else 1)
        if not self.manual and p and self.rng.random() < p:
            for m in rd.messages:
                self.send(m)
            self.crash(n)
            return rd
        # 1. persist (the MemoryStorage is this node's disk)
        node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        if rd.entries:
            self._check_persisted_entries(node, rd.entries)
        if rd.snapshot is not None:
            self._check_snapshot(node, rd.snapshot.index, rd.snapshot.term, rd.snapshot.data)
            node.kv.restore(rd.snapshot.data, rd.snapshot.index)
        # 2. send (after-persist messages are legal now)
        send = self.send
        for m in rd.messages:
            send(m)
        for m in rd.messages_after_persist:
            send(m)
        # 3. apply
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            node.pending_reads[rs.request_ctx] = rs.index
        r.advance()
        if node.pending_reads:
            self._serve_reads(node)
        if rd.committed_entries:
            self._maybe_compact(node)
        if rd.hard_state is not None or rd.soft_state is not None:
            self._check_node(node, rd)
        return rd

    def process_all_ready(self) -> bool:
        any_ready = False
        for n in list(self.nodes):
            while self.process_ready(n) is not None:
                any_ready = True
        return any_ready

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Manual mode: process Readies and deliver messages until nothing is left."""
        for _ in range(max_rounds):
            progressed = self.process_all_ready()
            msgs = self.take_messages()
            for m in msgs:
                self.deliver(m)
            if not progressed and not msgs:
                return
        raise RuntimeError("stabilize did not converge")

    # ------------------------------------------------------------------ apply / clients
    def _apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.kv.applied + 1:
            self._violation(f"node {node.id} applies entry {e.index} after {node.kv.applied}")
        res = node.kv.apply(e)
        # State Machine Safety (§5.4.3): everyone applies the same entry at an index.
        got = self._committed.get(e.index)
        if got is None:
            self._committed[e.index] = (e.term, e.type, e.data)
            if e.type == EntryType.NORMAL and e.data:
                self.stats.commits += 1
            elif e.type == EntryType.CONF_CHANGE:
                cc, _ = decode_conf_entry(e.data)
                if cc.type == ConfChangeType.REMOVE_NODE:
                    # Removed for good: like an operator would, stop sending it
                    # clients and stop restarting it.
                    self._retired.setdefault(cc.node_id, self.now)
        elif got != (e.term, e.type, e.data):
            self._violation(
                f"State Machine Safety: node {node.id} applied {e.describe()} at index {e.index}, "
                f"another node applied term {got[0]} {got[2]!r}"
            )
        d = node.kv.digest()
        prev = self._digest_at.setdefault(e.index, d)
        if prev != d:
            self._violation(f"node {node.id} state after applying {e.index} differs from another node's")
        if res is None:
            return
        tag, out = res
        if not tag:
            return
        cid_s, _, seq_s = tag[1:].partition("#")
        cid, seq = int(cid_s), int(seq_s)
        if cid >= len(self.clients):
            return
        c = self.clients[cid]
        p = c.pending
        if p is not None and not p.is_read and p.seq == seq and p.node == node.id:
            self._complete(c, out)

    def _serve_reads(self, node: SimNode) -> None:
        if not node.pending_reads:
            return
        done = [ctx for ctx, idx in node.pending_reads.items() if idx <= node.kv.applied]
        for ctx in done:
            del node.pending_reads[ctx]
            cid_s, _, seq_s = ctx.decode(errors="replace")[1:].partition("#")
            if not (cid_s.isdigit() and seq_s.isdigit() and int(cid_s) < len(self.clients)):
                continue  # not one of our clients' requests (e.g. a scenario's)
            c = self.clients[int(cid_s)]
            p = c.pending
            if p is not None and p.is_read and p.seq == int(seq_s) and p.node == node.id:
                self._complete(c, node.kv.data.get(p.op[1]))

    def _tick_event(self) -> int:
        self._event += 1
        return self._event

    def _complete(self, c: SimClient, out: Any) -> None:
        p = c.pending
        assert p is not None
        self.history.append(Operation(c.id, p.op, p.call, out, self._tick_event()))
        self.stats.ops_completed += 1
        c.leader_hint = p.node
        c.pending = None

    def _client_step(self, c: SimClient) -> None:
        p = c.pending
        if p is not None:
            if self.now < p.deadline:
                return
            # Timed out: a write may or may not have happened; a read had no effect.
            if not p.is_read:
                self.history.append(Operation(c.id, p.op, p.call))
                self.stats.ops_unknown += 1
            c.pending = None
            c.leader_hint = NONE
        if self.rng.random() >= self.faults.client_rate:
            return
        members = [n for n in self.nodes.values() if n.alive and n.id not in self._retired]
        if not members:
            return
        target = self.nodes.get(c.leader_hint)
        if target is None or not target.alive or self.rng.random() < 0.1:
            target = self.rng.choice(members)
        key = self.rng.choice(("x", "y"))
        r = self.rng.random()
        c.seq += 1
        tag = f"c{c.id}#{c.seq}"
        raft = target.raft
        assert raft is not None
        if r < 0.4:
            op: tuple[str, str, Any] = ("get", key, None)
            call = self._tick_event()
            try:
                raft.read_index(tag.encode())
            except NotLeader as e:
                c.leader_hint = e.leader_hint
                return
            c.pending = _PendingOp(c.seq, target.id, op, call, self.now + 4 * self.election_tick, True)
            return
        if r < 0.75:
            op = ("put", key, f"{c.id}.{c.seq}")
        else:
            old = target.kv.data.get(key) if self.rng.random() < 0.7 else f"{c.id}.{c.seq - 1}"
            op = ("cas", key, (old, f"{c.id}.{c.seq}"))
        call = self._tick_event()
        try:
            raft.propose(encode_command(op, tag))
        except (NotLeader, ProposalDropped) as e:
            # Definitely not executed: not part of the history.
            c.leader_hint = e.leader_hint if isinstance(e, NotLeader) else NONE
            return
        c.pending = _PendingOp(c.seq, target.id, op, call, self.now + 4 * self.election_tick, False)

    def _maybe_compact(self, node: SimNode) -> None:
        every = self.faults.compact_every
        r = node.raft
        if not every or r is None:
            return
        applied = node.kv.applied
        if applied - (node.storage.first_index() - 1) >= every and applied <= node.storage.last_index():
            r.compact(applied, node.kv.snapshot())
            self._digest_at.setdefault(applied, node.kv.digest())

    # ------------------------------------------------------------------ checkers
    def _violation(self, what: str) -> None:
        raise SafetyViolation(f"seed {self.seed}, tick {self.now}: {what}")

    def _check_persisted_entries(self, node: SimNode, ents: list[Entry]) -> None:
        # Log Matching (§5.3): "if two entries in different logs have the same
        # index and term, then they store the same command" and "the logs are
        # identical in all preceding entries" -- the latter follows inductively
        # from every (index, term) having a single predecessor term.
        st = node.storage
        for e in ents:
            try:
                prev_term = st.term(e.index - 1)
            except Compacted:
                continue
            key = (e.index, e.term)
            val = (int(e.type), e.data, prev_term)
            seen = self._entries_seen.setdefault(key, val)
            if seen != val:
                self._violation(
                    f"Log Matching: node {node.id} holds {e.describe()} after term {prev_term}, "
                    f"another node holds {e.term}/{e.index} {seen[1]!r} after term {seen[2]}"
                )

    def _check_snapshot(self, node: SimNode, index: int, term: int, data: bytes) -> None:
        got = self._committed.get(index)
        if got is not None and got[0] != term:
            self._violation(f"node {node.id} installs a snapshot at {term}/{index}, committed term is {got[0]}")
        kv = KVStateMachine()
        kv.restore(data, index)
        d = self._digest_at.get(index)
        if d is not None and d != kv.digest():
            self._violation(f"node {node.id} installs a snapshot at {index} that differs from the applied state")

    def _check_node(self, node: SimNode, rd: Ready) -> None:
        r = node.raft
        if r is None:
            return
        lg = r.log
        if not (lg.applied <= lg.committed <= lg.last_index()):
            self._violation(
                f"node {node.id}: applied {lg.applied} <= committed {lg.committed} <= last {lg.last_index()} broken"
            )
        if rd.soft_state is not None and rd.soft_state.role == StateType.LEADER:
            self._on_new_leader(node)
        # Commit durability: our committed prefix must equal the global one.
        c = lg.committed
        if c > node.checked_commit:
            first = lg.first_index()
            for i in range(max(node.checked_commit + 1, first), c + 1):
                t = lg.term(i)
                got = self._committed.get(i)
                if got is not None and got[0] != t:
                    self._violation(f"node {node.id} committed term {t} at {i}, another node committed term {got[0]}")
            node.checked_commit = c
            self._max_committed = max(self._max_committed, c)

    def _on_new_leader(self, node: SimNode) -> None:
        r = node.raft
        assert r is not None
        # Election Safety (§5.2).
        prev = self._leader_of_term.setdefault(r.term, node.id)
        if prev != node.id:
            self._violation(f"Election Safety: nodes {prev} and {node.id} are both leaders of term {r.term}")
        self.stats.elections += 1
        if self._leader_lost_at is not None and r.term > self._last_leader_term:
            self.stats.election_times.append(self.now - self._leader_lost_at)
            self._leader_lost_at = None
        self._last_leader_term = max(self._last_leader_term, r.term)
        # Leader Completeness (§5.4): the new leader holds every committed entry.
        lg = r.log
        for i, (t, _, _) in self._committed.items():
            if i < lg.first_index():
                if i == lg.first_index() - 1 and lg.term(i) != t:
                    self._violation(f"Leader Completeness: leader {node.id} snapshot at {i} has the wrong term")
                continue
            if i > lg.last_index() or lg.term(i) != t:
                self._violation(
                    f"Leader Completeness: leader {node.id} of term {r.term} lacks committed entry {t}/{i}"
                )

    def _check_restart(self, node: SimNode) -> None:
        # Everything this node had committed is still in its persisted log or snapshot.
        r = node.raft
        assert r is not None
        lg = r.log
        for i in range(lg.first_index(), lg.committed + 1):
            got = self._committed.get(i)
            if got is not None and got[0] != lg.term(i):
                self._violation(f"node {node.id} restarted with a different committed entry at {i}")

    def check_linearizability(self) -> CheckResult:
        res = check_operations(KVModel(), self.history)
        self.stats.linearizability = res
        if res.ok is False:
            self._violation(res.describe())
        return res

    # ------------------------------------------------------------------ random runs
    def tick(self) -> None:
        """One virtual tick in random mode: faults, clients, node ticks, deliveries."""
        self.now += 1
        self.stats.ticks += 1
        for n in self.nodes.values():
            if n.raft is not None:
                n.raft.tick()
        for c in self.clients:
            self._client_step(c)
        self._deliver_due()

    def _deliver_due(self) -> None:
        # Deliver everything due, in rounds: each round delivers every due message,
        # then lets every node handle its Ready (which may send zero-delay
        # messages, delivered in the next round of the same tick).
        rounds = 0
        q = self._queue
        while True:
            self.process_all_ready()
            if not q or q[0][0] > self.now:
                return
            rounds += 1
            if rounds > 10_000:
                raise RuntimeError("message storm: delivery did not quiesce within a tick")
            while q and q[0][0] <= self.now:
                self.deliver(heapq.heappop(q)[2])

    def _random_faults(self) -> None:
        f, rng = self.faults, self.rng
        alive = [n for n in self.nodes.values() if n.alive]
        down = [n for n in self.nodes.values() if not n.alive and n.id not in self._retired]
        if rng.random() < f.crash and len(alive) > 1:
            self.crash(rng.choice(alive).id)
        if rng.random() < f.crash_leader:
            ld = self.leader()
            if ld:
                self.crash(ld)
        if down and rng.random() < f.restart:
            self.restart(rng.choice(down).id)
        if rng.random() < f.partition:
            ids = sorted(self.nodes)
            if rng.random() < 0.5:
                self.isolate(rng.choice(ids))
            else:
                rng.shuffle(ids)
                k = rng.randint(1, len(ids) - 1)
                ld = self.leader()
                for a in ids[:k]:
                    for b in ids[k:]:
                        self.partition(a, b)
        if self._blocked and rng.random() < f.heal:
            self.heal()
        if rng.random() < f.transfer:
            ld = self.leader()
            r = self.nodes[ld].raft if ld else None
            if r is not None:
                voters = sorted(v for v in r.trk.voters if v != ld)
                if voters:
                    try:
                        r.transfer_leadership(rng.choice(voters))
                    except RaftError:
                        pass
        if f.conf_change and rng.random() < f.conf_change:
            self._random_conf_change()

    def _random_conf_change(self) -> None:
        ld = self.leader()
        r = self.nodes[ld].raft if ld else None
        if r is None:
            return
        cs = r.conf_state
        rng = self.rng
        choice = rng.random()
        try:
            if cs.learners and choice < 0.5:
                cc = ConfChange(ConfChangeType.ADD_NODE, rng.choice(sorted(cs.learners)))
            elif len(cs.voters) + len(cs.learners) < 5 and choice < 0.8:
                new_id = max(self.nodes) + 1
                cc = ConfChange(ConfChangeType.ADD_LEARNER, new_id)
                r.propose_conf_change(cc)
                self.add_node(new_id)
                self.stats.conf_changes += 1
                return
            elif len(cs.voters) > 3:
                cc = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(sorted(cs.voters)))
            else:
                return
            r.propose_conf_change(cc)
            self.stats.conf_changes += 1
        except (ProposalDropped, InvalidConfChange):
            pass

    def run_random(self, ticks: int, clients: int = 3, settle_ticks: int = 300) -> SimStats:
        """A randomized run: ``ticks`` of faults and client load, then a settle phase.

        Raises SafetyViolation on any invariant violation, on a non-linearizable
        client history, or if the healed group fails to converge.
        """
        self.manual = False
        self.clients = [SimClient(i) for i in range(clients)]
        for _ in range(ticks):
            self._random_faults()
            self.tick()
        self._settle(settle_ticks)
        self.check_linearizability()
        return self.stats

    def _settle(self, settle_ticks: int) -> None:
        # Faults and new client operations stop, partitions heal, crashed members
        # restart: the group must elect a leader and bring every member up to
        # date within settle_ticks (a liveness check), while operations still in
        # flight complete or time out.
        self.faults = FaultProfile(
            drop=0.0, duplicate=0.0, max_delay=self.faults.max_delay, long_delay=0.0, crash=0.0,
            crash_leader=0.0, restart=0.0, partition=0.0, heal=0.0, compact_every=self.faults.compact_every,
            conf_change=0.0, transfer=0.0, client_rate=0.0, crash_mid_ready=0.0,
        )
        self.heal()
        for n in self.nodes.values():
            if n.id in self._retired:
                # Removed servers are shut down: without check-quorum nothing stops
                # one that missed its removal from disrupting elections (§4.2.3).
                self.crash(n.id)
            elif not n.alive:
                self.restart(n.id)
        for _ in range(settle_ticks):
            self.tick()
            if self._converged() and all(c.pending is None for c in self.clients):
                break
        else:
            ld = self.leader()
            states = "; ".join(
                n.raft.status().describe() if n.raft is not None else f"{n.id}: down" for n in self.nodes.values()
            )
            self._violation(f"liveness: group did not converge after healing (leader {ld}): {states}")

    def _converged(self) -> bool:
        ld = self.leader()
        if not ld:
            return False
        lr = self.nodes[ld].raft
        assert lr is not None
        if lr.log.term_or_zero(lr.log.committed) != lr.term:
            return False
        members = lr.conf_state.voters | lr.conf_state.learners
        for nid in members:
            n = self.nodes.get(nid)
            if n is None or n.raft is None or n.raft.log.applied < lr.log.committed:
                return False
        return True
