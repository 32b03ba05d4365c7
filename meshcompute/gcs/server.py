"""One node's share of the control store: a Raft member plus request routing.

:class:`GcsServer` wraps the pure Raft core (meshcompute.raft) and the state
machine (state.py) for a daemon. It owns no socket, thread or clock: the
daemon calls :meth:`tick` with the time, hands it the Raft messages and
forwarded requests that arrive, and gives it two callbacks to send with. So
the same class runs under a simulated network in tests.

Requests. Every read or write a process asks of the control store becomes a
:class:`Request` on the daemon of its node:

* on the leader, a write is proposed and answered when its entry is applied;
  a read takes a ReadIndex round (Raft thesis §6.4) and is answered from the
  local state once it has applied that index -- linearizable without trusting
  clocks (docs/gcs.md says why not a lease);
* elsewhere it is forwarded to the leader and answered with the leader's
  answer; a forward is resent when a second passes without one, or when the
  leader changes, with the same uid, so the state machine applies it once;
* while no leader is known the request waits; past its deadline it fails with
  an "unavailable" answer that says for how long there has been no quorum.

Durability: ``storage.save`` fsyncs before the Ready's after-persist messages
(votes, append acks) go out, so nothing is acknowledged that a crash could
lose.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..raft import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    EntryType,
    FileStorage,
    Message,
    Raft,
    RaftError,
    StateType,
)
from .placement import place_bundles
from .state import READS, WRITES, GcsState, decode_command, encode_command
from .voters import MemberView, plan

__all__ = ["GcsServer", "Request", "NodeView", "raft_id_of", "TICK_S"]

log = logging.getLogger("meshcompute.gcs")

# seconds. One Raft tick. With ELECTION_TICKS a follower campaigns 0.6-1.2 s
# after it last heard from the leader: a SIGKILLed leader is replaced in ~1 s,
# while a daemon loop that stalls for a few hundred ms (fsync, a busy machine)
# does not start an election.
TICK_S = 0.05
ELECTION_TICKS = 12
# ticks. Heartbeats every 100 ms; also the ReadIndex confirmation round.
HEARTBEAT_TICKS = 2
# seconds. A forwarded request without an answer for this long is sent again.
RETRY_S = 1.0
# seconds. How often the leader revisits membership, dead nodes and pending
# placement groups.
LEADER_WORK_S = 0.25
# seconds. A placement proposal not seen committed by then is proposed again.
PLACE_RETRY_S = 1.0
# entries. Compact the log into a snapshot after this many applied entries.
SNAPSHOT_EVERY = 5000


def raft_id_of(node_id: str) -> int:
    """A node's Raft id: its random hex id as a positive 60-bit integer."""
    try:
        return int(node_id[:15], 16) or 1
    except ValueError:
        return (hash(node_id) & ((1 << 60) - 1)) or 1


@dataclass
class Request:
    uid: bytes
    op: tuple
    done: Callable[[str, Any], None]  # (status, value): ok | error | unavailable | redirect
    deadline: float
    forwarded_in: bool = False  # came from another daemon: answer, never forward again
    sent_to: int = NONE  # leader we forwarded to
    sent_at: float = 0.0
    proposed_term: int = 0  # term in which we proposed / read-indexed it as leader

    @property
    def is_read(self) -> bool:
        return self.op[0] in READS


@dataclass(frozen=True)
class NodeView:
    """What the daemon's gossip says about one node, for the leader's duties."""

    node_id: str
    alive: bool
    gone_for: float  # seconds since declared dead/left (0 while alive)
    left: bool
    free: dict  # free resources as gossiped


