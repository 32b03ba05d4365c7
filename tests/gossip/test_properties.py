"""Cluster-level properties of SWIM + Lifeguard on the deterministic simulator.

Seeds per property scale with GOSSIP_SIM_SEEDS (default 1 = the fast suite);
larger sweeps: scripts/gossip_sim.py.
"""

from __future__ import annotations

import math
import os

import pytest

from meshcompute.gossip import GossipConfig, MemberState, SimNetwork

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
SCALE = max(1, int(os.environ.get("GOSSIP_SIM_SEEDS", "1")))
PROFILES = {"lan": GossipConfig.lan(), "local": GossipConfig.local()}


def seeds(n: int) -> list[int]:
    return list(range(n * SCALE))


def detection_time(sim: SimNetwork, victim: int, timeout: float = 30.0) -> float:
    t0 = sim.now
    t = sim.run_until_true(lambda: sim.all_see(victim, DEAD), timeout, step=0.005)
    assert t is not None, f"node {victim} not declared dead by everyone within {timeout}s"
    return t - t0


# ------------------------------------------------------------ 1000-node cluster
@pytest.fixture(scope="module")
def big() -> SimNetwork:
    sim = SimNetwork(2026, latency=(0.0005, 0.003))
    sim.bootstrap(1000, meta=lambda i: f'{{"cpu": 8, "gpu": {i % 2}, "queue": 0}}'.encode())
    sim.run_for(1.0)
    return sim


def test_meta_update_reaches_1000_nodes_in_log_periods(big: SimNetwork) -> None:
    n = len(big.nodes)
    period = big.nodes[0].swim.config.probe_interval
    origin = big.nodes[17]
    version = big.update_meta(origin, b'{"cpu": 2, "gpu": 1, "queue": 40}')
    t0 = big.now
    t = big.run_until_true(
        lambda: all(o.swim.meta_version_of(origin.node_id) >= version for o in big.live_nodes()),
        timeout=10.0,
        step=0.01,
    )
    assert t is not None
    periods = (t - t0) / period
    bound = 0.5 * math.log2(n)
    print(
        f"\n1000 nodes: meta update everywhere after {t - t0:.3f}s = {periods:.2f} periods (bound {bound:.2f})"
    )
    assert periods <= bound
    assert all(o.delegate.remote[origin.node_id][0] == version for o in big.live_nodes() if o is not origin)


def test_crash_detected_by_all_1000_nodes(big: SimNetwork) -> None:
    cfg = big.nodes[0].swim.config
    victim = 400
    big.crash(victim)
    dt = detection_time(big, victim)
    bound = cfg.expected_detection_time(len(big.nodes))
    print(f"\n1000 nodes: crash declared dead everywhere after {dt:.3f}s (bound {bound:.2f}s)")
    assert dt <= bound
    victim_id = big.nodes[victim].node_id
    assert [e for e in big.events("dead") if e[3] != victim_id] == []


# ------------------------------------------------------------- crash detection
@pytest.mark.parametrize("seed", seeds(10))
@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_crashed_node_declared_dead_by_all_within_2s(profile: str, n: int, seed: int) -> None:
    sim = SimNetwork(seed)
    sim.bootstrap(n, config=PROFILES[profile])
    sim.run_for(1.0 + 0.037 * seed)  # crash at varying protocol phases
    victim = seed % n
    sim.crash(victim)
    dt = detection_time(sim, victim)
    assert sim.events("dead", sim.nodes[victim].node_id), "dead events reported"
    assert dt <= 2.0


@pytest.mark.parametrize("seed", seeds(3))
def test_crash_detected_under_loss_in_64_nodes(seed: int) -> None:
    sim = SimNetwork(seed, loss=0.02)
    sim.bootstrap(64)
    sim.run_for(2.0)
    sim.crash(9)
    assert detection_time(sim, 9) <= GossipConfig.lan().expected_detection_time(64)


# ------------------------------------------------------------- false positives
@pytest.mark.parametrize("seed", seeds(3))
@pytest.mark.parametrize(("profile", "n", "duration"), [("lan", 50, 60.0), ("local", 16, 60.0)])
def test_no_live_node_declared_dead_under_5pct_loss(profile: str, n: int, duration: float, seed: int) -> None:
    sim = SimNetwork(seed, loss=0.05, duplicate=0.01, reorder=0.02)
    sim.bootstrap(n, config=PROFILES[profile])
    sim.run_for(duration)
    suspicions = len(sim.events("suspect"))
    refutes = sum(node.swim.stats.refutes for node in sim.nodes)
    print(f"\n{profile} n={n} seed={seed}: {suspicions} suspect events, {refutes} refutations")
    assert sim.events("dead") == []
    # not vacuous: loss did cause suspicions, and they were refuted
    assert suspicions > 0 and refutes > 0
    assert all(sim.all_see(node, ALIVE) for node in sim.nodes)


