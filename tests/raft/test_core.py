"""The core beyond the paper's basic rules: thesis extensions (pre-vote, check-quorum,
leases, ReadIndex, membership changes, learners, leadership transfer), snapshots,
flow control, errors, and the Ready/advance contract."""

from __future__ import annotations

import pytest

from meshcompute.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfigError,
    ConfState,
    Entry,
    EntryType,
    InvalidConfChange,
    MemoryStorage,
    Message,
    MessageType,
    NotLeader,
    ProgressState,
    ProposalDropped,
    Raft,
    ReadState,
    StateType,
)
from meshcompute.raft.messages import decode_conf_entry, encode_conf_entry

from .helpers import Network, make_storage, msg, new_raft, persist, tick_n

MT = MessageType
ADD = ConfChangeType.ADD_NODE
LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE


def _leader_net(n: int = 3, **kw) -> Network:
    net = Network.of(n, **kw)
    net.campaign(1)
    assert net[1].role == StateType.LEADER
    return net


def _tick_all(net: Network, n: int) -> None:
    for _ in range(n):
        for r in net.peers.values():
            if r is not None:
                r.tick()
        net.send()


def _ready_collect(r: Raft) -> tuple[list[Message], list[Entry], list[ReadState]]:
    msgs, committed, reads = [], [], []
    while r.has_ready():
        rd = r.ready()
        r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # type: ignore[attr-defined]
        msgs += rd.messages + rd.messages_after_persist
        committed += rd.committed_entries
        reads += rd.read_states
        r.advance()
    return msgs, committed, reads


# --- pre-vote (thesis §9.6) ----------------------------------------------------


def test_pre_vote_does_not_change_term_or_vote() -> None:
    r = new_raft(1, pre_vote=True)
    r.campaign()
    rd = r.ready()
    assert r.role == StateType.PRE_CANDIDATE
    assert r.term == 0 and r.vote == NONE
    assert rd.hard_state is None  # nothing to persist: the pre-vote round is free
    assert sorted((m.type, m.to, m.term, m.index, m.log_term) for m in rd.messages) == [
        (MT.PRE_VOTE, 2, 1, 0, 0),
        (MT.PRE_VOTE, 3, 1, 0, 0),
    ]


def test_pre_vote_win_starts_real_election() -> None:
    r = new_raft(1, pre_vote=True)
    r.campaign()
    persist(r)
    r.step(msg(MT.PRE_VOTE_RESP, 2, 1, term=1))
    assert r.role == StateType.CANDIDATE and r.term == 1 and r.vote == 1
    out = persist(r)
    assert sorted((m.type, m.to, m.term) for m in out) == [(MT.VOTE, 2, 1), (MT.VOTE, 3, 1)]


def test_pre_vote_lost_returns_to_follower_same_term() -> None:
    r = new_raft(1, pre_vote=True, storage=make_storage(term=5))
    r.campaign()
    persist(r)
    r.step(msg(MT.PRE_VOTE_RESP, 2, 1, term=5, reject=True))
    r.step(msg(MT.PRE_VOTE_RESP, 3, 1, term=5, reject=True))
    assert r.role == StateType.FOLLOWER and r.term == 5


def test_pre_vote_rejected_for_stale_log() -> None:
    r = new_raft(1, pre_vote=True, storage=make_storage(terms=[1, 1], term=1))
    r.step(msg(MT.PRE_VOTE, 2, 1, term=2, log_term=1, index=1))
    out = persist(r)
    assert [(m.type, m.reject, m.term) for m in out] == [(MT.PRE_VOTE_RESP, True, 1)]
    assert r.term == 1  # a pre-vote request never moves our term


@pytest.mark.parametrize("pre_vote", [True, False])
def test_partitioned_node_disrupts_only_without_pre_vote(pre_vote: bool) -> None:
    """Thesis §9.6: a server that was partitioned away keeps timing out; without pre-vote
    it bumps its term each time and deposes the leader when it returns."""
    net = _leader_net(3, pre_vote=pre_vote)
    net.propose(1, b"x")
    net.isolate(3)
    for _ in range(5):
        tick_n(net[3], 20)
        net.send()
    assert (net[3].term > 1) == (not pre_vote)
    net.recover()
    _tick_all(net, 25)
    if pre_vote:
        assert net[1].role == StateType.LEADER
        assert {net[i].term for i in (1, 2, 3)} == {1}
    else:
        assert net[1].term > 1  # the returning node forced a new term
    # Either way the group ends up with one leader and identical logs.
    leaders = [i for i in (1, 2, 3) if net[i].role == StateType.LEADER]
    assert len(leaders) == 1


