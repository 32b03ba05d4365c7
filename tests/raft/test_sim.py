"""The deterministic simulation: thousands of random seeds with invariant checkers and a
linearizability check, reproducibility, and proof that the checkers catch real bugs
(deliberately broken cores must be caught within a few hundred seeds)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import meshcompute.raft.core as core
import meshcompute.raft.log as raftlog
from meshcompute.raft import Message, MessageType, Raft, StateType
from meshcompute.raft.linearizability import KVModel, Operation, check_operations
from meshcompute.raft.sim import FaultProfile, SafetyViolation, SimNetwork, decode_command, encode_command

MT = MessageType

# The short profile used for the bulk run: 4-tick election timeouts make every tick
# count (elections, crashes and partitions come fast), 50 ticks of chaos, then a
# settle phase that must converge. About 20 ms per seed on one core.
ELECTION_TICK = 4
TICKS = 50
SETTLE = 100
TOTAL_SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "2000"))
CHUNKS = 4


def run_seed(seed: int) -> SimNetwork:
    net = SimNetwork.randomized(seed, election_tick=ELECTION_TICK)
    net.run_random(TICKS, settle_ticks=SETTLE)
    return net


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_many_seeds(chunk: int) -> None:
    """Thousands of seeds (RAFT_SIM_SEEDS, default 2000, in 4 chunks): no safety
    violation, every history linearizable, every healed group converges."""
    per = TOTAL_SEEDS // CHUNKS
    elections = commits = 0
    for seed in range(chunk * per, (chunk + 1) * per):
        net = run_seed(seed)
        elections += net.stats.elections
        commits += net.stats.commits
        assert net.stats.linearizability is not None and net.stats.linearizability.ok
    # The runs did real work.
    assert elections >= per
    assert commits >= per


def test_same_seed_replays_exactly() -> None:
    a, b = run_seed(123), run_seed(123)
    assert a.history == b.history
    assert a.stats == b.stats
    assert run_seed(124).history != a.history


def test_long_run_with_membership_changes() -> None:
    net = SimNetwork.with_nodes(3, seed=11, faults=FaultProfile(conf_change=0.05))
    stats = net.run_random(400)
    assert stats.conf_changes >= 3
    assert stats.commits > 50
    assert stats.linearizability is not None and stats.linearizability.ok


# --- the checkers catch deliberately broken cores --------------------------------------


def _first_violation(max_seeds: int) -> str:
    for seed in range(max_seeds):
        try:
            run_seed(seed)
        except AssertionError as e:  # SafetyViolation or the core's own RaftInvariantError
            return str(e)
    pytest.fail(f"bug not caught in {max_seeds} seeds")


def test_catches_double_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = core.Raft._handle_vote_request

    def forgetful(self: Raft, m: Message) -> None:
        self.vote = 0  # forget who we voted for: may vote twice in a term
        self.lead = 0
        orig(self, m)

    monkeypatch.setattr(core.Raft, "_handle_vote_request", forgetful)
    assert "Election Safety" in _first_violation(300)


def test_catches_missing_election_restriction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raftlog.RaftLog, "is_up_to_date", lambda self, i, t: True)
    msg = _first_violation(300)
    assert "Leader Completeness" in msg or "State Machine Safety" in msg or "Log Matching" in msg


def test_catches_vote_sent_before_persisting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Vote grants leave with the Ready's early messages: a crash before the fsync
    # forgets the vote, and the restarted node votes again in the same term.
    monkeypatch.setattr(core, "_AFTER_PERSIST", frozenset({MT.APP_RESP, MT.PRE_VOTE_RESP}))
    assert "Election Safety" in _first_violation(400)


def test_catches_append_ack_before_persisting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_AFTER_PERSIST", frozenset({MT.VOTE_RESP, MT.PRE_VOTE_RESP}))
    _first_violation(300)


def _stale_read_history(read_index: Callable[[Raft, bytes, int], None] | None,
                        monkeypatch: pytest.MonkeyPatch) -> list[Operation]:
    """A deposed leader on the minority side serves a read after the majority
    committed a newer write: the read must not be answered."""
    if read_index is not None:
        monkeypatch.setattr(core.Raft, "_leader_read_index", read_index)
    net = SimNetwork.with_nodes(3, seed=1, check_quorum=False, pre_vote=False)
    reads: list[tuple[int, bytes, int]] = []
    net.on_ready = lambda n, rd: reads.extend((n, r.request_ctx, r.index) for r in rd.read_states)
    net.nodes[1].raft.campaign()  # type: ignore[union-attr]
    net.stabilize()
    net.isolate(1)
    net.nodes[2].raft.campaign()  # type: ignore[union-attr]
    net.stabilize()
    assert net.leader() in (1, 2) and net.nodes[2].raft.role == StateType.LEADER  # type: ignore[union-attr]
    history = [Operation(0, ("put", "x", "new"), 1)]
    net.nodes[2].raft.propose(encode_command(("put", "x", "new")))  # type: ignore[union-attr]
    net.stabilize()
    assert net.nodes[3].kv.data == {"x": "new"}
    history[0] = Operation(0, ("put", "x", "new"), 1, None, 2)
    net.nodes[1].raft.read_index(b"r")  # type: ignore[union-attr]
    net.stabilize()
    for n, _ctx, index in reads:
        if n == 1 and net.nodes[1].kv.applied >= index:
            history.append(Operation(1, ("get", "x", None), 3, net.nodes[1].kv.data.get("x"), 4))
    return history


def test_stale_read_from_deposed_leader_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def unconfirmed(self: Raft, ctx: bytes, frm: int) -> None:
        self._answer_read(core._ReadIndexStatus(ctx, self.log.committed, frm))

    broken = _stale_read_history(unconfirmed, monkeypatch)
    assert len(broken) == 2 and broken[1].output is None  # served the stale value ...
    assert check_operations(KVModel(), broken).ok is False  # ... and the checker says so


def test_deposed_leader_does_not_serve_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    h = _stale_read_history(None, monkeypatch)
    assert len(h) == 1  # the read is never answered without a quorum
    assert check_operations(KVModel(), h).ok is True


# --- the simulated world ---------------------------------------------------------------


def test_crash_keeps_only_persisted_state() -> None:
    net = SimNetwork.with_nodes(3, seed=2)
    net.nodes[1].raft.campaign()  # type: ignore[union-attr]
    net.stabilize()
    r2 = net.nodes[2].raft
    assert r2 is not None
    term, vote, last = r2.term, r2.vote, r2.log.last_index()
    # Something arrives but its Ready is never handled: lost in the crash.
    r2.step(Message(MT.APP, to=2, frm=1, term=9, index=last, log_term=r2.log.last_term(),
                    entries=(core.Entry(9, last + 1, data=b"lost"),)))
    net.crash(2)
    net.restart(2)
    r2 = net.nodes[2].raft
    assert r2 is not None
    assert (r2.term, r2.vote, r2.log.last_index()) == (term, vote, last)
    # The state machine is rebuilt by replaying committed entries.
    rd = r2.ready()
    assert [e.index for e in rd.committed_entries] == list(range(1, r2.log.committed + 1))


def test_partition_and_heal() -> None:
    net = SimNetwork.with_nodes(3, seed=3)
    net.isolate(3)
    assert not net.connected(1, 3) and not net.connected(3, 2) and net.connected(1, 2)
    net.heal()
    assert net.connected(1, 3)
    net.partition(1, 2)
    assert not net.connected(2, 1) and net.connected(1, 3)


def test_kv_command_codec() -> None:
    for op in [("put", "x", "1"), ("get", "y", None), ("cas", "x", (None, "2")), ("cas", "x", ("1", "2"))]:
        assert decode_command(encode_command(op, "c3#7")) == ("c3#7", op)
        assert decode_command(encode_command(op)) == ("", op)


def test_safety_violation_names_seed_and_tick() -> None:
    net = SimNetwork(seed=42)
    net.now = 7
    with pytest.raises(SafetyViolation, match="seed 42, tick 7"):
        net._violation("example")
