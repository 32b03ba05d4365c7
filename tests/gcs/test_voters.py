"""plan(): the leader's membership policy -- remove the dead, add newcomers as learners, promote."""

from __future__ import annotations

from meshcompute.gcs.voters import VALID_VOTER_COUNTS, MemberView, plan
from meshcompute.raft import ConfChange, ConfChangeType, ConfState

GRACE = 10.0
LEADER = 1


def alive(rid: int, order: int | None = None) -> MemberView:
    return MemberView(rid, True, 0.0, order=rid if order is None else order)


def dead(rid: int, gone_for: float, left: bool = False) -> MemberView:
    return MemberView(rid, False, gone_for, left=left, order=rid)


def members(*views: MemberView) -> dict[int, MemberView]:
    return {m.raft_id: m for m in views}


def caught_up(*rids: int, commit: int = 50) -> dict[int, int]:
    return dict.fromkeys(rids, commit)


def remove(rid: int) -> ConfChange:
    return ConfChange(ConfChangeType.REMOVE_NODE, rid)


def learner(rid: int) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_LEARNER, rid)


def promote(rid: int) -> ConfChange:
    return ConfChange(ConfChangeType.ADD_NODE, rid)


def run(conf: ConfState, ms: dict[int, MemberView], match: dict[int, int] | None = None, commit: int = 50,
        target: int = 3, grace: float = GRACE, leader: int = LEADER) -> ConfChange | None:
    if match is None:
        match = caught_up(*ms, commit=commit)
    return plan(conf, leader, ms, match, commit, target, grace)


def test_a_healthy_group_at_its_target_needs_no_change():
    conf = ConfState(voters={1, 2, 3})
    assert run(conf, members(alive(1), alive(2), alive(3))) is None


def test_a_dead_voter_is_kept_until_the_grace_period_is_over():
    conf = ConfState(voters={1, 2, 3})
    assert run(conf, members(alive(1), alive(2), dead(3, GRACE - 0.01))) is None
    assert run(conf, members(alive(1), alive(2), dead(3, GRACE))) == remove(3)
    assert run(conf, members(alive(1), alive(2), dead(3, GRACE * 100))) == remove(3)


def test_a_voter_that_left_is_removed_at_once():
    conf = ConfState(voters={1, 2, 3})
    assert run(conf, members(alive(1), alive(2), dead(3, 0.0, left=True))) == remove(3)


def test_an_alive_member_is_never_removed_whatever_gone_for_says():
    conf = ConfState(voters={1, 2, 3})
    stale = MemberView(3, True, GRACE * 10, order=3)
    assert run(conf, members(alive(1), alive(2), stale)) is None


def test_the_leader_is_never_removed():
    conf = ConfState(voters={1, 2, 3})
    ms = members(dead(1, GRACE * 10, left=True), alive(2), alive(3))
    assert run(conf, ms) is None
    # Another leader would remove node 1.
    assert run(conf, ms, leader=2) == remove(1)


def test_a_dead_learner_is_removed_after_the_grace_period():
    conf = ConfState(voters={1, 2, 3}, learners={4})
    assert run(conf, members(alive(1), alive(2), alive(3), dead(4, GRACE - 1))) is None
    assert run(conf, members(alive(1), alive(2), alive(3), dead(4, GRACE))) == remove(4)


def test_dead_voters_go_before_dead_learners_lowest_id_first():
    conf = ConfState(voters={1, 2, 3, 5}, learners={4})
    ms = members(alive(1), alive(2), dead(3, GRACE), dead(4, GRACE), dead(5, GRACE))
    assert run(conf, ms, target=5) == remove(3)
    conf = ConfState(voters={1, 2, 5}, learners={3, 4})
    assert run(conf, ms) == remove(5)


def test_a_member_unknown_to_gossip_is_left_alone():
    conf = ConfState(voters={1, 2, 3}, learners={4})
    # 3 and 4 are in the configuration but gossip has not heard of them (e.g. just restarted).
    assert run(conf, members(alive(1), alive(2)), match=caught_up(1, 2, 3, 4)) is None
    # Nor is an unknown learner promoted when a voter is missing.
    conf = ConfState(voters={1, 2}, learners={4})
    assert run(conf, members(alive(1), alive(2)), match=caught_up(1, 2, 4)) is None


def test_removal_comes_before_adding_or_promoting():
    conf = ConfState(voters={1, 2}, learners={4})
    ms = members(alive(1), alive(2), dead(4, GRACE), alive(6), alive(7))
    assert run(conf, ms) == remove(4)