# --- check quorum (thesis §6.2) and leases (§4.2.3) --------------------------------


def test_check_quorum_leader_steps_down_without_quorum() -> None:
    net = _leader_net(3, check_quorum=True)
    et = net[1].cfg.election_tick
    net.isolate(1)
    _tick_all(net, et)  # first round: everybody was recently active at election
    assert net[1].role == StateType.LEADER
    for _ in range(et):
        net[1].tick()
        net.send()
    assert net[1].role == StateType.FOLLOWER
    assert net[1].lead == NONE


def test_check_quorum_leader_with_quorum_stays() -> None:
    net = _leader_net(3, check_quorum=True)
    net.isolate(3)
    for _ in range(5 * net[1].cfg.election_tick):
        net[1].tick()
        net[2].tick()
        net.send()
    assert net[1].role == StateType.LEADER


def test_lease_follower_ignores_votes_while_leader_is_alive() -> None:
    """Thesis §4.2.3: a server that heard from a leader within the minimum election
    timeout neither grants a vote nor updates its term."""
    r = new_raft(2, check_quorum=True)
    r.step(msg(MT.HEARTBEAT, 1, 2, term=1))
    persist(r)
    r.step(msg(MT.VOTE, 3, 2, term=2, log_term=0, index=0))
    assert r.term == 1
    assert persist(r) == []
    # After an election timeout without the leader, the vote is granted.
    tick_n(r, r.cfg.election_tick)
    r.step(msg(MT.VOTE, 3, 2, term=2, log_term=0, index=0))
    assert r.term == 2
    assert [(m.type, m.reject) for m in persist(r) if m.type == MT.VOTE_RESP] == [(MT.VOTE_RESP, False)]


def test_leadership_transfer_vote_bypasses_lease() -> None:
    r = new_raft(2, check_quorum=True)
    r.step(msg(MT.HEARTBEAT, 1, 2, term=1))
    persist(r)
    r.step(Message(MT.VOTE, to=2, frm=3, term=2, context=b"CampaignTransfer"))
    assert r.term == 2 and r.vote == 3


def test_removed_or_partitioned_node_cannot_disrupt_with_check_quorum() -> None:
    net = _leader_net(3, check_quorum=True, pre_vote=True)
    net.cut_link(1, 3)  # 3 no longer hears the leader, 2 still does
    for _ in range(60):
        net[1].tick()
        net[2].tick()
        net[3].tick()
        net.send()
    assert net[1].role == StateType.LEADER and net[1].term == 1
    assert net[2].term == 1


# --- ReadIndex (thesis §6.4) ------------------------------------------------------------


def test_read_index_single_node_is_immediate() -> None:
    r = new_raft(1, (1,))
    r.campaign()
    persist(r)
    r.read_index(b"ctx")
    _, _, reads = _ready_collect(r)
    assert reads == [ReadState(r.log.committed, b"ctx")]


def test_read_index_needs_heartbeat_quorum() -> None:
    net = _leader_net(3)
    net.propose(1, b"x")
    lead = net[1]
    commit = lead.log.committed
    net.isolate(1)
    lead.read_index(b"r1")
    net.send()
    assert lead.read_states == []  # no quorum confirmed leadership yet
    net.recover()
    lead.read_index(b"r2")
    beats = [m for m in persist(lead) if m.type == MT.HEARTBEAT]
    assert {m.context for m in beats} == {b"r2"}
    for m in beats:
        net[m.to].step(m)
    for m in persist(net[2]):
        lead.step(m)
    # One ack + the leader itself is a quorum; r2's confirmation also covers r1.
    _, _, reads = _ready_collect(lead)
    assert reads == [ReadState(commit, b"r1"), ReadState(commit, b"r2")]


