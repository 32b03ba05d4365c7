#!/usr/bin/env python3
"""Run the deterministic Raft simulation over many seeds and report.

Each seed builds a group whose size (3-5), options (pre-vote, check-quorum,
flow-control limits) and fault profile (drops, duplicates, delays, reordering,
crashes, crashes between send and fsync, partitions, compaction, membership
changes, leadership transfers) are drawn from the seed, runs it for --ticks
virtual ticks under client load, heals it, and checks every Raft safety
invariant at every step, convergence after healing, and linearizability of
the client history (see meshcompute/raft/sim.py).

Usage:
    python scripts/raft_sim.py --seeds 1000
    python scripts/raft_sim.py --seeds 1 --start 4711 --verbose   # replay one seed

Prints: seeds run, violations found (with the seeds to replay), election time
(ticks from a leader crash, or cluster start, to the next leader: mean, p50,
p99, max), and throughput (committed commands per second of wall clock and
per 1000 virtual ticks).

Election times are reported twice: under the chaos profile (where the next
leader may also wait for crashed nodes to restart and partitions to heal), and
in a separate failover run (--failover-seeds) on a healthy network where the
only fault is the leader crashing, which measures the failover time proper:
election timeout + pre-vote round + vote round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meshcompute.raft.sim import FaultProfile, SimNetwork  # noqa: E402

# Healthy network (no drops, 0-1 tick delays); the leader crashes now and then and
# comes back; clients keep proposing. Measures failover time proper.
FAILOVER = FaultProfile(
    drop=0.0, duplicate=0.0, max_delay=1, long_delay=0.0, crash=0.0, crash_leader=0.01, restart=0.2,
    partition=0.0, heal=0.0, compact_every=25, conf_change=0.0, transfer=0.0, client_rate=0.3,
    crash_mid_ready=0.0,
)


def percentile(xs: list[int], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return float(s[k])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200, help="number of seeds to run (default 200)")
    ap.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--ticks", type=int, default=300, help="virtual ticks of chaos per seed (default 300)")
    ap.add_argument("--settle", type=int, default=300, help="ticks allowed to converge after healing")
    ap.add_argument("--election-tick", type=int, default=10, help="Config.election_tick (default 10)")
    ap.add_argument("--max-failures", type=int, default=20, help="stop after this many violations")
    ap.add_argument("--failover-seeds", type=int, default=100,
                    help="seeds of the failover-timing run on a healthy network (default 100; 0 = skip)")
    ap.add_argument("--verbose", action="store_true", help="one line per seed")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    failures: list[tuple[int, str]] = []
    election_times: list[int] = []
    commits = ticks = messages = ops = elections = crashes = snapshots = conf_changes = 0
    run = 0
    for seed in range(args.start, args.start + args.seeds):
        net = SimNetwork.randomized(seed, election_tick=args.election_tick)
        try:
            st = net.run_random(args.ticks, settle_ticks=args.settle)
        except AssertionError as e:  # SafetyViolation, or the core's own RaftInvariantError
            failures.append((seed, f"{type(e).__name__}: {e}"))
            print(f"seed {seed}: VIOLATION {type(e).__name__}: {str(e)[:2000]}", flush=True)
            run += 1
            if len(failures) >= args.max_failures:
                break
            continue
        run += 1
        election_times += st.election_times
        commits += st.commits
        ticks += st.ticks
        messages += st.messages_sent
        ops += st.ops_completed
        elections += st.elections
        crashes += st.crashes
        snapshots += st.snapshots_sent
        conf_changes += st.conf_changes
        if args.verbose:
            print(
                f"seed {seed}: ok nodes={len(net.nodes)} ticks={st.ticks} commits={st.commits} "
                f"elections={st.elections} crashes={st.crashes} ops={st.ops_completed} "
                f"election_times={st.election_times}",
                flush=True,
            )
    wall = time.perf_counter() - t0

    print(f"seeds run:            {run} (seeds {args.start}..{args.start + run - 1})")
    print(f"violations found:     {len(failures)}")
    for seed, msg in failures:
        print(f"  replay: python scripts/raft_sim.py --seeds 1 --start {seed} --verbose   # {msg[:120]}")
    if election_times:
        print(f"election time, chaos (ticks): {describe_times(election_times)}")
    print(f"virtual ticks:        {ticks} ({ticks / max(run, 1):.0f} per seed)")
    print(f"commits:              {commits} ({commits / max(wall, 1e-9):.0f} commits/sec simulated, "
          f"{1000 * commits / max(ticks, 1):.0f} per 1000 ticks)")
    print(f"client ops completed: {ops}; elections: {elections}; crashes: {crashes}; "
          f"snapshots sent: {snapshots}; conf changes: {conf_changes}")
    print(f"messages sent:        {messages} ({messages / max(wall, 1e-9):.0f}/sec)")
    print(f"wall time:            {wall:.1f} s ({1000 * wall / max(run, 1):.1f} ms per seed)")
    if args.failover_seeds:
        t1 = time.perf_counter()
        times: list[int] = []
        for seed in range(args.start, args.start + args.failover_seeds):
            n = 3 if seed % 2 else 5
            net = SimNetwork.with_nodes(n, seed=seed, election_tick=args.election_tick, faults=FAILOVER)
            try:
                st = net.run_random(args.ticks, settle_ticks=args.settle)
            except AssertionError as e:
                failures.append((seed, f"failover run: {type(e).__name__}: {e}"))
                print(f"failover seed {seed}: VIOLATION {str(e)[:2000]}", flush=True)
                continue
            times += st.election_times
        print(f"election time, failover on a healthy network (ticks, {args.failover_seeds} seeds of 3 and 5 nodes, "
              f"{time.perf_counter() - t1:.1f} s): {describe_times(times)}")
        if failures:
            print(f"violations found (all runs): {len(failures)}")
    print(f"(election_tick={args.election_tick}: followers time out after "
          f"{args.election_tick}..{2 * args.election_tick - 1} ticks)")
    return 1 if failures else 0


def describe_times(xs: list[int]) -> str:
    if not xs:
        return "none measured"
    return (f"mean {statistics.fmean(xs):.1f}, p50 {percentile(xs, 50):.0f}, p99 {percentile(xs, 99):.0f}, "
            f"max {max(xs)} over {len(xs)} leader losses")


if __name__ == "__main__":
    sys.exit(main())
