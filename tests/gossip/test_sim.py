"""The simulated network itself: determinism and fault injection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshcompute.gossip import Alive, GossipConfig, MemberState, SimNetwork

REPO = Path(__file__).parents[2]


def scenario(seed: int, wire: bool = False) -> SimNetwork:
    """Joins, loss, duplication, reordering, a crash, a partition, a leave and meta churn."""
    sim = SimNetwork(seed, loss=0.03, duplicate=0.02, reorder=0.05, wire=wire)
    for i in range(12):
        sim.add_node(meta=f"cpu={i}".encode())
        sim.run_for(0.05)
    sim.run_for(2.0)
    sim.update_meta(3, b"cpu=0,gpu=1")
    sim.crash(5)
    sim.run_for(3.0)
    sim.partition([0, 1, 2, 3], [4, 6, 7, 8, 9, 10, 11])
    sim.run_for(4.0)
    sim.heal()
    sim.leave(7)
    sim.run_for(4.0)
    return sim


def test_same_seed_replays_exactly() -> None:
    a, b = scenario(42), scenario(42)
    assert a.log and a.log == b.log
    assert a.stats == b.stats
    assert a.digest() == b.digest()
    assert scenario(43).digest() != a.digest()


def test_replay_is_independent_of_hash_seed() -> None:
    code = "from tests.gossip.test_sim import scenario; print(scenario(42).digest())"
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        digests.add(res.stdout.strip())
    assert digests == {scenario(42).digest()}


def test_wire_mode_roundtrips_every_packet() -> None:
    sim = scenario(5, wire=True)
    assert sim.stats.bytes > 0
    assert all(n.swim.stats.malformed == 0 for n in sim.nodes)
    live = sim.live_nodes()
    assert all(sim.sees(o, 5) == MemberState.DEAD for o in live)
    assert all(sim.sees(o, 7) == MemberState.LEFT for o in live)
    # the meta change made it everywhere through the real codec
    assert all(o.swim.meta_version_of(sim.nodes[3].node_id) == 2 for o in live if o.index != 3)


def test_partition_and_isolate_block_traffic() -> None:
    sim = SimNetwork(1)
    sim.bootstrap(6)
    sim.partition([0, 1, 2])
    sim.run_for(3.0)
    for a in range(3):
        for b in range(3, 6):
            assert sim.sees(a, b) == MemberState.DEAD
            assert sim.sees(b, a) == MemberState.DEAD
    assert sim.sees(0, 1) == MemberState.ALIVE and sim.sees(3, 4) == MemberState.ALIVE
    sim.heal()
    sim.isolate(4)
    sim.run_for(3.0)
    assert all(sim.sees(o, 4) == MemberState.DEAD for o in (0, 1, 2, 3, 5))
    assert sim.sees(0, 3) == MemberState.ALIVE


def test_crash_stops_a_node() -> None:
    sim = SimNetwork(2)
    nodes = sim.bootstrap(4)
    sim.run_for(0.5)
    sim.crash(nodes[1])
    before = nodes[1].swim.stats.probes
    sim.run_for(2.0)
    assert nodes[1].swim.stats.probes == before
    assert not nodes[1].running


def test_duplication_and_loss_are_counted() -> None:
    sim = SimNetwork(3, loss=0.2, duplicate=0.3)
    sim.bootstrap(5)
    sim.run_for(5.0)
    st = sim.stats
    assert st.duplicated > 0 and st.dropped > 0
    assert st.delivered + st.dropped == st.sent + st.duplicated


def test_inject_and_lookups() -> None:
    sim = SimNetwork(4)
    nodes = sim.bootstrap(3, config=GossipConfig.local())
    sim.inject(0, Alive("x", "x:1", 0))
    assert sim.sees(0, 0) == MemberState.ALIVE
    assert nodes[0].swim.state_of("x") == MemberState.ALIVE
    assert sim.node("n0001") is nodes[1]
    assert sim.run_until_true(lambda: False, 0.1) is None
    with pytest.raises(ValueError):
        SimNetwork(0, loss=1.5)