def test_read_index_waits_for_first_commit_of_term() -> None:
    """Thesis §6.4 step 1: a new leader must commit an entry of its term first, or its
    commit index may be stale."""
    r = new_raft(1)
    r.campaign()
    persist(r)
    r.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    persist(r)  # no-op sent, not yet acked
    r.read_index(b"early")
    assert [m for m in persist(r) if m.type == MT.HEARTBEAT] == []
    r.step(msg(MT.APP_RESP, 2, 1, term=1, index=1))
    beats = [m for m in persist(r) if m.type == MT.HEARTBEAT and m.context == b"early"]
    assert beats
    r.step(msg(MT.HEARTBEAT_RESP, 2, 1, term=1, context=b"early"))
    _, _, reads = _ready_collect(r)
    assert reads == [ReadState(1, b"early")]


def test_read_index_forwarded_from_follower() -> None:
    net = _leader_net(3)
    net.propose(1, b"x")
    f = net[2]
    f.read_index(b"f1")
    net.send()
    assert [(m.type, m.to) for m in net.delivered if m.context == b"f1"][0] == (MT.READ_INDEX, 1)
    assert net.read_states[2] == [ReadState(net[1].log.committed, b"f1")]
    assert net.read_states[1] == []  # answered to the follower, not surfaced on the leader


def test_read_index_on_follower_without_leader_raises() -> None:
    r = new_raft(2)
    with pytest.raises(NotLeader) as ei:
        r.read_index(b"x")
    assert ei.value.leader_hint == NONE
    assert "no leader is known" in str(ei.value)


def test_read_index_dropped_when_leader_steps_down() -> None:
    net = _leader_net(3)
    net.propose(1, b"x")
    lead = net[1]
    lead.read_index(b"r")
    persist(lead)  # heartbeats lost
    lead.step(msg(MT.APP, 2, 1, term=5))
    assert lead.role == StateType.FOLLOWER
    lead.step(msg(MT.HEARTBEAT_RESP, 2, 1, term=5, context=b"r"))
    _, _, reads = _ready_collect(lead)
    assert reads == []


# --- proposals and errors -------------------------------------------------------------


def test_propose_on_follower_raises_not_leader_with_hint() -> None:
    net = _leader_net(3)
    with pytest.raises(NotLeader) as ei:
        net[2].propose(b"x")
    assert ei.value.leader_hint == 1
    assert ei.value.node_id == 2
    assert "retry on node 1" in str(ei.value)


def test_propose_during_transfer_is_dropped() -> None:
    net = _leader_net(3)
    net.isolate(3)
    net[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped, match="transfer to 3 is in progress"):
        net[1].propose(b"x")


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="election_tick"):
        Config(id=1, election_tick=1, heartbeat_tick=1)
    with pytest.raises(ConfigError, match="Config.id"):
        Config(id=0)
    with pytest.raises(ConfigError, match="max_inflight_msgs"):
        Config(id=1, max_inflight_msgs=0)


def test_ready_contract_is_enforced() -> None:
    r = new_raft(1)
    with pytest.raises(RuntimeError):
        r.advance()
    r.campaign()
    r.ready()
    with pytest.raises(RuntimeError):
        r.ready()


def test_soft_state_reported_once() -> None:
    r = new_raft(1, (1,))
    r.campaign()
    seen = []
    while r.has_ready():
        rd = r.ready()
        r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # type: ignore[attr-defined]
        if rd.soft_state is not None:
            seen.append(rd.soft_state.role)
        r.advance()
    assert seen == [StateType.CANDIDATE, StateType.LEADER]
    assert not r.has_ready()


# --- replication and flow control -------------------------------------------------------


def test_max_size_per_msg_limits_entries() -> None:
    net = Network.of(3)
    for i in (1, 2, 3):
        net.peers[i] = new_raft(i, storage=make_storage(), max_size_per_msg=40)
    net.campaign(1)
    net.isolate(2)
    for _ in range(5):
        net.propose(1, b"0123456789")  # 26 bytes each with overhead
    net.recover()
    net.heartbeat(1)
    sizes = [len(m.entries) for m in net.delivered if m.type == MT.APP and m.to == 2 and m.entries]
    assert sizes and max(sizes) == 1
    assert net[2].log.last_index() == net[1].log.last_index()


