"""The rules of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", extended version), one test per rule sentence, after
etcd-io/raft's raft_paper_test.go. Each test cites the section it checks.

These tests run with pre-vote and check-quorum off, as in the paper; the
thesis extensions are tested in test_core.py.
"""

from __future__ import annotations

import random

import pytest

from meshcompute.raft import (
    NONE,
    Config,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    Raft,
    StateType,
)

from .helpers import Network, make_storage, msg, new_raft, persist, tick_n

MT = MessageType


def _become_candidate(r: Raft) -> None:
    r.campaign()
    persist(r)


def _become_leader(r: Raft, ack: bool = True) -> list[Message]:
    """Campaign and collect every vote. With ``ack``, every follower also acks the
    leader's no-op (so it is committed and followers are in the replicate state);
    otherwise the leader's first messages are returned untouched."""
    r.campaign()
    persist(r)
    for v in sorted(r.trk.voters - {r.id}):
        r.step(msg(MT.VOTE_RESP, v, r.id, term=r.term))
    assert r.role == StateType.LEADER
    out = persist(r)
    if not ack:
        return out
    for m in out:
        if m.type == MT.APP:
            r.step(msg(MT.APP_RESP, m.to, r.id, term=r.term, index=m.index + len(m.entries)))
    persist(r)
    return []


# --- §5.1 ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_update_term_from_message(role: str) -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it updates
    its current term to the larger value. If a candidate or leader discovers that its
    term is out of date, it immediately reverts to follower state." """
    r = new_raft(1)
    if role == "candidate":
        _become_candidate(r)
    elif role == "leader":
        _become_leader(r)
    r.step(msg(MT.APP, 2, 1, term=2))
    assert r.term == 2
    assert r.role == StateType.FOLLOWER


def test_reject_stale_term_message() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the request." """
    r = new_raft(1, storage=make_storage(term=2))
    before = r.log.last_index()
    r.step(msg(MT.APP, 2, 1, term=1, entries=(Entry(1, 1),)))
    assert r.log.last_index() == before
    assert r.term == 2
    assert persist(r) == []  # plain Raft: silently ignored


def test_stale_leader_is_told_the_newer_term_with_check_quorum() -> None:
    """Thesis §6.2/§9.6: with check-quorum or pre-vote a stale leader would never learn
    the new term from vote requests, so a stale AppendEntries is answered with our term."""
    r = new_raft(1, storage=make_storage(term=2), check_quorum=True)
    r.step(msg(MT.APP, 2, 1, term=1))
    out = persist(r)
    assert [(m.type, m.to, m.term) for m in out] == [(MT.APP_RESP, 2, 2)]


# --- §5.2 ---------------------------------------------------------------------


def test_start_as_follower() -> None:
    """§5.2: "When servers start up, they begin as followers." """
    r = new_raft(1)
    assert r.role == StateType.FOLLOWER
    assert r.term == 0


def test_leader_bcast_beat() -> None:
    """§5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log
    entries) to all followers in order to maintain their authority." """
    hb = 2
    r = new_raft(1, heartbeat=hb)
    _become_leader(r)
    r.tick()
    assert [m for m in persist(r) if m.type == MT.HEARTBEAT] == []
    r.tick()
    beats = [m for m in persist(r) if m.type == MT.HEARTBEAT]
    assert sorted((m.to, m.term, m.entries, m.commit) for m in beats) == [(2, 1, (), 1), (3, 1, (), 1)]


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_nonleader_start_election(role: str) -> None:
    """§5.2: "If a follower receives no communication over a period of time called the
    election timeout, then it ... begins an election. To begin an election, a follower
    increments its current term and transitions to candidate state. It then votes for
    itself and issues RequestVote RPCs in parallel to each of the other servers."
    "A candidate ... times out and starts a new election by incrementing its term." """
    et = 10
    r = new_raft(1, election=et)
    if role == "candidate":
        _become_candidate(r)
    start = r.term
    ticks = 0
    while r.term == start:
        r.tick()
        ticks += 1
    assert et <= ticks < 2 * et
    out = persist(r)
    assert r.term == start + 1
    assert r.role == StateType.CANDIDATE
    assert r.vote == 1
    assert r.trk.votes == {1: True}
    votes = sorted((m.to, m.type, m.term) for m in out)
    assert votes == [(2, MT.VOTE, start + 1), (3, MT.VOTE, start + 1)]