def test_a_live_non_member_is_added_as_a_learner_lowest_order_first():
    conf = ConfState(voters={1, 2, 3})
    ms = members(alive(1), alive(2), alive(3), alive(4, order=9), alive(5, order=2), alive(6, order=7))
    assert run(conf, ms) == learner(5)


def test_newcomers_with_the_same_order_go_by_raft_id():
    conf = ConfState(voters={1, 2, 3})
    ms = members(alive(1), alive(2), alive(3), alive(9, order=4), alive(8, order=4))
    assert run(conf, ms) == learner(8)


def test_a_dead_non_member_is_not_added():
    conf = ConfState(voters={1, 2, 3})
    assert run(conf, members(alive(1), alive(2), alive(3), dead(4, 0.0))) is None


def test_adding_learners_comes_before_promoting():
    conf = ConfState(voters={1, 2}, learners={3})
    ms = members(alive(1), alive(2), alive(3), alive(4))
    assert run(conf, ms) == learner(4)


def test_a_caught_up_learner_is_promoted_while_voters_are_below_target():
    conf = ConfState(voters={1, 2}, learners={3})
    assert run(conf, members(alive(1), alive(2), alive(3)), match={1: 50, 2: 50, 3: 50}) == promote(3)
    assert run(conf, members(alive(1), alive(2), alive(3)), match={1: 50, 2: 50, 3: 60}) == promote(3)


def test_a_lagging_learner_is_not_promoted():
    conf = ConfState(voters={1, 2}, learners={3})
    assert run(conf, members(alive(1), alive(2), alive(3)), match={1: 50, 2: 50, 3: 49}) is None
    # No progress known at all counts as index 0.
    assert run(conf, members(alive(1), alive(2), alive(3)), match={1: 50, 2: 50}) is None


def test_the_caught_up_learner_is_chosen_over_an_earlier_lagging_one():
    conf = ConfState(voters={1, 2}, learners={3, 4})
    ms = members(alive(1), alive(2), alive(3, order=0), alive(4, order=5))
    assert run(conf, ms, match={3: 10, 4: 50}) == promote(4)


def test_among_caught_up_learners_the_earliest_registered_is_promoted():
    conf = ConfState(voters={1, 2}, learners={3, 4, 5})
    ms = members(alive(1), alive(2), alive(3, order=8), alive(4, order=6), alive(5, order=7))
    assert run(conf, ms) == promote(4)


def test_a_dead_learner_within_grace_is_not_promoted():
    conf = ConfState(voters={1, 2}, learners={3})
    assert run(conf, members(alive(1), alive(2), dead(3, 1.0))) is None


def test_nothing_is_promoted_when_voters_reach_the_target():
    conf = ConfState(voters={1, 2, 3}, learners={4, 5})
    ms = members(alive(1), alive(2), alive(3), alive(4), alive(5))
    assert run(conf, ms) is None
    assert run(conf, ms, target=5) == promote(4)


def test_voters_above_the_target_are_not_demoted():
    conf = ConfState(voters={1, 2, 3, 4, 5})
    ms = members(*(alive(i) for i in range(1, 6)))
    assert run(conf, ms, target=3) is None


def test_a_single_voter_group_grows_to_its_target_one_change_at_a_time():
    conf = ConfState(voters={1})
    ms = members(alive(1), alive(2), alive(3), alive(4))
    steps = []
    for _ in range(10):
        cc = run(conf, ms)
        if cc is None:
            break
        steps.append(cc)
        conf = conf.apply(cc)
    assert steps == [learner(2), learner(3), learner(4), promote(2), promote(3)]
    assert conf == ConfState(voters={1, 2, 3}, learners={4})


def test_a_dead_voter_is_replaced_by_removal_then_promotion():
    conf = ConfState(voters={1, 2, 3}, learners={4, 5})
    ms = members(alive(1), alive(2), dead(3, GRACE + 1), alive(4, order=7), alive(5, order=6))
    first = run(conf, ms)
    assert first == remove(3)
    conf = conf.apply(first)
    second = run(conf, ms)
    assert second == promote(5)
    conf = conf.apply(second)
    assert conf == ConfState(voters={1, 2, 5}, learners={4})
    assert run(conf, ms) is None


def test_valid_voter_counts_are_odd():
    assert VALID_VOTER_COUNTS == (1, 3, 5, 7)