class GcsServer:
    def __init__(self, node_id: str, directory: str, *, bootstrap: dict | None,
                 send_raft: Callable[[int, Message], None],
                 send_forward: Callable[[int, bytes, tuple], None],
                 on_applied: Callable[[tuple, Any], None] | None = None,
                 seed: int | None = None) -> None:
        """``bootstrap``: the mesh's first node passes its config ({"voters": 3}) and
        starts as the only voter; joining nodes pass None and wait to be added."""
        self.node_id = node_id
        self.raft_id = raft_id_of(node_id)
        fresh = not FileStorage.exists(directory)
        conf = ConfState(voters={self.raft_id}) if (bootstrap is not None and fresh) else None
        self.storage = FileStorage(directory, conf)
        snap = self.storage.snapshot()
        self.state = GcsState.restore(snap.data) if not snap.is_empty() else GcsState()
        cfg = Config(id=self.raft_id, election_tick=ELECTION_TICKS, heartbeat_tick=HEARTBEAT_TICKS,
                     logger=lambda line: log.info("raft %s", line))
        self.raft = Raft(cfg, self.storage, random.Random(seed if seed is not None else os.urandom(8)))
        self.send_raft = send_raft
        self.send_forward = send_forward
        self.on_applied = on_applied or (lambda op, result: None)
        self.awaiting_apply: dict[bytes, Request] = {}  # proposed here as leader
        self.awaiting_read: dict[bytes, Request] = {}  # read_index issued here as leader
        self.read_points: list[tuple[int, bytes]] = []  # (index, uid) confirmed, to serve once applied
        self.forwarded: dict[bytes, Request] = {}  # sent to the leader, waiting for its answer
        self.waiting: list[Request] = []  # no leader known yet
        self.leader_hint = NONE  # from gossip, for nodes not (yet) in the group
        self.leaderless_since: float | None = time.monotonic()  # None while a leader is known
        self._next_tick = 0.0
        self._after: list[tuple[Any, tuple]] = []  # callbacks to run once the Ready is advanced
        hs0, _ = self.storage.initial_state()
        self._durable_term_vote = (hs0.term, hs0.vote)
        self._next_leader_work = 0.0
        self._placing: dict[tuple[str, int], float] = {}  # (pg, attempt) -> when proposed
        self._dead_proposed: dict[str, float] = {}
        self.node_names: dict[int, str] = {self.raft_id: node_id}  # raft id -> node id
        if bootstrap is not None and fresh:
            # The only voter: elect ourselves now rather than after a timeout.
            self.raft.campaign()
            self.submit(("init", dict(bootstrap)), lambda status, value: None, timeout=3600.0)

    # ------------------------------------------------------------ inspection

    @property
    def lead(self) -> int:
        return self.raft.lead

    def is_leader(self) -> bool:
        return self.raft.role == StateType.LEADER

    def leader(self) -> int:
        """The leader to send requests to (ours, else the gossiped hint)."""
        if self.raft.lead != NONE:
            return self.raft.lead
        return self.leader_hint if self.leader_hint != self.raft_id else NONE

    def hand_over(self) -> bool:
        """Before this node leaves: if it leads, hand leadership to the most up-to-date other
        voter (Raft's leadership transfer), so writes see no election gap.  Whether it started."""
        others = [v for v in self.raft.trk.voters if v != self.raft_id] if self.is_leader() else []
        if not others:
            return False
        self.raft.transfer_leadership(max(others, key=lambda v: self.raft.trk.progress[v].match))
        return True

    def status(self) -> dict:
        st = self.raft.status()
        cs = st.conf_state
        role = st.role.describe().replace("State", "").lower()
        if self.raft_id in cs.learners:
            role = "learner"
        elif self.raft_id not in cs.voters:
            role = "joining"
        return {"role": role, "term": st.term, "commit": st.commit, "applied": st.applied,
                "leader": self.node_names.get(st.lead) if st.lead else None,
                "voters": sorted(self.node_names.get(v, str(v)) for v in cs.voters),
                "learners": sorted(self.node_names.get(v, str(v)) for v in cs.learners),
                "target_voters": int(self.state.config.get("voters", 3))}

    # -------------------------------------------------------------- requests

    def submit(self, op: tuple, done: Callable[[str, Any], None], timeout: float, uid: bytes | None = None,
               forwarded_in: bool = False, now: float | None = None) -> None:
        """Start a read or write; ``done(status, value)`` is called exactly once."""
        if not isinstance(op, tuple) or not op or op[0] not in WRITES | READS:
            done("error", f"unknown control store operation {op[:1]!r}")
            return
        now = time.monotonic() if now is None else now
        req = Request(uid or os.urandom(12), op, done, now + timeout, forwarded_in=forwarded_in)
        self._route(req, now)

    def _route(self, req: Request, now: float) -> None:
        if self.is_leader():
            try:
                if req.is_read:
                    self.raft.read_index(req.uid)
                    self.awaiting_read[req.uid] = req
                else:
                    self.raft.propose(encode_command(req.uid, req.op))
                    self.awaiting_apply[req.uid] = req
                req.proposed_term = self.raft.term
                return
            except RaftError:
                pass  # e.g. a leadership transfer in progress: wait for the next leader
        if req.forwarded_in:
            req.done("redirect", self.leader())
            return
        lead = self.leader()
        if lead != NONE and lead != self.raft_id:
            req.sent_to, req.sent_at = lead, now
            self.forwarded[req.uid] = req
            self.send_forward(lead, req.uid, req.op)
            return
        self.waiting.append(req)

    def on_answer(self, uid: bytes, status: str, value: Any, now: float | None = None) -> None:
        """The leader's answer to a request we forwarded."""
        req = self.forwarded.pop(uid, None)
        if req is None:
            return
        if status == "redirect":
            if isinstance(value, int) and value not in (NONE, self.raft_id):
                self.leader_hint = value
            self.waiting.append(req)
            return
        req.done(status, value)

    def _retry(self, now: float) -> None:
        lead = self.leader()
        for uid, req in list(self.forwarded.items()):
            if req.sent_to != lead or now - req.sent_at >= RETRY_S:
                del self.forwarded[uid]
                self.waiting.append(req)
        waiting, self.waiting = self.waiting, []
        for req in waiting:
            if now >= req.deadline:
                req.done("unavailable", self.unavailable_reason(now))
            elif lead != NONE or self.is_leader():
                self._route(req, now)
            else:
                self.waiting.append(req)
        # Requests a deposed leader accepted: from other daemons, tell them to retry
        # elsewhere; our own go round again (same uid: applied at most once).
        if not self.is_leader():
            for table in (self.awaiting_apply, self.awaiting_read):
                for uid, req in list(table.items()):
                    del table[uid]
                    if req.forwarded_in:
                        req.done("redirect", lead)
                    else:
                        self.waiting.append(req)
        for req in list(self.awaiting_apply.values()) + list(self.awaiting_read.values()):
            if now >= req.deadline:
                self.awaiting_apply.pop(req.uid, None)
                self.awaiting_read.pop(req.uid, None)
                req.done("unavailable", self.unavailable_reason(now))

    def unavailable_reason(self, now: float) -> str:
        since = self.leaderless_since
        cs = self.raft.conf_state
        voters = ", ".join(sorted(self.node_names.get(v, str(v)) for v in cs.voters)) or "none known"
        if since is not None:
            return (f"the control store has had no leader for {now - since:.1f} s: fewer than a majority of its "
                    f"voters ({voters}) can reach each other. It recovers by itself once a majority is back.")
        return (f"the control store did not answer in time (leader {self.node_names.get(self.leader(), '?')}; "
                f"voters {voters}); the mesh may be overloaded or partitioned")

    # ------------------------------------------------------------ Raft input

    def step(self, m: Message) -> None:
        self.raft.step(m)

    def tick(self, now: float) -> None:
        """Drive the clock: Raft ticks, request retries, then pending output."""
        if self._next_tick == 0.0 or now - self._next_tick > 1.0:
            self._next_tick = now  # first call, or the loop stalled: do not replay a burst of ticks
        while now >= self._next_tick:
            self.raft.tick()
            self._next_tick += TICK_S
        self._retry(now)
        self.process(now)

    def seconds_to_tick(self, now: float) -> float:
        return max(0.0, self._next_tick - now)

    def process(self, now: float | None = None) -> None:
        """Handle every pending Ready: send, persist (fsync), send what waited for it, apply."""
        now = time.monotonic() if now is None else now
        while self.raft.has_ready():
            rd = self.raft.ready()
            # Applying never raises (the state machine turns bad commands into error
            # results); a storage error does, and then nothing may be acknowledged.
            self._handle_ready(rd, now)
            self.raft.advance()
            # Answers and side effects run after advance(): an exception in one of
            # them must never leave the core waiting for an advance.
            for fn, args in self._after:
                try:
                    fn(*args)
                except Exception:
                    log.exception("control store callback failed")
            self._after = []
        self._serve_reads()
        applied = self.raft.log.applied
        if applied - self.storage.first_index() > SNAPSHOT_EVERY:
            try:
                self.raft.compact(applied, self.state.snapshot())
            except RaftError as e:
                log.info("snapshot deferred: %s", e)

    def _handle_ready(self, rd: Any, now: float) -> None:
        for m in rd.messages:
            self.send_raft(m.to, m)
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) == self._durable_term_vote:
            # Only the commit index moved: it need not be durable (a restarted
            # node learns it again from the leader), so save an fsync per write.
            hs = None
        if hs is not None or rd.entries or rd.snapshot is not None:
            self.storage.save(hs, rd.entries, rd.snapshot)
            if hs is not None:
                self._durable_term_vote = (hs.term, hs.vote)
        for m in rd.messages_after_persist:
            self.send_raft(m.to, m)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.state = GcsState.restore(rd.snapshot.data)
            self._learn_names()
            self._after.append((self.on_applied, (("restored",), None)))
        for e in rd.committed_entries:
            self._apply(e)
        for rs in rd.read_states:
            self.read_points.append((rs.index, rs.request_ctx))
        if rd.soft_state is not None:
            if rd.soft_state.lead == NONE:
                if self.leaderless_since is None:
                    self.leaderless_since = now
            else:
                self.leaderless_since = None

    def _serve_reads(self) -> None:
        if self.read_points:
            applied = self.raft.log.applied
            keep = []
            for index, uid in self.read_points:
                req = self.awaiting_read.get(uid)
                if req is None:
                    continue
                if applied >= index:
                    del self.awaiting_read[uid]
                    try:
                        value = self.state.read(req.op)
                    except Exception as e:  # noqa: BLE001 - a bad read fails alone
                        req.done("error", f"bad {req.op[0]} read: {e!r}")
                    else:
                        req.done("ok", value)
                else:
                    keep.append((index, uid))
            self.read_points = keep

    def _apply(self, e: Any) -> None:
        if e.type != EntryType.NORMAL or not e.data:
            return  # conf changes take effect inside the core; empty entries are leader no-ops
        try:
            uid, op = decode_command(e.data)
        except Exception:
            log.error("skipped an undecodable control store entry at index %d", e.index)
            return
        result = self.state.apply(e.index, uid, op)
        if op[0] == "node_add" and result is True:
            self.node_names[raft_id_of(op[1])] = op[1]
        req = self.awaiting_apply.pop(uid, None) if uid is not None else None
        if req is not None:
            self._after.append((req.done, ("ok", result)))
        self._after.append((self.on_applied, (op, result)))

    def _learn_names(self) -> None:
        for node_id in self.state.nodes:
            self.node_names[raft_id_of(node_id)] = node_id

    # -------------------------------------------------------- leader's duties

    def leader_work_due(self, now: float) -> bool:
        """Whether leader_work would do something now (so callers gather its input only then)."""
        return self.is_leader() and now >= self._next_leader_work

    def leader_work(self, now: float, views: list[NodeView], own_free: dict, grace: float) -> None:
        """Membership, dead nodes and placement groups, at most every LEADER_WORK_S."""
        if not self.leader_work_due(now):
            return
        self._next_leader_work = now + LEADER_WORK_S
        for v in views:
            self.node_names.setdefault(raft_id_of(v.node_id), v.node_id)
        self._plan_membership(views, grace)
        self._mark_dead_nodes(now, views, grace)
        self._place_groups(now, views, own_free)
        self.process(now)

    def _plan_membership(self, views: list[NodeView], grace: float) -> None:
        target = int(self.state.config.get("voters", 3))
        order = {raft_id_of(nid): rec.get("registered", 1 << 30) for nid, rec in self.state.nodes.items()}
        members = {self.raft_id: MemberView(self.raft_id, True, 0.0, order=order.get(self.raft_id, 0))}
        for v in views:
            rid = raft_id_of(v.node_id)
            members[rid] = MemberView(rid, v.alive, v.gone_for, v.left, order.get(rid, 1 << 30))
        match = {rid: pr.match for rid, pr in self.raft.trk.progress.items()}
        cc: ConfChange | None = plan(self.raft.conf_state, self.raft_id, members, match,
                                     self.raft.log.committed, target, grace)
        if cc is None:
            return
        try:
            self.raft.propose_conf_change(cc)
            log.info("control store membership: %s (%s)", cc.describe(), self.node_names.get(cc.node_id, "?"))
        except RaftError:
            pass  # the previous change is not committed yet: next round

    def _mark_dead_nodes(self, now: float, views: list[NodeView], grace: float) -> None:
        for v in views:
            rec = self.state.nodes.get(v.node_id)
            if rec is not None and rec.get("state") == "DEAD" and v.alive and not v.left:
                # Declared dead, yet alive: gossip was wrong for longer than the grace.
                # Its record comes back (its actors stay DEAD: their names were freed).
                if now - self._dead_proposed.get(v.node_id, 0.0) >= PLACE_RETRY_S:
                    self._dead_proposed[v.node_id] = now
                    self.submit(("node_add", v.node_id, {}), lambda status, value: None, timeout=30.0, now=now)
                continue
            if rec is None or rec.get("state") == "DEAD" or v.alive or not (v.left or v.gone_for >= grace):
                continue
            if now - self._dead_proposed.get(v.node_id, 0.0) < PLACE_RETRY_S:
                continue
            self._dead_proposed[v.node_id] = now
            self.submit(("node_dead", v.node_id), lambda status, value: None, timeout=30.0, now=now)

    def _place_groups(self, now: float, views: list[NodeView], own_free: dict) -> None:
        todo = [pg for pg in self.state.pgs.values() if pg.state in ("PENDING", "RESCHEDULING")]
        if not todo:
            return
        free = {v.node_id: dict(v.free) for v in views if v.alive and v.free is not None}
        free[self.node_id] = dict(own_free)
        free = {n: f for n, f in free.items() if self.state.nodes.get(n, {}).get("state") == "ALIVE"}
        # Bundles being reserved are not in the gossiped views yet.
        for pg in self.state.pgs.values():
            if pg.state in ("PREPARING", "RESCHEDULING"):
                for i, n in pg.nodes.items():
                    if i not in pg.acked and n in free:
                        for k, v in pg.bundles[i].items():
                            free[n][k] = free[n].get(k, 0.0) - v
        for pg in todo:
            key = (pg.pg_id, pg.attempt)
            if now - self._placing.get(key, -1e9) < PLACE_RETRY_S:
                continue
            fixed = dict(pg.nodes)
            nodes = place_bundles(pg.bundles, pg.strategy, free, fixed)
            if nodes is None:
                continue
            self._placing[key] = now
            for i, n in nodes.items():
                for k, v in pg.bundles[i].items():
                    free[n][k] = free[n].get(k, 0.0) - v
            self.submit(("pg_place", pg.pg_id, pg.attempt, nodes), lambda status, value: None,
                        timeout=10.0, now=now)
        if len(self._placing) > 1000:
            self._placing = {k: t for k, t in self._placing.items() if now - t < 60}

