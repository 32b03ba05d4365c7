"""plan_pushes, run times and lease request sizing."""

from __future__ import annotations

import math

import pytest

from meshcompute.sched.pipeline import (
    MAX_LEASE_REQUESTS,
    MAX_PIPELINE,
    SHORT_TASK_S,
    RunTimes,
    depth_limit,
    lease_requests_delta,
    plan_pushes,
)

S, L = True, False  # a queued task known short / not known short
IDLE = (0, MAX_PIPELINE)  # a lease with nothing in flight
M = MAX_PIPELINE

# (case, queue, leases (inflight, depth limit), expected pushes (lease, n))
PLANS = [
    ("nothing queued", [], [IDLE, IDLE], []),
    ("no leases", [S, L], [], []),
    ("one per idle lease first", [L, L, L], [IDLE, IDLE], [(0, 1), (1, 1)]),
    ("long never behind a busy lease", [L], [(1, M)], []),
    ("long waits, and what is behind it", [L, S, S], [(1, M), (1, M)], []),
    ("the idle lease takes the head, long waits", [S, L, S], [(1, M), IDLE], [(1, 1)]),
    ("long alone on its idle lease, short go on", [S, L, S], [IDLE, IDLE, (1, M)], [(0, 1), (1, 1), (0, 1)]),
    ("short tasks fill an idle lease", [S] * 5, [IDLE], [(0, 5)]),
    ("short tasks balance busy leases", [S] * 6, [(3, M), (1, M)], [(0, 2), (1, 4)]),
    ("no task behind a long one on an idle lease", [L, S, S], [IDLE, (1, M)], [(0, 1), (1, 2)]),
    ("stop at the first long one", [S, S, L, S], [(1, M)], [(0, 2)]),
    ("an idle lease first, even for short tasks", [S, S], [(1, M), IDLE], [(0, 1), (1, 1)]),
    ("up to MAX_PIPELINE", [S] * (M + 5), [IDLE], [(0, M)]),
    ("depth limit 1: only when idle", [S, S], [(1, 1), IDLE], [(1, 2)]),
    ("depth limit 0: blocked", [S, S], [(0, 0)], []),
    ("limit above MAX_PIPELINE is capped", [S] * (M + 5), [(0, 10 * M)], [(0, M)]),
    ("full busy leases", [S, S], [(M, M), (M, M)], []),
]


@pytest.mark.parametrize("queue, slots, expected", [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_plan_pushes(queue, slots, expected):
    assert plan_pushes(queue, slots) == expected


def check_plan(queue, slots, plan) -> None:
    """The properties every plan keeps, whatever the input."""
    held = [n for n, _ in slots]
    pos = 0
    idle = {i for i, (n, limit) in enumerate(slots) if n == 0 and limit > 0}
    given: dict[int, list[bool]] = {}
    for lease, n in plan:
        assert n > 0
        given.setdefault(lease, []).extend(queue[pos:pos + n])
        pos += n
    for lease, tasks in given.items():
        inflight, limit = slots[lease]
        assert inflight + len(tasks) <= min(limit, MAX_PIPELINE)
        if not all(tasks):  # a task not known short goes alone onto an idle lease
            assert tasks in ([False],) and lease in idle
        if inflight:
            assert all(tasks) and not (idle - set(given))  # busy ones only once no lease is idle
        held[lease] += len(tasks)
    # Nothing left that could have gone: no idle lease unused while tasks wait.
    if pos < len(queue):
        assert all(held[i] > 0 for i in idle)


@pytest.mark.parametrize("queue, slots, expected", [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_plans_keep_the_rules(queue, slots, expected):
    check_plan(queue, slots, plan_pushes(queue, slots))


def test_random_plans_keep_the_rules():
    import random

    rng = random.Random(3)
    for _ in range(2000):
        queue = [rng.random() < 0.7 for _ in range(rng.randrange(40))]
        slots = [(rng.choice([0, 0, 1, 5, M]), rng.choice([0, 1, M, M])) for _ in range(rng.randrange(5))]
        slots = [(min(n, limit), limit) for n, limit in slots]
        check_plan(queue, slots, plan_pushes(queue, slots))


# (case, runs something not known short, blocked, depth limit)
DEPTHS = [
    ("idle or short ones", False, False, MAX_PIPELINE),
    ("a long one", True, False, 1),
    ("blocked", False, True, 0),
    ("blocked, long", True, True, 0),
]


@pytest.mark.parametrize("runs_long, blocked, expected", [c[1:] for c in DEPTHS], ids=[c[0] for c in DEPTHS])
def test_depth_limit(runs_long, blocked, expected):
    assert depth_limit(runs_long, blocked) == expected


# ----------------------------------------------------------------- RunTimes

# (case, recorded run times, mean, short)
RUNS = [
    ("never ran", [], None, False),
    ("one short run", [0.001], 0.001, True),
    ("one long run", [3.0], 3.0, False),
    ("moving mean", [0.001, 0.011], 0.8 * 0.001 + 0.2 * 0.011, False),
    ("odd values ignored", [0.001, -1.0, math.nan, math.inf], 0.001, True),
    ("just at the limit", [SHORT_TASK_S], SHORT_TASK_S, False),
]


@pytest.mark.parametrize("runs, mean, short", [c[1:] for c in RUNS], ids=[c[0] for c in RUNS])
def test_run_times(runs, mean, short):
    times = RunTimes()
    for r in runs:
        times.record("f", r)
    assert times.mean("f") == (None if mean is None else pytest.approx(mean))
    assert times.is_short("f") is short
    assert times.mean("g") is None and not times.is_short("g")


# ---------------------------------------------------- lease request sizing

# (case, queued, outstanding, free slots, delta)
DELTAS = [
    ("burst", 40, 0, 0, MAX_LEASE_REQUESTS),
    ("burst, enough out", 40, 16, 0, 0),
    ("queue drained, leases held", 2, 16, 2, -16),
    ("queue drained partly", 10, 16, 2, -8),
    ("a few", 3, 0, 0, 3),
    ("held leases take them", 3, 0, 3, 0),
    ("more out than the cap", 100, 20, 0, MAX_LEASE_REQUESTS - 20),
    ("empty queue", 0, 5, 0, -5),
    ("odd counts", -3, -1, -2, 0),
]


@pytest.mark.parametrize("queued, outstanding, free, delta", [c[1:] for c in DELTAS], ids=[c[0] for c in DELTAS])
def test_lease_requests_delta(queued, outstanding, free, delta):
    assert lease_requests_delta(queued, outstanding, free) == delta