def test_inflight_window_pauses_replication() -> None:
    r = new_raft(1, max_inflight_msgs=2)
    r.campaign()
    persist(r)
    r.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    for m in persist(r):
        if m.type == MT.APP and m.to == 2:
            r.step(msg(MT.APP_RESP, 2, 1, term=1, index=m.index + len(m.entries)))
    persist(r)
    assert r.trk.progress[2].state == ProgressState.REPLICATE
    sent = []
    for i in range(5):
        r.propose(b"%d" % i)
        sent += [m for m in persist(r) if m.type == MT.APP and m.to == 2 and m.entries]
    assert len(sent) == 2  # window full after two messages
    assert r.trk.progress[2].is_paused()
    r.step(msg(MT.APP_RESP, 2, 1, term=1, index=sent[0].index + 1))
    more = [m for m in persist(r) if m.type == MT.APP and m.to == 2 and m.entries]
    assert len(more) == 1  # one slot freed, one more message (carrying the backlog)


def test_probe_sends_one_message_per_heartbeat() -> None:
    r = new_raft(1)
    r.campaign()
    persist(r)
    r.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    persist(r)  # first probe to 2 is outstanding
    assert r.trk.progress[2].state == ProgressState.PROBE and r.trk.progress[2].probe_sent
    r.propose(b"a")
    r.propose(b"b")
    assert [m for m in persist(r) if m.type == MT.APP and m.to == 2] == []
    r.step(msg(MT.HEARTBEAT_RESP, 2, 1, term=1))
    apps = [m for m in persist(r) if m.type == MT.APP and m.to == 2]
    assert len(apps) == 1


def test_stale_rejection_is_ignored() -> None:
    r = new_raft(1)
    r.campaign()
    persist(r)
    r.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    persist(r)
    pr = r.trk.progress[2]
    nxt = pr.next
    r.step(msg(MT.APP_RESP, 2, 1, term=1, index=nxt - 5, reject=True, reject_hint=0))
    assert pr.next == nxt


# --- snapshots (§7) -----------------------------------------------------------------------


def _lagging_follower_net() -> Network:
    net = _leader_net(3)
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"v%d" % i)
    lead = net[1]
    lead.compact(lead.log.applied, b"image@%d" % lead.log.applied)
    net.recover()
    return net


def test_lagging_follower_receives_snapshot() -> None:
    net = _lagging_follower_net()
    lead, f = net[1], net[3]
    snap_index = lead.log.first_index() - 1
    net.heartbeat(1)
    snaps = [m for m in net.delivered if m.type == MT.SNAP]
    assert len(snaps) == 1 and snaps[0].snapshot is not None
    assert snaps[0].snapshot.index == snap_index
    assert snaps[0].snapshot.metadata.conf_state == ConfState(voters=frozenset({1, 2, 3}))
    assert f.log.first_index() - 1 == snap_index
    assert f.log.committed == lead.log.committed
    assert lead.trk.progress[3].state == ProgressState.REPLICATE
    assert f.log.storage.snapshot().data == b"image@%d" % snap_index  # type: ignore[attr-defined]


def test_snapshot_ready_comes_before_entries_to_apply() -> None:
    net = _lagging_follower_net()
    f = net[3]
    lead = net[1]
    snap = lead.log.storage.snapshot()  # type: ignore[attr-defined]
    f.step(Message(MT.SNAP, to=3, frm=1, term=lead.term, snapshot=snap))
    rd = f.ready()
    assert rd.snapshot == snap
    assert rd.committed_entries == []  # the state machine restores from the snapshot instead
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [(MT.APP_RESP, snap.index)]


def test_follower_ignores_old_snapshot_and_fast_forwards_matching_one() -> None:
    net = _leader_net(3)
    for i in range(3):
        net.propose(1, b"%d" % i)
    lead, f = net[1], net[2]
    lead.compact(lead.log.applied, b"img")
    snap = lead.log.storage.snapshot()  # type: ignore[attr-defined]
    last = f.log.last_index()
    f.step(Message(MT.SNAP, to=2, frm=1, term=lead.term, snapshot=snap))
    rd = f.ready()
    assert rd.snapshot is None  # already committed: nothing to install
    assert f.log.last_index() == last