# ------------------------------------------------------------------ partitions
def everyone_alive(sim: SimNetwork) -> bool:
    n = len(sim.nodes)
    return all(o.swim.num_live == n for o in sim.nodes) and all(sim.all_see(x, ALIVE) for x in sim.nodes)


@pytest.mark.parametrize("seed", seeds(3))
@pytest.mark.parametrize("split", [2, 3])
def test_partition_heals(split: int, seed: int) -> None:
    sim = SimNetwork(seed, loss=0.01)
    nodes = sim.bootstrap(10 * split)
    sim.run_for(1.0)
    groups = [nodes[i * 10 : (i + 1) * 10] for i in range(split)]
    sim.partition(*groups)
    # long enough for each side to declare the others dead; the 3-way split also
    # outlasts gossip_to_the_dead_time, so only reconnect push-pull can heal it
    sim.run_for(5.0 if split == 2 else 15.0)
    for g in groups:
        for other in groups:
            if other is not g:
                assert all(sim.sees(a, b) == DEAD for a in g for b in other)
    sim.heal()
    t0 = sim.now
    t = sim.run_until_true(lambda: everyone_alive(sim), timeout=10.0, step=0.05)
    assert t is not None, "membership did not converge after heal"
    print(f"\n{split}-way partition healed in {t - t0:.2f}s")
    assert t - t0 <= 5.0


# ----------------------------------------------------------------------- leave
@pytest.mark.parametrize("seed", seeds(5))
def test_graceful_leave_seen_as_left_by_all(seed: int) -> None:
    sim = SimNetwork(seed, loss=0.01)
    nodes = sim.bootstrap(20)
    sim.run_for(1.0)
    leaver = nodes[seed % 20]
    inc = leaver.swim.incarnation
    sim.leave(leaver)
    t0 = sim.now
    t = sim.run_until_true(lambda: sim.all_see(leaver, LEFT), timeout=5.0, step=0.01)
    assert t is not None
    assert t - t0 <= 1.0
    sim.run_for(10.0)  # long after: still left, never dead
    assert sim.all_see(leaver, LEFT)
    lid = leaver.node_id
    assert sim.events("dead", lid) == [] and sim.events("suspect", lid) == []
    left = sim.events("left", lid)
    assert sorted(e[1] for e in left) == sorted(n.node_id for n in nodes if n is not leaver)
    assert all(e[4] == inc + 1 for e in left)


# ------------------------------------------------------------------ refutation
@pytest.mark.parametrize("seed", seeds(6))
def test_suspected_live_node_refutes(seed: int) -> None:
    sim = SimNetwork(seed)
    nodes = sim.bootstrap(10)
    sim.run_for(1.0)
    x = nodes[seed % 10]
    # cut x off for short windows (shorter than the suspicion timeout) until
    # somebody suspects it
    for _ in range(20):
        sim.isolate(x)
        sim.run_for(0.3)
        sim.heal()
        if sim.events("suspect", x.node_id):
            break
        sim.run_for(0.5)
    assert sim.events("suspect", x.node_id), "no suspicion was provoked"
    t = sim.run_until_true(lambda: sim.all_see(x, ALIVE), timeout=3.0, step=0.01)
    assert t is not None
    sim.run_for(3.0)
    assert x.swim.incarnation >= 1 and x.swim.stats.refutes >= 1
    assert sim.events("dead") == []
    assert sim.all_see(x, ALIVE)
    assert all(o.swim.member(x.node_id).incarnation == x.swim.incarnation for o in nodes if o is not x)  # type: ignore[union-attr]


# ------------------------------------------------------------------------ join
def metas_converged(sim: SimNetwork) -> bool:
    return all(o.swim.meta_version_of(x.node_id) == 1 for o in sim.nodes for x in sim.nodes[1:] if o is not x)


@pytest.mark.parametrize("seed", seeds(4))
def test_nodes_join_through_any_seed_and_converge(seed: int) -> None:
    sim = SimNetwork(seed, loss=0.01)
    sim.add_node()
    for i in range(1, 30):
        # each newcomer knows one pseudo-random existing member's address
        pick = (seed * 7919 + i * 104729) % i
        sim.add_node(seeds=[sim.nodes[pick].addr], meta=f"n{i}".encode())
        sim.run_for(0.02)
    t0 = sim.now
    t = sim.run_until_true(lambda: everyone_alive(sim), timeout=10.0, step=0.05)
    assert t is not None
    print(f"\n30 joiners converged {t - t0:.2f}s after the last join")
    assert t - t0 <= 5.0
    assert sim.run_until_true(lambda: metas_converged(sim), timeout=10.0) is not None