@pytest.mark.parametrize(
    "size,votes,state",
    [
        (1, {}, StateType.LEADER),
        (3, {2: True, 3: True}, StateType.LEADER),
        (3, {2: True}, StateType.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, StateType.LEADER),
        (5, {2: True, 3: True, 4: True}, StateType.LEADER),
        (5, {2: True, 3: True}, StateType.LEADER),
        (3, {2: False, 3: False}, StateType.FOLLOWER),
        (5, {2: False, 3: False, 4: False, 5: False}, StateType.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, StateType.FOLLOWER),
        (3, {}, StateType.CANDIDATE),
        (5, {2: True}, StateType.CANDIDATE),
        (5, {2: False, 3: False}, StateType.CANDIDATE),
        (5, {}, StateType.CANDIDATE),
    ],
)
def test_leader_election_in_one_round_rpc(size: int, votes: dict[int, bool], state: StateType) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the
    servers in the full cluster for the same term." / "If it loses, it returns to
    follower state; with neither, it remains a candidate." """
    ids = tuple(range(1, size + 1))
    r = new_raft(1, ids)
    r.campaign()
    persist(r)
    for i, granted in votes.items():
        r.step(msg(MT.VOTE_RESP, i, 1, term=r.term, reject=not granted))
    assert r.role == state
    assert r.term == 1


