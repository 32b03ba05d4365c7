"""Who votes: the leader's membership policy, a pure function.

The first ``target`` nodes of the mesh (1, 3, 5 or 7; 3 by default) are Raft
voters; every other live node is a learner, which receives the log (so it
serves its own node's reads of the tables and is ready to be promoted) but
never counts towards a quorum. The leader calls :func:`plan` periodically with
what gossip says about each node and applies the one change it returns (Raft
changes membership one server at a time, thesis §4.1):

1. remove a member gossip has declared dead (or that left) for longer than the
   grace period -- never the leader itself;
2. add a live node that is not a member yet, as a learner;
3. while there are fewer voters than ``target``, promote the learner that
   registered first among those that have caught up with the log.

A dead voter is therefore replaced in two committed steps: removal (the group
shrinks, its quorum too) and the promotion of a caught-up learner. Removing
first never needs more live voters than the group had before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..raft import ConfChange, ConfChangeType, ConfState

__all__ = ["MemberView", "plan", "VALID_VOTER_COUNTS"]

VALID_VOTER_COUNTS = (1, 3, 5, 7)


@dataclass(frozen=True)
class MemberView:
    """What the leader knows of one node (from gossip and the nodes table)."""

    raft_id: int
    alive: bool  # gossip: alive or suspect
    gone_for: float  # seconds since gossip declared it dead or left (0 while alive)
    left: bool = False  # it announced leaving: no grace needed
    order: int = 1 << 30  # registration order in the nodes table (lower = joined earlier)


def plan(conf: ConfState, leader: int, members: dict[int, MemberView], match: dict[int, int], commit: int,
         target: int, grace: float) -> ConfChange | None:
    """The next membership change, or None. ``match``: member -> last log index it holds."""
    in_conf = conf.voters | conf.learners
    # 1. Remove the dead (the leader is alive by definition; it never removes itself).
    for rid in sorted(in_conf, key=lambda r: (r not in conf.voters, r)):
        if rid == leader:
            continue
        m = members.get(rid)
        if m is None:
            continue  # not known to gossip yet (e.g. just restarted): leave it
        if not m.alive and (m.left or m.gone_for >= grace):
            return ConfChange(ConfChangeType.REMOVE_NODE, rid)
    # 2. Add new live nodes as learners, oldest registration first.
    newcomers = [m for m in members.values() if m.alive and m.raft_id not in in_conf]
    if newcomers:
        m = min(newcomers, key=lambda m: (m.order, m.raft_id))
        return ConfChange(ConfChangeType.ADD_LEARNER, m.raft_id)
    # 3. Promote caught-up learners until there are enough voters.
    if len(conf.voters) < target:
        ready = [members[r] for r in conf.learners
                 if r in members and members[r].alive and match.get(r, 0) >= commit]
        if ready:
            m = min(ready, key=lambda m: (m.order, m.raft_id))
            return ConfChange(ConfChangeType.ADD_NODE, m.raft_id)
    return None
