"""Progress (probe / replicate / snapshot) and Inflights flow control."""

from __future__ import annotations

from meshcompute.raft.progress import Inflights, Progress, ProgressState, ProgressTracker, VoteResult


def _pr(match: int, next_: int, state: ProgressState = ProgressState.PROBE) -> Progress:
    p = Progress(match, next_, 4)
    if state == ProgressState.REPLICATE:
        p.become_replicate()
        p.next = next_
    elif state == ProgressState.SNAPSHOT:
        p.become_snapshot(10)
    return p


def test_inflights_window() -> None:
    inf = Inflights(3)
    for i in (5, 7, 9):
        inf.add(i)
    assert inf.full()
    inf.free_le(7)
    assert inf.count() == 1 and not inf.full()
    inf.free_first_one()
    assert inf.count() == 0


def test_become_probe_after_snapshot_starts_past_it() -> None:
    p = _pr(1, 2, ProgressState.SNAPSHOT)
    p.become_probe()
    assert p.state == ProgressState.PROBE and p.next == 11


def test_become_replicate_resets_next() -> None:
    p = _pr(5, 9)
    p.become_replicate()
    assert (p.state, p.next) == (ProgressState.REPLICATE, 6)


def test_maybe_update() -> None:
    p = _pr(3, 5)
    p.probe_sent = True
    assert not p.maybe_update(2)  # stale
    assert p.maybe_update(6)
    assert (p.match, p.next, p.probe_sent) == (6, 7, False)


def test_maybe_decr_to_replicate() -> None:
    p = _pr(5, 10, ProgressState.REPLICATE)
    assert not p.maybe_decr_to(5, 0)  # rejection at or below match is stale
    assert p.maybe_decr_to(8, 0)
    assert p.next == 6


def test_maybe_decr_to_probe_uses_hint() -> None:
    p = _pr(0, 10)
    assert not p.maybe_decr_to(5, 3)  # not the outstanding probe
    p.probe_sent = True
    assert p.maybe_decr_to(9, 3)
    assert (p.next, p.probe_sent) == (4, False)
    # never below match+1
    p = _pr(6, 10)
    assert p.maybe_decr_to(9, 2)
    assert p.next == 7


def test_snapshot_state_ignores_rejections_and_is_paused() -> None:
    p = _pr(0, 5, ProgressState.SNAPSHOT)
    assert not p.maybe_decr_to(4, 1)
    assert p.is_paused()


def test_paused_states() -> None:
    p = _pr(0, 1)
    assert not p.is_paused()
    p.probe_sent = True
    assert p.is_paused()
    r = _pr(0, 1, ProgressState.REPLICATE)
    for i in range(4):
        r.inflights.add(i + 1)
    assert r.is_paused()


def test_tracker_committed_index_and_votes() -> None:
    t = ProgressTracker(4)
    t.voters = frozenset({1, 2, 3, 4, 5})
    for i, m in zip((1, 2, 3, 4, 5), (9, 7, 5, 3, 1)):
        t.progress[i] = Progress(m, m + 1, 4)
    assert t.committed_index() == 5  # third highest of five
    t.learners = frozenset({6})
    t.progress[6] = Progress(100, 101, 4, is_learner=True)
    assert t.committed_index() == 5  # learners never count
    t.record_vote(1, True)
    t.record_vote(2, True)
    assert t.tally_votes()[2] == VoteResult.PENDING
    t.record_vote(2, False)  # first answer wins
    t.record_vote(3, True)
    assert t.tally_votes() == (3, 0, VoteResult.WON)
    t.reset_votes()
    for i in (1, 2, 3):
        t.record_vote(i, False)
    assert t.tally_votes()[2] == VoteResult.LOST


def test_quorum_active() -> None:
    t = ProgressTracker(4)
    t.voters = frozenset({1, 2, 3})
    for i in (1, 2, 3):
        t.progress[i] = Progress(0, 1, 4)
    t.reset_recent_active(1)
    assert not t.quorum_active(1)
    t.progress[3].recent_active = True
    assert t.quorum_active(1)