@pytest.mark.parametrize(
    "vote,nvote,granted",
    [(NONE, 2, True), (NONE, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_follower_vote(vote: int, nvote: int, granted: bool) -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." """
    r = new_raft(1, storage=make_storage(term=1, vote=vote))
    r.step(msg(MT.VOTE, nvote, 1, term=1))
    out = persist(r)
    assert [(m.type, m.to, m.term, m.reject) for m in out] == [(MT.VOTE_RESP, nvote, 1, not granted)]


@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term: int) -> None:
    """§5.2: "If the AppendEntries RPC is from a leader whose term is at least as large as
    the candidate's current term, then the candidate recognizes the leader as legitimate
    and returns to follower state." """
    r = new_raft(1)
    _become_candidate(r)
    assert r.role == StateType.CANDIDATE
    r.step(msg(MT.APP, 2, 1, term=term))
    assert r.role == StateType.FOLLOWER
    assert r.term == term
    assert r.lead == 2


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_election_timeout_randomized(role: str) -> None:
    """§5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed
    interval", here [election_tick, 2*election_tick), drawn from the injected RNG."""
    et = 10
    seen = set()
    r = new_raft(1, election=et)
    for _ in range(50 * et):
        if role == "follower":
            r.become_follower(r.term + 1, 2)
        else:
            r.become_candidate()
        term, ticks = r.term, 0
        while r.term == term:
            r.tick()
            ticks += 1
        seen.add(ticks)
    assert seen == set(range(et, 2 * et))


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_election_timeout_nonconflict(role: str) -> None:
    """§5.2: randomized timeouts spread out the servers "so that in most cases only a
    single server will time out before the others"."""
    et, size, rounds, conflicts = 10, 5, 200, 0
    ids = tuple(range(1, size + 1))
    for k in range(rounds):
        rafts = [new_raft(i, ids, election=et, seed=k * 100 + i) for i in ids]
        for r in rafts:
            if role == "follower":
                r.become_follower(r.term + 1, NONE)
            else:
                r.become_candidate()
        fired = 0
        while not fired:
            terms = [r.term for r in rafts]
            for r in rafts:
                r.tick()
            fired = sum(1 for r, t in zip(rafts, terms) if r.term != t)
        if fired > 1:
            conflicts += 1
    assert conflicts / rounds <= 0.3


# --- §5.3 ---------------------------------------------------------------------


def test_leader_start_replication() -> None:
    """§5.3: "The leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers to replicate the entry." """
    r = new_raft(1)
    _become_leader(r)
    li = r.log.last_index()
    idx = r.propose(b"some data")
    assert idx == li + 1
    out = [m for m in persist(r) if m.type == MT.APP]
    want = (Entry(term=1, index=li + 1, data=b"some data"),)
    assert sorted((m.to, m.index, m.log_term, m.commit, m.entries) for m in out) == [
        (2, li, 1, li, want),
        (3, li, 1, li, want),
    ]
    assert r.log.unstable.entries == []  # persisted by the Ready
    assert r.log.last_index() == li + 1


def test_leader_commit_entry() -> None:
    """§5.3: "When the entry has been safely replicated, the leader applies the entry to
    its state machine and returns the result of that execution to the client." and "The
    leader keeps track of the highest index it knows to be committed, and it includes that
    index in future AppendEntries RPCs." """
    r = new_raft(1)
    _become_leader(r)
    li = r.log.last_index()
    r.propose(b"some data")
    for m in persist(r):
        if m.type == MT.APP:
            r.step(msg(MT.APP_RESP, m.to, 1, term=1, index=m.index + len(m.entries)))
    assert r.log.committed == li + 1
    rd = r.ready()
    assert [e.data for e in rd.committed_entries] == [b"some data"]
    r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # type: ignore[attr-defined]
    apps = [m for m in rd.messages if m.type == MT.APP]
    r.advance()
    assert sorted((m.to, m.commit) for m in apps) == [(2, li + 1), (3, li + 1)]


@pytest.mark.parametrize(
    "size,acceptors,committed",
    [
        (1, set(), True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_leader_acknowledge_commit(size: int, acceptors: set[int], committed: bool) -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has
    replicated it on a majority of the servers." """
    ids = tuple(range(1, size + 1))
    r = new_raft(1, ids)
    _become_leader(r, ack=False)
    li = r.log.last_index()
    r.propose(b"some data")
    persist(r)
    for a in acceptors:
        r.step(msg(MT.APP_RESP, a, 1, term=1, index=li + 1))
    assert (r.log.committed == li + 1) == committed
    assert r.log.committed in (0, li + 1)


@pytest.mark.parametrize("terms", [[], [2], [1, 1], [1, 2]])
def test_leader_commit_preceding_entries(terms: list[int]) -> None:
    """§5.3: "This also commits all preceding entries in the leader's log, including
    entries created by previous leaders." """
    st = make_storage(terms=terms, term=2)
    r = new_raft(1, storage=st)
    _become_leader(r, ack=False)
    assert r.term == 3
    li = r.propose(b"some data")
    persist(r)
    r.step(msg(MT.APP_RESP, 2, 1, term=3, index=li))
    assert r.log.committed == li
    assert [(e.term, e.index, e.data) for e in r.log.slice(1, li + 1)] == (
        [(t, i + 1, b"") for i, t in enumerate(terms)]
        + [(3, len(terms) + 1, b""), (3, len(terms) + 2, b"some data")]
    )


@pytest.mark.parametrize("n,commit", [(1, 1), (2, 2), (2, 1), (2, 0)])
def test_follower_commit_entry(n: int, commit: int) -> None:
    """§5.3: "Once a follower learns that a log entry is committed, it applies the entry
    to its local state machine (in log order)." """
    r = new_raft(1)
    r.become_follower(1, 2)
    es = tuple(Entry(term=1, index=i + 1, data=f"data{i}".encode()) for i in range(n))
    r.step(msg(MT.APP, 2, 1, term=1, entries=es, commit=commit))
    assert r.log.committed == commit
    rd = r.ready()
    assert list(rd.committed_entries) == list(es[:commit])


@pytest.mark.parametrize(
    "term,index,windex,wreject,whint,wconflict",
    [
        # match with committed entries
        (0, 0, 1, False, 0, 0),
        (1, 1, 1, False, 0, 0),
        # match with uncommitted entries
        (2, 2, 2, False, 0, 0),
        # unmatch with existing entry: our term at 2 is 2, first index of term 2 is 2
        (1, 2, 2, True, 2, 2),
        # unexisting entry: our log ends at 2
        (3, 3, 3, True, 2, 0),
    ],
)
def test_follower_check_msg_app(term: int, index: int, windex: int, wreject: bool, whint: int,
                                wconflict: int) -> None:
    """§5.3: "When sending an AppendEntries RPC, the leader includes the index and term of
    the entry in its log that immediately precedes the new entries. If the follower does
    not find an entry in its log with the same index and term, then it refuses the new
    entries." The refusal carries a hint (conflict term and its first index, or our last
    index) for fast back-off."""
    st = make_storage(terms=[1, 2], term=0, commit=1)
    r = new_raft(1, storage=st)
    r.become_follower(2, 2)
    r.step(msg(MT.APP, 2, 1, term=2, log_term=term, index=index))
    out = persist(r)
    assert [(m.type, m.index, m.reject, m.reject_hint, m.log_term) for m in out] == [
        (MT.APP_RESP, windex, wreject, whint, wconflict)
    ]


@pytest.mark.parametrize(
    "index,term,new,want",
    [
        (2, 2, [(3, 3)], [(1, 1), (2, 2), (3, 3)]),
        (1, 1, [(3, 2), (4, 3)], [(1, 1), (3, 2), (4, 3)]),
        (0, 0, [(1, 1)], [(1, 1), (2, 2)]),
        (0, 0, [(3, 1)], [(3, 1)]),
    ],
)
def test_follower_append_entries(index: int, term: int, new: list[tuple[int, int]],
                                 want: list[tuple[int, int]]) -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but different
    terms), delete the existing entry and all that follow it; append any new entries
    not already in the log." (new/want are (term, index) pairs.)"""
    r = new_raft(1, storage=make_storage(terms=[1, 2]))
    r.become_follower(2, 2)
    es = tuple(Entry(term=t, index=i) for t, i in new)
    r.step(msg(MT.APP, 2, 1, term=2, log_term=term, index=index, entries=es))
    persist(r)
    assert [(e.term, e.index) for e in r.log.all_entries()] == want


# Figure 7: the leader's log, and six possible follower logs (terms by index).
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIG7_FOLLOWERS))
def test_leader_sync_follower_log(case: str) -> None:
    """§5.3 / Figure 7: "the leader handles inconsistencies by forcing the followers' logs
    to duplicate its own" -- every follower log of Figure 7 converges to the leader's."""
    term = 8
    lead = new_raft(1, storage=make_storage(terms=FIG7_LEADER, term=term, commit=len(FIG7_LEADER)))
    follower = new_raft(2, storage=make_storage(terms=FIG7_FOLLOWERS[case], term=term - 1))
    # A third node that votes for the leader and otherwise stays out of the way.
    voter = new_raft(3, storage=make_storage(terms=[], term=term - 1))
    net = Network(lead, follower, voter)
    # The leader at term 8 is elected with the vote of node 3 (node 2 may refuse).
    lead._reset(term)  # as if it had just bumped to term 8
    lead.become_follower(term, NONE)
    net.campaign(1)
    assert lead.role == StateType.LEADER
    net.propose(1, b"")
    lead_ents = [(e.term, e.index) for e in lead.log.all_entries()]
    assert [(e.term, e.index) for e in follower.log.all_entries()] == lead_ents


def test_leader_sync_uses_few_round_trips() -> None:
    """§5.3 fast back-off: with conflict-term hints the leader skips a whole term per
    rejection, so Figure 7 (f) takes a handful of probes, not one per entry."""
    term = 8
    lead = new_raft(1, storage=make_storage(terms=FIG7_LEADER, term=term, commit=len(FIG7_LEADER)))
    follower = new_raft(2, storage=make_storage(terms=FIG7_FOLLOWERS["f"], term=term - 1))
    voter = new_raft(3, storage=make_storage(terms=[], term=term - 1))
    net = Network(lead, follower, voter)
    lead._reset(term)
    lead.become_follower(term, NONE)
    net.campaign(1)
    rejections = [m for m in net.delivered if m.type == MT.APP_RESP and m.reject and m.frm == 2]
    # f's log: terms 2 and 3 are unknown to the leader; one rejection per term at most.
    assert 1 <= len(rejections) <= 3


# --- §5.4 ---------------------------------------------------------------------


def test_vote_request() -> None:
    """§5.4.1: the RequestVote RPC carries the candidate's last log index and term."""
    r = new_raft(1, storage=make_storage(terms=[1, 2, 2]))
    r.step(msg(MT.APP, 2, 1, term=3, log_term=2, index=3, entries=(Entry(3, 4),)))
    persist(r)
    tick_n(r, 20)
    out = [m for m in persist(r) if m.type == MT.VOTE]
    assert sorted((m.to, m.term, m.index, m.log_term) for m in out) == [(2, 4, 4, 3), (3, 4, 4, 3)]


@pytest.mark.parametrize(
    "voter_terms,logterm,index,granted",
    [
        # same last term: the longer log is more up-to-date
        ([1], 1, 1, True),
        ([1], 1, 2, True),
        ([1, 1], 1, 1, False),
        # candidate has the higher last term
        ([1], 2, 1, True),
        ([1], 2, 2, True),
        ([1, 1], 2, 1, True),
        # voter has the higher last term
        ([2], 1, 1, False),
        ([2], 1, 2, False),
        ([1, 2], 1, 3, False),
    ],
)
def test_voter(voter_terms: list[int], logterm: int, index: int, granted: bool) -> None:
    """§5.4.1 election restriction: "the voter denies its vote if its own log is more
    up-to-date than that of the candidate. If the logs have last entries with different
    terms, then the log with the later term is more up-to-date. If the logs end with the
    same term, then whichever log is longer is more up-to-date." """
    r = new_raft(1, storage=make_storage(terms=voter_terms))
    r.step(msg(MT.VOTE, 2, 1, term=3, log_term=logterm, index=index))
    out = persist(r)
    assert [(m.type, m.reject) for m in out] == [(MT.VOTE_RESP, not granted)]


@pytest.mark.parametrize("index,wcommit", [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_log_from_current_term(index: int, wcommit: int) -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting replicas.
    Only log entries from the leader's current term are committed by counting replicas."
    (Figure 8.) Log: 1/1 2/2; the leader of term 3 appends its no-op at 3."""
    r = new_raft(1, storage=make_storage(terms=[1, 2], term=2))
    _become_leader(r, ack=False)
    assert r.term == 3
    r.step(msg(MT.APP_RESP, 2, 1, term=3, index=index))
    assert r.log.committed == wcommit


def test_figure8_scenario() -> None:
    """§5.4.2 Figure 8 (c)-(d): the leader of term 4 replicates the term-2 entry at index 2
    to a majority (S1, S2, S3) but must not count it as committed, because S5 (holding
    3/2) can still be elected by S2, S3, S4 and overwrite it."""
    ids = (1, 2, 3, 4, 5)
    logs = {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}
    rafts = [new_raft(i, ids, storage=make_storage(ids, terms=logs[i], term=3)) for i in ids]
    net = Network(*rafts)
    s1, s3, s5 = net[1], net[3], net[5]
    net.ignore(MT.APP)  # replication is done by hand below
    net.campaign(1)
    assert s1.role == StateType.LEADER and s1.term == 4
    # (c) index 2 reaches S3: now on S1, S2, S3, a majority of five.
    s3.step(Message(MT.APP, to=3, frm=1, term=4, index=1, log_term=1, entries=(Entry(2, 2),), commit=1))
    for m in persist(s3):
        s1.step(m)
    persist(s1)
    assert s1.trk.progress[3].match == 2
    assert s1.log.committed < 2  # counting replicas of a term-2 entry commits nothing
    # (d) S1 crashes; S5 wins an election with S2, S3, S4 and overwrites index 2.
    net.peers[1] = None
    net.recover()
    while s5.role != StateType.LEADER:
        net.campaign(5)
    net.propose(5, b"")
    for i in (2, 3, 4):
        assert net[i].log.term(2) == 3


# --- Figure 2, persistence -----------------------------------------------------


def test_vote_is_persisted_before_it_is_sent() -> None:
    """Figure 2: currentTerm and votedFor are updated on stable storage before
    responding to RPCs -- the grant is an after-persist message, the Ready carries the
    hard state that records it."""
    r = new_raft(1)
    r.step(msg(MT.VOTE, 2, 1, term=5, log_term=0, index=0))
    rd = r.ready()
    assert rd.messages == []
    assert [m.type for m in rd.messages_after_persist] == [MT.VOTE_RESP]
    assert rd.hard_state == HardState(term=5, vote=2, commit=0)
    assert rd.must_sync


def test_append_ack_is_sent_after_persist() -> None:
    """Figure 2: entries are on stable storage before AppendEntries succeeds."""
    r = new_raft(1)
    r.step(msg(MT.APP, 2, 1, term=1, entries=(Entry(1, 1, data=b"a"),)))
    rd = r.ready()
    assert [e.data for e in rd.entries] == [b"a"]
    assert rd.messages == []
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [(MT.APP_RESP, 1)]


def test_leader_counts_itself_only_after_persisting() -> None:
    """Thesis §10.2.1: the leader may replicate before its own fsync, but its own copy
    counts towards commit only once durable."""
    r = new_raft(1, (1,))
    r.campaign()
    persist(r)
    assert r.role == StateType.LEADER
    idx = r.propose(b"a")
    assert r.log.committed < idx
    rd = r.ready()
    assert [e.index for e in rd.entries] == [idx]
    assert r.log.committed < idx  # not yet: the Ready is not persisted
    r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # type: ignore[attr-defined]
    r.advance()
    assert r.log.committed == idx


def test_restart_keeps_term_vote_and_log() -> None:
    """Figure 2: persistent state (currentTerm, votedFor, log[]) survives restarts."""
    st = MemoryStorage(make_storage().snapshot().metadata.conf_state)
    r = new_raft(1, storage=st)
    r.step(msg(MT.VOTE, 2, 1, term=3))
    r.step(msg(MT.APP, 2, 1, term=3, entries=(Entry(3, 1, data=b"z"),), commit=1))
    persist(r)
    r2 = Raft(Config(id=1, pre_vote=False, check_quorum=False), st, random.Random(0))
    assert (r2.term, r2.vote, r2.log.committed, r2.log.last_index()) == (3, 2, 1, 1)
    # A restarted node applies its committed entries again (the state machine is volatile).
    rd = r2.ready()
    assert [e.data for e in rd.committed_entries] == [b"z"]
