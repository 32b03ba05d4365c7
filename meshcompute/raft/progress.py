"""The leader's view of each follower (Progress) and of the configuration (ProgressTracker).

Progress state machine (one per follower, only on the leader)::

                       +----------------------------------------+
                       |          rejection / unreachable       |
                       v                                        |
    new leader --> [ PROBE ] --- ack (match advances) ---> [ REPLICATE ]
                       |  ^
     next-1 compacted  |  |  snapshot delivered / failed
     (needs snapshot)  v  |  (report_snapshot, or an ack at/after it)
                    [ SNAPSHOT ]

* PROBE: we do not know where the follower's log diverges from ours. Send at
  most one MsgApp per heartbeat interval (``probe_sent`` pauses us) and walk
  ``next`` back using the follower's conflict hint on each rejection.
* REPLICATE: the follower is known to match up to ``match``; stream entries
  optimistically (``next`` advances as we send) up to ``max_inflight_msgs``
  unacknowledged messages (``Inflights``), which is the flow control.
* SNAPSHOT: the entries the follower needs are compacted; a snapshot is in
  flight and nothing else is sent until it is reported delivered or failed.

Invariant: ``match < next`` (everything up to ``match`` is known to be on the
follower; ``next`` is the next entry to send).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from .errors import RaftInvariantError

__all__ = ["ProgressState", "Inflights", "Progress", "ProgressTracker", "VoteResult"]


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2

    def describe(self) -> str:
        return {0: "StateProbe", 1: "StateReplicate", 2: "StateSnapshot"}[int(self)]


class Inflights:
    """Last indexes of the MsgApps sent but not yet acknowledged, oldest first."""

    __slots__ = ("capacity", "_q")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise RaftInvariantError("cannot add to a full inflights window")
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """An ack for ``index`` covers every message ending at or before it."""
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
    )

    def __init__(self, match: int, next_: int, max_inflight: int, is_learner: bool = False) -> None:
        # Highest index known to be replicated on the follower.
        self.match = match
        # Index of the next entry to send.
        self.next = next_
        self.state = ProgressState.PROBE
        # Index of the snapshot in flight (SNAPSHOT state only).
        self.pending_snapshot = 0
        # Heard from since the last check-quorum round (thesis §6.2). New members
        # start active so that a fresh leader does not step down before hearing
        # from anyone.
        self.recent_active = True
        # PROBE state: a MsgApp is outstanding; wait for its answer or a heartbeat
        # response before sending another.
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot, the follower holds at least the snapshot index.
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """An ack for index n arrived; False if it is stale (older than ``match``)."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def optimistic_update(self, n: int) -> None:
        """REPLICATE: entries up to n were just sent; assume they will arrive."""
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, hint_prev: int) -> bool:
        """A MsgApp with prev index ``rejected`` was refused; move ``next`` back.

        ``hint_prev`` is the highest index that may still match, derived from the
        follower's conflict hint (fast back-off, §5.3 "the follower can include
        the term of the conflicting entry and the first index it stores for that
        term"). Returns False if the rejection is stale.
        """
        if self.state == ProgressState.REPLICATE:
            # Rejections of indexes at or below match are duplicates or reordered.
            if rejected <= self.match:
                return False
            # Entries beyond match got lost or reordered; resend from match+1.
            self.next = self.match + 1
            return True
        if self.state == ProgressState.SNAPSHOT:
            return False
        # PROBE: only the answer to the outstanding probe (prev == next-1) counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_prev + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        s = f"{self.state.describe()} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.state == ProgressState.SNAPSHOT:
            s += f" pending_snapshot={self.pending_snapshot}"
        if self.probe_sent:
            s += " paused"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
            if self.inflights.full():
                s += "[full]"
        if not self.recent_active:
            s += " inactive"
        return s


class VoteResult(IntEnum):
    PENDING = 0
    WON = 1
    LOST = 2


class ProgressTracker:
    """Current configuration (voters, learners), per-node Progress, and votes.

    ``progress`` is only populated on the leader. Quorums are always majorities
    of ``voters``; learners never count (they receive the log but do not vote).
    """

    __slots__ = ("voters", "learners", "progress", "votes", "max_inflight")

    def __init__(self, max_inflight: int) -> None:
        self.voters: frozenset[int] = frozenset()
        self.learners: frozenset[int] = frozenset()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def committed_index(self) -> int:
        """Highest index replicated on a majority of voters (0 if there are no voters)."""
        if not self.voters:
            return 0
        matches = sorted((self.progress[v].match if v in self.progress else 0) for v in self.voters)
        return matches[len(matches) - self.quorum()]

    def has_quorum(self, ids: set[int] | frozenset[int]) -> bool:
        return len(self.voters & ids) >= self.quorum() if self.voters else False

    def quorum_active(self, self_id: int) -> bool:
        """Check quorum (thesis §6.2): did a majority of voters talk to us lately?"""
        active = {i for i, pr in self.progress.items() if i == self_id or pr.recent_active}
        return self.has_quorum(active)

    def reset_recent_active(self, self_id: int) -> None:
        for i, pr in self.progress.items():
            if i != self_id:
                pr.recent_active = False

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: int, granted: bool) -> None:
        # First answer wins: a duplicated or re-ordered answer cannot flip a vote.
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        q = self.quorum()
        if granted >= q:
            return granted, rejected, VoteResult.WON
        if len(self.voters) - rejected < q:
            return granted, rejected, VoteResult.LOST
        return granted, rejected, VoteResult.PENDING