def test_snapshot_failure_returns_progress_to_probe() -> None:
    net = _lagging_follower_net()
    lead = net[1]
    net.ignore(MT.SNAP)
    net.heartbeat(1)
    assert lead.trk.progress[3].state == ProgressState.SNAPSHOT
    lead.report_snapshot(3, ok=False)
    pr = lead.trk.progress[3]
    assert pr.state == ProgressState.PROBE and pr.probe_sent
    net.recover()
    net.heartbeat(1)
    assert net[3].log.committed == lead.log.committed


def test_compact_requires_applied() -> None:
    net = _leader_net(3)
    with pytest.raises(ValueError, match="applied"):
        net[1].compact(net[1].log.applied + 1, b"")


# --- membership: single-server changes and learners (thesis §4) -------------------------------


def _add_node(net: Network, node_id: int) -> Raft:
    r = new_raft(node_id, peers=(), storage=MemoryStorage())
    net.peers[node_id] = r
    return r


def test_add_learner_receives_log_but_does_not_vote() -> None:
    net = _leader_net(3)
    net.propose(1, b"a")
    learner = _add_node(net, 4)
    net[1].propose_conf_change(ConfChange(LEARNER, 4))
    net.send()
    net.propose(1, b"b")
    assert [e.data for e in learner.log.all_entries()][-1] == b"b"
    assert learner.conf_state == ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    assert net[1].trk.progress[4].is_learner
    # A learner never campaigns.
    tick_n(learner, 100)
    assert learner.role == StateType.FOLLOWER and learner.term == 1
    # And does not count towards commit: with 2 and 3 gone, nothing commits.
    net.isolate(2)
    net.isolate(3)
    c = net[1].log.committed
    net.propose(1, b"c")
    assert net[1].log.committed == c


def test_promote_learner_to_voter() -> None:
    net = _leader_net(3)
    _add_node(net, 4)
    net[1].propose_conf_change(ConfChange(LEARNER, 4))
    net.send()
    net[1].propose_conf_change(ConfChange(ADD, 4))
    net.send()
    for i in (1, 2, 3, 4):
        assert net[i].conf_state == ConfState(voters=frozenset({1, 2, 3, 4}))
    assert not net[1].trk.progress[4].is_learner
    # Now 4 counts: with 2 and 3 gone, {1, 4} is not a majority of 4 ...
    net.isolate(2)
    net.isolate(3)
    c = net[1].log.committed
    net.propose(1, b"x")
    assert net[1].log.committed == c
    # ... but with 3 back, {1, 3, 4} is.
    net.recover()
    net.isolate(2)
    net.heartbeat(1)
    assert net[1].log.committed > c


def test_config_takes_effect_on_append_not_commit() -> None:
    """Thesis §4.1: "a server always uses the latest configuration in its log,
    regardless of whether the entry is committed"."""
    net = _leader_net(3)
    net.cut_link(1, 3)
    net.ignore(MT.APP_RESP)  # nothing commits
    idx = net[1].propose_conf_change(ConfChange(REMOVE, 3))
    net.send()
    assert net[2].log.committed < idx
    assert net[2].conf_state.voters == frozenset({1, 2})
    assert net[1].conf_state.voters == frozenset({1, 2})
    assert 3 not in net[1].trk.progress


def test_truncated_conf_entry_reverts_configuration() -> None:
    r = new_raft(2)
    cc = Entry(1, 2, EntryType.CONF_CHANGE,
               encode_conf_entry(ConfChange(LEARNER, 4), ConfState(frozenset({1, 2, 3}), frozenset({4}))))
    r.step(msg(MT.APP, 1, 2, term=1, entries=(Entry(1, 1), cc)))
    persist(r)
    assert r.conf_state.learners == frozenset({4})
    # A new leader of term 2 overwrites index 2.
    r.step(msg(MT.APP, 3, 2, term=2, index=1, log_term=1, entries=(Entry(2, 2),)))
    persist(r)
    assert r.conf_state == ConfState(voters=frozenset({1, 2, 3}))


