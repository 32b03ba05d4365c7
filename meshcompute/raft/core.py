"""The Raft consensus core: a pure, deterministic state machine.

The core has no sockets, clocks or threads. The application drives it:

* ``tick()`` once per tick of its clock (timeouts are counted in ticks);
* ``step(msg)`` for every message received from a peer;
* ``propose(data)`` / ``propose_conf_change(cc)`` / ``read_index(ctx)`` /
  ``transfer_leadership(to)`` / ``compact(index, data)`` for client requests;
* ``ready()`` to collect what the core wants done, then -- in this order --
  persist ``rd.snapshot``, ``rd.entries`` and ``rd.hard_state`` (fsync), send
  ``rd.messages`` (these may also be sent *before* persisting) and
  ``rd.messages_after_persist`` (only *after*), apply ``rd.committed_entries``,
  serve ``rd.read_states`` once applied, and finally ``advance()``.

Roles (§5.1; pre-candidate from thesis §9.6)::

                 timeout, pre_vote                 quorum of pre-votes
    [Follower] -------------------> [PreCandidate] ------------------> [Candidate]
       ^  ^  \\                         |                                 |  |  ^
       |  |   \\ timeout, no pre_vote    | lost / saw leader / higher term |  |  | timeout
       |  |    +------------------------|-------------------------------->+  |  | (new term)
       |  |                             v                                    |  +--+
       |  +--------- higher term / saw a leader of our term -----------------+
       |                                                                      | quorum of votes
       +--- higher term / lost quorum (check-quorum) / removed --- [Leader] <--+

Every random choice (the election timeout jitter) comes from the injected
``random.Random``, so a run is reproducible from its seed.

Invariants maintained here (the simulation checks them from outside):

* at most one leader per term (§5.2 Election Safety): a node votes at most
  once per term, and the vote is persisted before it is announced;
* a leader never overwrites or deletes its own entries (§5.3 Leader Append-Only);
* a leader only counts replicas for entries of its current term (§5.4.2);
* ``applied <= committed <= last_index`` (see log.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from .config import Config
from .errors import (
    Compacted,
    InvalidConfChange,
    NotLeader,
    ProposalDropped,
    RaftInvariantError,
    SnapshotOutOfDate,
    Unavailable,
)
from .log import RaftLog
from .messages import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    decode_conf_entry,
    encode_conf_entry,
    type_name,
    vote_response_type,
)
from .progress import Progress, ProgressState, ProgressTracker, VoteResult
from .storage import Storage

__all__ = ["StateType", "SoftState", "Ready", "Status", "Raft"]

MT = MessageType

# Responses that acknowledge persisted state: they leave only after the Ready
# that carried that state has been persisted (etcd's msgsAfterAppend).
# * MsgAppResp acks entries: an ack counted towards commit must survive a crash.
# * MsgVoteResp grants a vote: the vote must be durable, or a crash and restart
#   could let us vote twice in one term (§5.2 Election Safety).
# * MsgPreVoteResp changes nothing durable, but ordering it with the others
#   keeps the rule simple and costs nothing.
_AFTER_PERSIST = frozenset({MT.APP_RESP, MT.VOTE_RESP, MT.PRE_VOTE_RESP})


class StateType(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3

    def describe(self) -> str:
        return {0: "StateFollower", 1: "StateCandidate", 2: "StateLeader", 3: "StatePreCandidate"}[int(self)]


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting to the application (who leads, our role)."""

    lead: int
    role: StateType

    def describe(self) -> str:
        return f"Lead:{self.lead} State:{self.role.describe()}"


@dataclass(slots=True)
class Ready:
    """What the core asks the application to do; see the module doc for the order."""

    # Changed volatile state (None = unchanged since the last Ready).
    soft_state: SoftState | None = None
    # Term/vote/commit to persist (None = unchanged since the last Ready).
    hard_state: HardState | None = None
    # Entries to append to stable storage (may replace a conflicting suffix).
    entries: list[Entry] = field(default_factory=list)
    # Snapshot to install and persist (the state machine restores from it).
    snapshot: Snapshot | None = None
    # Committed entries to apply to the state machine, in order.
    committed_entries: list[Entry] = field(default_factory=list)
    # Messages that may be sent right away (even before persisting).
    messages: list[Message] = field(default_factory=list)
    # Messages that must wait until this Ready's state is persisted.
    messages_after_persist: list[Message] = field(default_factory=list)
    # Answers to read_index(): serve each once applied >= its index.
    read_states: list[ReadState] = field(default_factory=list)
    # True if hard state or entries changed: the application must fsync.
    must_sync: bool = False
    # Self-addressed after-persist messages, stepped by advance().
    _self_msgs: list[Message] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        """Multi-line dump (no blank lines) used by the scenario tests."""
        out = []
        if self.soft_state is not None:
            out.append(self.soft_state.describe())
        if self.hard_state is not None:
            out.append(self.hard_state.describe())
        if self.entries:
            out.append("Entries:")
            out.extend("  " + e.describe() for e in self.entries)
        if self.snapshot is not None:
            out.append("Snapshot " + self.snapshot.describe())
        if self.committed_entries:
            out.append("CommittedEntries:")
            out.extend("  " + e.describe() for e in self.committed_entries)
        if self.messages:
            out.append("Messages:")
            out.extend("  " + m.describe() for m in self.messages)
        if self.messages_after_persist:
            out.append("MessagesAfterPersist:")
            out.extend("  " + m.describe() for m in self.messages_after_persist)
        if self.read_states:
            out.append("ReadStates:")
            out.extend("  " + r.describe() for r in self.read_states)
        return "\n".join(out)


