#!/usr/bin/env python3
"""Sweep the SWIM/Lifeguard simulator over many seeds and print protocol figures.

For every seed: bootstrap a converged cluster of --nodes members, then
  1. dissemination: change one node's resource view (meta) --updates times and
     measure how many protocol periods until every live node has it;
  2. false positives: run --duration seconds under --loss with every node alive
     and count DEAD declarations (each one is a false positive);
  3. detection: crash one node and measure the time until every live node has
     declared it dead.

Example:  python scripts/gossip_sim.py --nodes 1000 --seeds 5 --loss 0.05
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshcompute.gossip import GossipConfig, MemberState, SimNetwork  # noqa: E402

PROFILES = {"local": GossipConfig.local, "lan": GossipConfig.lan, "wan": GossipConfig.wan}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def run_seed(seed: int, args: argparse.Namespace, cfg: GossipConfig) -> dict[str, object]:
    sim = SimNetwork(
        seed,
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        latency=(args.latency_min, args.latency_max),
    )
    nodes = sim.bootstrap(args.nodes, config=cfg, meta=lambda i: f'{{"cpu": 8, "node": {i}}}'.encode())
    sim.run_for(1.0)
    period = cfg.probe_interval
    rng_pick = (seed * 2654435761) % args.nodes

    # 1. dissemination of meta updates
    rounds: list[float] = []
    for u in range(args.updates):
        origin = nodes[(rng_pick + 37 * u) % args.nodes]
        version = sim.update_meta(origin, f'{{"cpu": {u}, "queue": {seed}}}'.encode())
        t0 = sim.now
        t = sim.run_until_true(
            lambda o=origin, v=version: all(
                n.swim.meta_version_of(o.node_id) >= v for n in nodes if n is not o
            ),
            timeout=60.0,
            step=period / 10,
        )
        rounds.append(float("inf") if t is None else (t - t0) / period)
        sim.run_for(1.0)

    # 2. false positives under loss (nobody has failed yet)
    sim.run_for(args.duration)
    false_deaths = len(sim.events("dead"))
    suspicions = len(sim.events("suspect"))
    refutes = sum(n.swim.stats.refutes for n in nodes)

    # 3. crash detection
    victim = nodes[(rng_pick + 1) % args.nodes]
    sim.crash(victim)
    t0 = sim.now
    t = sim.run_until_true(lambda: sim.all_see(victim, MemberState.DEAD), timeout=120.0, step=period / 20)
    detection = float("inf") if t is None else t - t0
    first = [e[0] - t0 for e in sim.events("suspect", victim.node_id) if e[0] >= t0]
    return {
        "seed": seed,
        "rounds": rounds,
        "false_deaths": false_deaths,
        "suspicions": suspicions,
        "refutes": refutes,
        "detection_s": detection,
        "first_suspicion_s": min(first) if first else float("nan"),
        "packets_per_node_s": sim.stats.sent / args.nodes / max(sim.now, 1e-9),
        "max_health_score": max(n.swim.health_score for n in nodes),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--loss", type=float, default=0.0, help="per-packet drop probability")
    ap.add_argument("--duplicate", type=float, default=0.0)
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--latency-min", type=float, default=0.0005, help="seconds")
    ap.add_argument("--latency-max", type=float, default=0.002, help="seconds")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="lan")
    ap.add_argument(
        "--duration", type=float, default=30.0, help="seconds of loss for false-positive counting"
    )
    ap.add_argument("--updates", type=int, default=3, help="meta updates per seed")
    ap.add_argument("--json", action="store_true", help="print per-seed results as JSON lines")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes must be >= 2")
    cfg = PROFILES[args.profile]()

    print(
        f"profile={args.profile} nodes={args.nodes} seeds={args.seeds} loss={args.loss} "
        f"dup={args.duplicate} reorder={args.reorder} period={cfg.probe_interval}s duration={args.duration}s"
    )
    results = []
    for seed in range(args.seed0, args.seed0 + args.seeds):
        t_wall = time.perf_counter()
        r = run_seed(seed, args, cfg)
        r["wall_s"] = time.perf_counter() - t_wall
        results.append(r)
        if args.json:
            print(json.dumps(r))
        else:
            rounds = ", ".join(f"{x:.2f}" for x in r["rounds"])  # type: ignore[union-attr]
            print(
                f"  seed {seed}: rounds [{rounds}]  false_deaths {r['false_deaths']}  suspicions {r['suspicions']}"
                f"  detection {r['detection_s']:.3f}s  ({r['wall_s']:.1f}s wall)"
            )
    rounds_all = [x for r in results for x in r["rounds"]]  # type: ignore[union-attr]
    det = [float(r["detection_s"]) for r in results]  # type: ignore[arg-type]
    log2n = math.log2(args.nodes)
    print("summary:")
    print(
        f"  convergence (protocol periods): mean {statistics.mean(rounds_all):.2f}  p99 {pct(rounds_all, 99):.2f}"
        f"  max {max(rounds_all):.2f}  (log2 N = {log2n:.2f}, {len(rounds_all)} updates)"
    )
    print(f"  false-positive deaths: {sum(int(r['false_deaths']) for r in results)}")  # type: ignore[call-overload]
    print(
        f"  suspect events under loss: {sum(int(r['suspicions']) for r in results)}"  # type: ignore[call-overload]
        f"  refutations: {sum(int(r['refutes']) for r in results)}"  # type: ignore[call-overload]
    )
    print(
        f"  detection time (s): mean {statistics.mean(det):.3f}  p99 {pct(det, 99):.3f}  max {max(det):.3f}"
        f"  (bound {cfg.expected_detection_time(args.nodes):.2f})"
    )
    ppn = statistics.mean(float(r["packets_per_node_s"]) for r in results)  # type: ignore[arg-type]
    print(f"  packets per node per second: {ppn:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