def test_one_conf_change_at_a_time() -> None:
    net = _leader_net(3)
    net.ignore(MT.APP_RESP)
    net[1].propose_conf_change(ConfChange(LEARNER, 4))
    with pytest.raises(ProposalDropped, match="not committed yet"):
        net[1].propose_conf_change(ConfChange(LEARNER, 5))
    net.recover()
    net.heartbeat(1)
    net[1].propose_conf_change(ConfChange(LEARNER, 5))


def test_conf_change_waits_for_first_commit_of_term() -> None:
    r = new_raft(1)
    r.campaign()
    persist(r)
    r.step(msg(MT.VOTE_RESP, 2, 1, term=1))
    persist(r)
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(LEARNER, 4))
    r.step(msg(MT.APP_RESP, 2, 1, term=1, index=1))
    r.propose_conf_change(ConfChange(LEARNER, 4))


@pytest.mark.parametrize(
    "cc,match",
    [
        (ConfChange(ADD, 2), "already a voter"),
        (ConfChange(REMOVE, 9), "not a member"),
        (ConfChange(ADD, 0), "positive"),
    ],
)
def test_invalid_conf_changes(cc: ConfChange, match: str) -> None:
    net = _leader_net(3)
    with pytest.raises(InvalidConfChange, match=match):
        net[1].propose_conf_change(cc)


def test_cannot_remove_last_voter() -> None:
    r = new_raft(1, (1,))
    r.campaign()
    persist(r)
    with pytest.raises(InvalidConfChange, match="without voters"):
        r.propose_conf_change(ConfChange(REMOVE, 1))


def test_removed_leader_steps_down_once_removal_commits() -> None:
    """Thesis §4.2.2: the leader manages the cluster until the C_new entry commits,
    without counting itself, then steps down."""
    net = _leader_net(3)
    lead = net[1]
    net.ignore(MT.APP_RESP)
    idx = lead.propose_conf_change(ConfChange(REMOVE, 1))
    net.send()
    assert lead.role == StateType.LEADER  # not committed yet
    assert lead.trk.committed_index() < idx
    net.recover()
    net.heartbeat(1)
    assert lead.role == StateType.FOLLOWER
    assert not lead.promotable()
    # The others elect a new leader; the removed node never campaigns.
    _tick_all(net, 40)
    leaders = [i for i in (2, 3) if net[i].role == StateType.LEADER]
    assert len(leaders) == 1
    assert lead.role == StateType.FOLLOWER


def test_restart_recovers_configuration_from_log() -> None:
    net = _leader_net(3)
    net[1].propose_conf_change(ConfChange(LEARNER, 4))
    net.send()
    st = net[2].log.storage
    r = Raft(Config(id=2), st)
    assert r.conf_state == ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))


def test_conf_entry_carries_full_configuration() -> None:
    data = encode_conf_entry(ConfChange(ADD, 4), ConfState(frozenset({1, 4}), frozenset({7})))
    assert decode_conf_entry(data) == (ConfChange(ADD, 4), ConfState(frozenset({1, 4}), frozenset({7})))
    with pytest.raises(ValueError):
        decode_conf_entry(b"garbage")


# --- leadership transfer (thesis §3.10) ----------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    net = _leader_net(3, check_quorum=True)
    net.propose(1, b"x")
    net[1].transfer_leadership(2)
    net.send()
    assert net[2].role == StateType.LEADER
    assert net[1].role == StateType.FOLLOWER
    assert net[1].lead == 2


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = _leader_net(3)
    net.isolate(3)
    for i in range(3):
        net.propose(1, b"%d" % i)
    net.recover()
    net[1].transfer_leadership(3)
    net.send()
    assert net[3].role == StateType.LEADER
    assert any(m.type == MT.TIMEOUT_NOW for m in net.delivered)


def test_transfer_aborts_after_election_timeout() -> None:
    net = _leader_net(3)
    net.isolate(3)
    lead = net[1]
    lead.transfer_leadership(3)
    assert lead.lead_transferee == 3
    tick_n(lead, lead.cfg.election_tick)
    assert lead.lead_transferee == NONE
    lead.propose(b"ok again")


def test_transfer_to_non_voter_rejected() -> None:
    net = _leader_net(3)
    with pytest.raises(InvalidConfChange):
        net[1].transfer_leadership(9)
    with pytest.raises(NotLeader):
        net[2].transfer_leadership(3)