@dataclass(frozen=True)
class Status:
    """A read-only summary of a node, for monitoring and tests."""

    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    lead: int
    role: StateType
    conf_state: ConfState
    lead_transferee: int
    # Leader only: follower id -> Progress.describe().
    progress: dict[int, str]

    def describe(self) -> str:
        return (
            f"{self.id}: {self.role.describe()} term={self.term} vote={self.vote} lead={self.lead} "
            f"commit={self.commit} applied={self.applied} last={self.last_index} {self.conf_state.describe()}"
        )


class _ReadIndexStatus:
    __slots__ = ("ctx", "index", "frm", "acks")

    def __init__(self, ctx: bytes, index: int, frm: int) -> None:
        self.ctx = ctx
        self.index = index
        self.frm = frm
        self.acks: set[int] = set()


class _ReadOnly:
    """Pending ReadIndex requests on the leader, in arrival order (thesis §6.4)."""

    __slots__ = ("pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[bytes, _ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add(self, ctx: bytes, index: int, frm: int) -> bool:
        if ctx in self.pending:
            return False  # duplicate request id; the first one will answer
        self.pending[ctx] = _ReadIndexStatus(ctx, index, frm)
        self.queue.append(ctx)
        return True

    def ack(self, node: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(node)
        return rs.acks

    def release_through(self, ctx: bytes) -> list[_ReadIndexStatus]:
        """Requests up to and including ``ctx``: a quorum acked a heartbeat sent after all of them."""
        if ctx not in self.pending:
            return []
        i = self.queue.index(ctx)
        done = [self.pending.pop(c) for c in self.queue[: i + 1]]
        del self.queue[: i + 1]
        return done

    def last_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""


class Raft:
    """One Raft node. See the module doc for the driving loop."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random | None = None) -> None:
        config.validate()
        self.id = config.id
        self.cfg = config
        self._rng = rng if rng is not None else random.Random(config.id)
        self._logger: Callable[[str], None] | None = config.logger
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        hs, cs = storage.initial_state()
        self.trk = ProgressTracker(config.max_inflight_msgs)

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = StateType.FOLLOWER
        # ticks since the last election timeout reset (on a follower: since it
        # last heard from the leader; on a leader: since the last check-quorum).
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        # Index of the latest conf change this leader appended (or of its first
        # entry): no new conf change until it is committed (thesis §4.1, and the
        # "commit an entry of your term first" fix to single-server changes).
        self.pending_conf_index = 0

        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self._self_after: list[Message] = []
        self.read_states: list[ReadState] = []
        self._read_only = _ReadOnly()
        # ReadIndex requests (ctx, requester) received before this leader
        # committed an entry of its term; answered once it has (thesis §6.4 step 1).
        self._pending_reads: list[tuple[bytes, int]] = []

        # Membership. Thesis §4.1: "a server always uses the latest configuration
        # in its log, regardless of whether the entry is committed". We keep the
        # configuration as of the snapshot plus one record per conf entry after it,
        # so that truncating the log can revert to the right configuration.
        self._conf_base = cs
        self._conf_history: list[tuple[int, ConfState]] = []
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            self._record_conf_entries(storage.entries(first, last + 1))
        self._apply_conf_to_tracker()

        if not hs.is_empty():
            if hs.commit > self.log.last_index():
                raise RaftInvariantError(
                    f"{self.id}: persisted commit {hs.commit} is beyond the persisted log "
                    f"(last index {self.log.last_index()}): storage lost entries"
                )
            self.log.committed = max(self.log.committed, hs.commit)
            self.term = hs.term
            self.vote = hs.vote
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

        self._prev_soft = self._soft_state()
        self._prev_hard = self.hard_state()
        self._ready_outstanding: Ready | None = None

    # ------------------------------------------------------------------------------
    # small helpers
    # ------------------------------------------------------------------------------
    def _info(self, msg: str) -> None:
        if self._logger is not None:
            self._logger(f"{self.id} {msg}")

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _send(self, m: Message) -> None:
        if m.type in _AFTER_PERSIST:
            if m.to == self.id:
                self._self_after.append(m)
            else:
                self.msgs_after_persist.append(m)
        else:
            self.msgs.append(m)

    def promotable(self) -> bool:
        """Only voters of our own latest configuration may campaign."""
        return self.id in self.trk.voters

    @property
    def conf_state(self) -> ConfState:
        return self._conf_history[-1][1] if self._conf_history else self._conf_base

    def conf_state_at(self, index: int) -> ConfState:
        """Configuration in effect once the log is applied through ``index``."""
        cs = self._conf_base
        for i, c in self._conf_history:
            if i > index:
                break
            cs = c
        return cs

    def _record_conf_entries(self, ents: list[Entry]) -> list[ConfChange]:
        changes = []
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                cc, cs = decode_conf_entry(e.data)
                self._conf_history.append((e.index, cs))
                changes.append(cc)
        return changes

    def _truncate_conf_history(self, from_index: int) -> None:
        while self._conf_history and self._conf_history[-1][0] >= from_index:
            self._conf_history.pop()

    def _apply_conf_to_tracker(self) -> None:
        """Make the tracker (and, on a leader, the progress map) match conf_state."""
        cs = self.conf_state
        trk = self.trk
        trk.voters = cs.voters
        trk.learners = cs.learners
        if self.role != StateType.LEADER:
            return
        members = cs.voters | cs.learners
        for nid in list(trk.progress):
            if nid not in members:
                del trk.progress[nid]
                if nid == self.lead_transferee:
                    self._abort_leader_transfer()
        last = self.log.last_index()
        for nid in members:
            pr = trk.progress.get(nid)
            if pr is None:
                # A new member: probe from our last index, the fast back-off finds
                # where its (probably empty) log diverges; snapshot if compacted.
                pr = Progress(0, max(last, 1), trk.max_inflight)
                trk.progress[nid] = pr
                if nid == self.id:
                    pr.match = last
                    pr.become_replicate()
            pr.is_learner = nid in cs.learners

    # ------------------------------------------------------------------------------
    # role transitions
    # ------------------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # §5.2: randomized timeouts in [election_tick, 2*election_tick) make split
        # votes rare and short.
        self.randomized_election_timeout = self.cfg.election_tick + self._rng.randrange(self.cfg.election_tick)
        self._abort_leader_transfer()
        self.trk.reset_votes()
        self.trk.progress = {}
        self.pending_conf_index = 0
        self._read_only = _ReadOnly()
        self._pending_reads = []

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = StateType.FOLLOWER
        self._info(f"became follower at term {self.term}")

    def become_pre_candidate(self) -> None:
        if self.role == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> pre-candidate]")
        # Thesis §9.6: the pre-vote round does not touch term or vote, so a
        # node that cannot win disturbs nobody.
        self.trk.reset_votes()
        self.lead = NONE
        self.role = StateType.PRE_CANDIDATE
        self._info(f"became pre-candidate at term {self.term}")

    def become_candidate(self) -> None:
        if self.role == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> candidate]")
        # §5.2: "To begin an election, a follower increments its current term and
        # transitions to candidate state. It then votes for itself."
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateType.CANDIDATE
        self._info(f"became candidate at term {self.term}")

    def become_leader(self) -> None:
        if self.role == StateType.FOLLOWER:
            raise RaftInvariantError("invalid transition [follower -> leader]")
        self._reset(self.term)
        self.lead = self.id
        self.role = StateType.LEADER
        last = self.log.last_index()
        members = self.trk.voters | self.trk.learners
        for nid in members:
            pr = Progress(0, last + 1, self.trk.max_inflight, is_learner=nid in self.trk.learners)
            self.trk.progress[nid] = pr
        me = self.trk.progress.get(self.id)
        if me is not None:
            # Everything in our log is persisted: we only won after our own vote,
            # which is stepped after the Ready holding our entries was persisted.
            me.match = last
            me.become_replicate()
        # §8 / thesis §6.4: commit a no-op of our term right away; until it
        # commits we do not know which earlier entries are committed (§5.4.2),
        # so ReadIndex waits for it and conf changes wait for it (the fix to
        # single-server changes announced on raft-dev, 2015).
        self.pending_conf_index = last + 1
        self._append_entries([Entry(term=self.term, index=last + 1)])
        self._info(f"became leader at term {self.term}")

    # ------------------------------------------------------------------------------
    # ticks
    # ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        if self.role == StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, to=self.id, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, to=self.id, frm=self.id))
            # A transfer that did not finish within an election timeout failed
            # (thesis §3.10); take proposals again.
            if self.role == StateType.LEADER and self.lead_transferee != NONE:
                self._info(f"leadership transfer to {self.lead_transferee} timed out")
                self._abort_leader_transfer()
        if self.role != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, to=self.id, frm=self.id))

    # ------------------------------------------------------------------------------
    # elections
    # ------------------------------------------------------------------------------
    def campaign(self) -> None:
        """Start an election now (as if the election timeout fired)."""
        self.step(Message(MT.HUP, to=self.id, frm=self.id))

    def _hup(self, transfer: bool) -> None:
        if self.role == StateType.LEADER:
            return
        if not self.promotable():
            self._info("is not a voter and cannot campaign")
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type = MT.PRE_VOTE
            # Ask as if we were at term+1, without moving there (thesis §9.6).
            term = self.term + 1
        else:
            self.become_candidate()
            vote_type = MT.VOTE
            term = self.term
        last_index, last_term = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.trk.voters):
            if nid == self.id:
                # Our own vote counts only once our term and vote are durable, so
                # it travels through the after-persist list like any other grant.
                self._send(Message(vote_response_type(vote_type), to=self.id, frm=self.id, term=term))
                continue
            self._info(
                f"[logterm: {last_term}, index: {last_index}] sent "
                f"{'MsgPreVote' if pre else 'MsgVote'} request to {nid} at term {term}"
            )
            self._send(
                Message(
                    vote_type, to=nid, frm=self.id, term=term, log_term=last_term, index=last_index, context=ctx
                )
            )

    def _poll(self, nid: int, granted: bool) -> VoteResult:
        self.trk.record_vote(nid, granted)
        _, _, res = self.trk.tally_votes()
        return res

    # ------------------------------------------------------------------------------
    # step
    # ------------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        """Process one message (from a peer, or a local event)."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                # Leader lease / stickiness (thesis §4.2.3 for votes with
                # check_quorum, §9.6 for pre-votes): a server that heard from a
                # leader within the minimum election timeout neither updates its
                # term nor grants a vote, so a partitioned or removed server cannot
                # depose a healthy leader.
                lease = self.cfg.check_quorum or (self.cfg.pre_vote and m.type == MT.PRE_VOTE)
                in_lease = lease and self.lead != NONE and self.election_elapsed < self.cfg.election_tick
                if in_lease and not force:
                    self._info(
                        f"[logterm: {self.log.last_term()}, index: {self.log.last_index()}, vote: {self.vote}] "
                        f"ignored {type_name(m.type)} from {m.frm} [logterm: {m.log_term}, index: {m.index}] "
                        f"at term {self.term}: lease is not expired (remaining ticks: "
                        f"{self.cfg.election_tick - self.election_elapsed})"
                    )
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change our term because of a pre-vote request
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                # A granted pre-vote carries the term we would campaign at; we move
                # there only if we win the pre-vote round.
                pass
            else:
                self._info(f"received {type_name(m.type)} with higher term {m.term} from {m.frm}")
                # §5.1: "If one server's current term is smaller than the other's,
                # then it updates its current term to the larger value. If a
                # candidate or leader discovers that its term is out of date, it
                # immediately reverts to follower state."
                if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                    self.become_follower(m.term, m.frm)
                else:
                    self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. the far side of a healed partition) would
                # never learn our term if we stayed silent: with pre-vote we never
                # send it a higher-term vote request, and with check-quorum it may
                # be holding its followers' leases. Tell it our term.
                self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term))
            elif m.type == MT.PRE_VOTE:
                # Reject so the pre-candidate learns our (higher) term and stops.
                self._send(Message(MT.PRE_VOTE_RESP, to=m.frm, frm=self.id, term=self.term, reject=True))
            # §5.1: "If a server receives a request with a stale term number, it
            # rejects the request" -- everything else is simply ignored.
            return

        t = m.type
        if t == MT.HUP:
            self._hup(transfer=False)
        elif t in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == StateType.LEADER:
            self._step_leader(m)
        elif self.role in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        # §5.2: "each server will vote for at most one candidate in a given term,
        # on a first-come-first-served basis"; we may repeat a vote we already cast.
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            # A pre-vote is for a future term we have not voted in.
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        # §5.4.1 election restriction: only for candidates whose log is at least
        # as up-to-date as ours.
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._info(
                f"[logterm: {self.log.last_term()}, index: {self.log.last_index()}, vote: {self.vote}] "
                f"cast {type_name(m.type)} for {m.frm} [logterm: {m.log_term}, index: {m.index}] at term {self.term}"
            )
            # A grant carries the candidate's term (for a pre-vote it is ahead of ours).
            self._send(Message(vote_response_type(m.type), to=m.frm, frm=self.id, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._info(
                f"[logterm: {self.log.last_term()}, index: {self.log.last_index()}, vote: {self.vote}] "
                f"rejected {type_name(m.type)} from {m.frm} [logterm: {m.log_term}, index: {m.index}] at term {self.term}"
            )
            self._send(Message(vote_response_type(m.type), to=m.frm, frm=self.id, term=self.term, reject=True))

    # --- leader -----------------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat(self._read_only.last_ctx())
            return
        if t == MT.CHECK_QUORUM:
            # Thesis §6.2: a leader that cannot reach a quorum steps down, so that
            # clients of a minority partition stop waiting on it.
            if not self.trk.quorum_active(self.id):
                self._info("stepped down to follower since quorum is not active")
                self.become_follower(self.term, NONE)
            else:
                self.trk.reset_recent_active(self.id)
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m.context, m.frm)
            return
        if t == MT.TRANSFER_LEADER:
            if m.frm in self.trk.voters:
                self._leader_transfer(m.frm)
            return
        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if t == MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            # A lost MsgAppResp could leave the window full forever; let one more
            # message through per heartbeat round.
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._handle_read_ack(m.frm, m.context)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
                self._info(f"snapshot to {m.frm} failed, resumed probing")
            else:
                self._info(f"snapshot to {m.frm} succeeded, resumed probing")
            # Either way, wait for the follower's ack (or the next heartbeat
            # response) before sending again.
            pr.become_probe()
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.frm == self.id:
            # Our own entries reached stable storage.
            if pr.maybe_update(m.index):
                self._maybe_commit_and_bcast()
            return
        if m.reject:
            hint_prev = self._hint_prev(m)
            self._info(
                f"received MsgAppResp(rejected, hint: (index {m.reject_hint}, term {m.log_term})) "
                f"from {m.frm} for index {m.index}"
            )
            if pr.maybe_decr_to(m.index, hint_prev):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            # The follower installed the snapshot (or caught up some other way).
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        # A new commit index goes to everyone; otherwise make sure a follower we
        # had paused hears from us again.
        if not self._maybe_commit_and_bcast() and old_paused:
            self._send_append(m.frm)
        if self.role != StateType.LEADER or m.frm not in self.trk.progress:
            return
        # Fill the window: keep streaming while flow control allows.
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._info(f"sent MsgTimeoutNow to {m.frm} after its log caught up")
            self._send(Message(MT.TIMEOUT_NOW, to=m.frm, frm=self.id, term=self.term))

    def _hint_prev(self, m: Message) -> int:
        """Highest index that may still match, from a follower's rejection hint (§5.3 fast back-off).

        * ConflictTerm 0: the follower's log ends at reject_hint; try from there.
        * Otherwise the follower's entry at m.index has term ConflictTerm, first
          stored at reject_hint. If we hold entries of that term, our logs agree
          up to our last entry of it (Log Matching), so resume right after it;
          if not, none of the follower's entries of that term are ours: skip
          them all.
        """
        if m.log_term == 0:
            return min(m.reject_hint, m.index - 1)
        j = self._last_index_of_term(m.log_term, m.index - 1)
        hint = j if j is not None else m.reject_hint - 1
        return min(hint, m.index - 1)

    def _last_index_of_term(self, term: int, upto: int) -> int | None:
        """Largest i <= upto whose term is ``term`` (terms never decrease along the log)."""
        lo = self.log.first_index() - 1
        hi = min(upto, self.log.last_index())
        if hi < lo:
            return None
        # Binary search for the last index with term <= `term`.
        if self.log.term(lo) > term:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.log.term(mid) <= term:
                lo = mid
            else:
                hi = mid - 1
        return lo if self.log.term(lo) == term else None

    def _maybe_commit_and_bcast(self) -> bool:
        if not self.log.maybe_commit(self.trk.committed_index(), self.term):
            return False
        # The first commit of our term settles which entries are committed:
        # ReadIndex requests queued until now can be served (thesis §6.4).
        if self._pending_reads and self.log.term_or_zero(self.log.committed) == self.term:
            pending, self._pending_reads = self._pending_reads, []
            for ctx, frm in pending:
                self._leader_read_index(ctx, frm)
        self._bcast_append()
        # Thesis §4.2.2: a leader removed from the configuration keeps managing
        # the cluster until the removal commits, then steps down (after telling
        # the followers, in the appends above, that it is committed).
        if self.id not in self.conf_state_at(self.log.committed).voters:
            self._info("stepped down: removal from the voters is committed")
            self.become_follower(self.term, NONE)
        return True

    def _bcast_append(self) -> None:
        for nid in self.trk.progress:
            if nid != self.id:
                self._send_append(nid)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for nid, pr in self.trk.progress.items():
            if nid == self.id:
                continue
            # Never tell a follower to commit past what it is known to hold.
            commit = min(pr.match, self.log.committed)
            self._send(Message(MT.HEARTBEAT, to=nid, frm=self.id, term=self.term, commit=commit, context=ctx))

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send entries (or a snapshot) to ``to`` if flow control allows; True if sent."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            log_term = self.log.term(prev)
            ents = self.log.entries_from(pr.next, self.cfg.max_size_per_msg)
        except Compacted:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APP,
                to=to,
                frm=self.id,
                term=self.term,
                index=prev,
                log_term=log_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        if ents:
            if pr.state == ProgressState.REPLICATE:
                last = ents[-1].index
                pr.optimistic_update(last)
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        # §7: the entries this follower needs were compacted; ship the snapshot.
        if not pr.recent_active:
            return False  # do not ship a large snapshot to a peer that seems down
        snap = self.log.snapshot()
        if snap.is_empty():
            raise RaftInvariantError("need a snapshot but there is none")
        self._info(
            f"sent snapshot[index: {snap.index}, term: {snap.term}] to {to} "
            f"[{pr.describe()}] (entries before {self.log.first_index()} are compacted)"
        )
        pr.become_snapshot(snap.index)
        self._send(Message(MT.SNAP, to=to, frm=self.id, term=self.term, snapshot=snap))
        return True

    # --- candidate ------------------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        t = m.type
        # Only answers to our current round count (a candidate ignores pre-vote answers).
        my_resp = MT.PRE_VOTE_RESP if self.role == StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.APP:
            # §5.2: "If the AppendEntries RPC is from a leader whose term is at
            # least as large as the candidate's current term, then the candidate
            # recognizes the leader as legitimate and returns to follower state."
            self.become_follower(m.term, m.frm)
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            res = self._poll(m.frm, not m.reject)
            granted, rejected, _ = self.trk.tally_votes()
            self._info(
                f"has received {granted} {type_name(t)} votes and {rejected} vote rejections"
            )
            if res == VoteResult.WON:
                if self.role == StateType.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif res == VoteResult.LOST:
                # Pre-candidates keep their term: the round changed nothing.
                self.become_follower(self.term, NONE)

    # --- follower -------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TIMEOUT_NOW:
            # Thesis §3.10: the leader asks us to start an election immediately.
            self._info(f"received MsgTimeoutNow from {m.frm} and starts an election to get leadership")
            self._hup(transfer=True)
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif t == MT.TRANSFER_LEADER and self.lead != NONE:
            self._send(Message(MT.TRANSFER_LEADER, to=self.lead, frm=m.frm, term=self.term))

    def _handle_append_entries(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Stale: we already hold (and committed) more than this message vouches for.
            self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed))
            return
        res = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if res is not None:
            last_new, written = res
            if written:
                # Entries from written[0].index on replaced whatever we had there;
                # a configuration from a truncated entry is no longer in effect.
                self._truncate_conf_history(written[0].index)
                self._record_conf_entries(written)
                self._apply_conf_to_tracker()
            self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new))
            return
        # §5.3 consistency check failed. Fast back-off hint: either our log is
        # too short (hint = our last index, ConflictTerm 0), or our entry at
        # m.index has a different term (hint = the first index we hold with that
        # term, ConflictTerm = that term), so the leader can skip the whole term.
        last = self.log.last_index()
        if m.index > last:
            hint, conflict_term = last, 0
        else:
            conflict_term = self.log.term(m.index)
            hint = self._first_index_of_term(conflict_term, m.index)
        self._info(
            f"[logterm: {self.log.term_or_zero(m.index)}, index: {m.index}] rejected MsgApp "
            f"[logterm: {m.log_term}, index: {m.index}] from {m.frm}"
        )
        self._send(
            Message(
                MT.APP_RESP,
                to=m.frm,
                frm=self.id,
                term=self.term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=conflict_term,
            )
        )

    def _first_index_of_term(self, term: int, at: int) -> int:
        """Smallest i in (committed, at] whose term is ``term`` (terms never decrease)."""
        lo, hi = self.log.committed + 1, at
        if lo > hi:
            return at
        while lo < hi:
            mid = (lo + hi) // 2
            if self.log.term(mid) < term:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _handle_heartbeat(self, m: Message) -> None:
        # Safe: the leader never sends a commit beyond what it knows we hold.
        self.log.commit_to(m.commit)
        self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        s = m.snapshot
        if self._restore(s):
            self._info(f"[commit: {self.log.committed}] restored snapshot [index: {s.index}, term: {s.term}]")
            self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.last_index()))
        else:
            self._info(f"[commit: {self.log.committed}] ignored snapshot [index: {s.index}, term: {s.term}]")
            self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed))

    def _restore(self, s: Snapshot) -> bool:
        if s.index <= self.log.committed:
            return False  # older than what we already committed: nothing to learn
        if self.log.match_term(s.index, s.term):
            # We hold the snapshot's last entry, hence (Log Matching) everything
            # before it: just fast-forward the commit index, keep the log.
            self.log.commit_to(s.index)
            return False
        self.log.restore(s)
        self._conf_base = s.metadata.conf_state
        self._conf_history = []
        self._apply_conf_to_tracker()
        return True

    # ------------------------------------------------------------------------------
    # proposals, membership, reads, transfer, compaction (the application's API)
    # ------------------------------------------------------------------------------
    def _check_can_propose(self, what: str) -> None:
        if self.role != StateType.LEADER:
            raise NotLeader(self.id, self.lead, what)
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                f"{what} dropped by leader {self.id}: leadership transfer to {self.lead_transferee} "
                "is in progress; retry on the new leader"
            )

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log (leader only); returns the entry's index.

        The entry is committed once a Ready reports it in ``committed_entries``.
        It can still be lost if this leader is deposed before it commits; clients
        must retry, with idempotent or deduplicated commands.
        """
        self._check_can_propose("proposal")
        index = self._append_entries([Entry(term=self.term, index=self.log.last_index() + 1, data=data)])
        self._bcast_append()
        return index

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a single-server membership change (thesis §4.1); returns its index.

        The new configuration takes effect on every node as soon as the entry is
        appended to its log, committed or not. Only one change may be pending.
        """
        self._check_can_propose("conf change")
        if self.pending_conf_index > self.log.committed:
            raise ProposalDropped(
                f"conf change {cc.describe()} dropped by leader {self.id}: the previous change at index "
                f"{self.pending_conf_index} is not committed yet (one change at a time, thesis §4.1); "
                "retry once it commits"
            )
        cs = self.conf_state
        n = cc.node_id
        if n <= 0:
            raise InvalidConfChange(f"conf change {cc.describe()}: node ids are positive")
        if cc.type == ConfChangeType.ADD_NODE and n in cs.voters:
            raise InvalidConfChange(f"conf change {cc.describe()}: {n} is already a voter")
        if cc.type == ConfChangeType.ADD_LEARNER and n in cs.learners:
            raise InvalidConfChange(f"conf change {cc.describe()}: {n} is already a learner")
        if cc.type == ConfChangeType.REMOVE_NODE and n not in cs.voters | cs.learners:
            raise InvalidConfChange(f"conf change {cc.describe()}: {n} is not a member")
        new = cs.apply(cc)
        if not new.voters:
            raise InvalidConfChange(f"conf change {cc.describe()} would leave the group without voters")
        index = self.log.last_index() + 1
        self._append_entries(
            [Entry(term=self.term, index=index, type=EntryType.CONF_CHANGE, data=encode_conf_entry(cc, new))]
        )
        self.pending_conf_index = index
        self._bcast_append()
        return index

    def _append_entries(self, ents: list[Entry]) -> int:
        """Leader: append to our own log (§5.3 Leader Append-Only) and ack it after persisting."""
        last = self.log.append(ents)
        if self._record_conf_entries(ents):
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    self._info(f"appended conf change {decode_conf_entry(e.data)[0].describe()} at index {e.index}")
            self._apply_conf_to_tracker()
        # The leader counts itself towards commit only once its own entries are
        # durable (thesis §10.2.1 lets it write in parallel with replicating).
        self._send(Message(MT.APP_RESP, to=self.id, frm=self.id, term=self.term, index=last))
        return last

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point (thesis §6.4); the answer is a ReadState in a later Ready.

        ``ctx`` identifies the request and must be unique. On a follower the
        request is forwarded to the leader. Requests are dropped (the caller
        should time out and retry) if leadership changes before they complete.
        """
        if self.role == StateType.LEADER:
            self._leader_read_index(ctx, self.id)
            return
        if self.lead == NONE:
            raise NotLeader(self.id, NONE, "read index")
        self._send(Message(MT.READ_INDEX, to=self.lead, frm=self.id, term=self.term, context=ctx))

    def _leader_read_index(self, ctx: bytes, frm: int) -> None:
        # Step 1: the read index is our commit index, but only once an entry of
        # our own term is committed (before that we may not know the latest
        # committed entries, §5.4.2).
        if self.log.term_or_zero(self.log.committed) != self.term:
            self._pending_reads.append((ctx, frm))
            return
        if self.trk.voters == {self.id}:
            # A single voter is always a quorum of itself.
            self._answer_read(_ReadIndexStatus(ctx, self.log.committed, frm))
            return
        # Step 2: confirm we are still the leader with a heartbeat round; a
        # quorum of acks proves no newer leader had been elected when the
        # request arrived.
        if not self._read_only.add(ctx, self.log.committed, frm):
            return
        if self.id in self.trk.voters:
            self._read_only.ack(self.id, ctx)
        self._bcast_heartbeat(ctx)

    def _handle_read_ack(self, node: int, ctx: bytes) -> None:
        acks = self._read_only.ack(node, ctx)
        if acks is None or not self.trk.has_quorum(acks):
            return
        for rs in self._read_only.release_through(ctx):
            self._answer_read(rs)

    def _answer_read(self, rs: _ReadIndexStatus) -> None:
        if rs.frm in (NONE, self.id):
            self.read_states.append(ReadState(rs.index, rs.ctx))
        else:
            self._send(
                Message(MT.READ_INDEX_RESP, to=rs.frm, frm=self.id, term=self.term, index=rs.index, context=rs.ctx)
            )

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter ``to`` (thesis §3.10); proposals are refused meanwhile.

        The leader brings ``to`` up to date, then sends it MsgTimeoutNow so it
        campaigns at once (bypassing leases). Aborted after an election timeout.
        """
        if self.role != StateType.LEADER:
            raise NotLeader(self.id, self.lead, "leadership transfer")
        if to not in self.trk.voters:
            raise InvalidConfChange(f"cannot transfer leadership to {to}: not a voter")
        self._leader_transfer(to)

    def _leader_transfer(self, to: int) -> None:
        if to == self.id or self.lead_transferee == to:
            return
        self._abort_leader_transfer()
        self.lead_transferee = to
        # The transfer gets one election timeout to complete.
        self.election_elapsed = 0
        self._info(f"starts to transfer leadership to {to}")
        pr = self.trk.progress[to]
        if pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=to, frm=self.id, term=self.term))
        else:
            self._send_append(to)

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def report_snapshot(self, to: int, ok: bool) -> None:
        """Transport feedback: the snapshot sent to ``to`` was delivered (or not)."""
        self.step(Message(MT.SNAP_STATUS, to=self.id, frm=to, reject=not ok))

    def report_unreachable(self, to: int) -> None:
        """Transport feedback: sending to ``to`` failed; stop streaming to it optimistically."""
        self.step(Message(MT.UNREACHABLE, to=self.id, frm=to))

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Take a snapshot of the state machine as of ``index`` and discard the log up to it (§7).

        ``data`` must be the state machine image after applying exactly the
        entries up to ``index``; ``index`` must already be applied. Followers
        that later need compacted entries receive this snapshot instead.
        """
        if index > self.log.applied:
            raise ValueError(f"cannot compact to {index}: only {self.log.applied} is applied")
        storage = self.log.storage
        if index <= storage.first_index() - 1:
            raise SnapshotOutOfDate(f"cannot compact to {index}: already compacted to {storage.first_index() - 1}")
        if index > storage.last_index():
            raise Unavailable(f"cannot compact to {index}: entries after {storage.last_index()} are not persisted yet")
        cs = self.conf_state_at(index)
        snap = storage.create_snapshot(index, cs, data)  # type: ignore[attr-defined]
        storage.compact(index)  # type: ignore[attr-defined]
        # Fold configurations at or before the snapshot into the base.
        self._conf_base = cs
        self._conf_history = [(i, c) for i, c in self._conf_history if i > index]
        return snap

    # ------------------------------------------------------------------------------
    # Ready / advance
    # ------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        """True if ready() would return something worth handling."""
        lg = self.log
        ps, ph = self._prev_soft, self._prev_hard
        return bool(
            self.msgs
            or self.msgs_after_persist
            or self._self_after
            or self.read_states
            or lg.unstable.entries
            or lg.unstable.snapshot is not None
            or (lg.applied < lg.committed and lg.unstable.snapshot is None)
            or self.lead != ps.lead
            or self.role != ps.role
            or self.term != ph.term
            or self.vote != ph.vote
            or lg.committed != ph.commit
        )

    def ready(self) -> Ready:
        """Collect pending work; call advance() once it is done. One Ready at a time."""
        if self._ready_outstanding is not None:
            raise RuntimeError("ready() called again before advance(): handle each Ready, then call advance()")
        lg = self.log
        ss = self._soft_state()
        hs = self.hard_state()
        rd = Ready(
            soft_state=ss if ss != self._prev_soft else None,
            hard_state=hs if hs != self._prev_hard else None,
            entries=list(lg.unstable.entries),
            snapshot=lg.unstable.snapshot,
            committed_entries=lg.next_committed_ents(),
            messages=self.msgs,
            messages_after_persist=self.msgs_after_persist,
            read_states=self.read_states,
            _self_msgs=self._self_after,
        )
        prev = self._prev_hard
        rd.must_sync = bool(rd.entries) or hs.term != prev.term or hs.vote != prev.vote
        self.msgs = []
        self.msgs_after_persist = []
        self.read_states = []
        self._self_after = []
        self._prev_soft = ss
        self._prev_hard = hs
        self._ready_outstanding = rd
        return rd

    def advance(self) -> None:
        """Acknowledge that the last Ready was fully handled (persisted, sent, applied)."""
        rd = self._ready_outstanding
        if rd is None:
            raise RuntimeError("advance() called without an outstanding ready()")
        self._ready_outstanding = None
        lg = self.log
        if rd.snapshot is not None:
            lg.stable_snap_to(rd.snapshot.index)
            # The state machine was restored from the snapshot.
            if lg.applied < rd.snapshot.index:
                lg.applied_to(rd.snapshot.index)
        if rd.committed_entries:
            lg.applied_to(rd.committed_entries[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            lg.stable_to(last.index, last.term)
        # Acks and votes addressed to ourselves: the state they vouch for is now
        # durable, so they may be counted.
        for m in rd._self_msgs:
            self.step(m)

    # ------------------------------------------------------------------------------
    # inspection
    # ------------------------------------------------------------------------------
    def status(self) -> Status:
        prs = {}
        if self.role == StateType.LEADER:
            prs = {i: p.describe() for i, p in sorted(self.trk.progress.items())}
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            lead=self.lead,
            role=self.role,
            conf_state=self.conf_state,
            lead_transferee=self.lead_transferee,
            progress=prs,
        )
