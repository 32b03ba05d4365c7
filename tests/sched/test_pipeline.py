"""plan_pushes, run times and lease request sizing."""

from __future__ import annotations

import math

import pytest

from meshcompute.sched.pipeline import (
    MAX_LEASE_REQUESTS,
    MAX_PIPELINE,
    MEDIUM_TASK_S,
    SHORT_TASK_S,
    RunTimes,
    depth_limit,
    lease_requests_delta,
    plan_pushes,
)

M = MAX_PIPELINE
S, D, L = M, 2, 1  # the depth of a queued task known short / under MEDIUM_TASK_S / not known short
IDLE = (0, MAX_PIPELINE)  # a lease with nothing in flight

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
    ("medium: one behind each busy lease", [D] * 5, [(1, D), (1, D)], [(0, 1), (1, 1)]),
    ("medium: not behind two", [D, D], [(2, M), (1, M)], [(1, 1)]),
    ("medium on an idle lease: one more behind it", [D] * 4, [IDLE], [(0, 2)]),
    ("medium stops short ones behind it going deeper", [S, D, S, S], [(1, M), (1, M)], [(0, 1), (1, 1)]),
    ("long stops medium", [D, L, D], [(1, M), (1, M)], [(0, 1)]),
]


@pytest.mark.parametrize("queue, slots, expected", [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_plan_pushes(queue, slots, expected):
    assert plan_pushes(queue, slots) == expected


def check_plan(queue, slots, plan) -> None:
    """The properties every plan keeps, whatever the input."""
    held = [n for n, _ in slots]
    pos = 0
    idle = {i for i, (n, limit) in enumerate(slots) if n == 0 and limit > 0}
    given: dict[int, list[int]] = {}
    for lease, n in plan:
        assert n > 0
        given.setdefault(lease, []).extend(queue[pos:pos + n])
        pos += n
    for lease, tasks in given.items():
        inflight, limit = slots[lease]
        assert inflight + len(tasks) <= min(limit, MAX_PIPELINE)
        for pos_on_lease, depth in enumerate(tasks, start=inflight + 1):
            assert pos_on_lease <= depth  # no task deeper than its depth
        if min(tasks) <= 1:  # a task not known short goes alone onto an idle lease
            assert len(tasks) == 1 and lease in idle
        if inflight:
            assert not (idle - set(given))  # busy ones only once no lease is idle
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
        queue = [rng.choice([S, S, S, D, D, L]) for _ in range(rng.randrange(40))]
        slots = [(rng.choice([0, 0, 1, 2, 5, M]), rng.choice([0, 1, D, M, M])) for _ in range(rng.randrange(5))]
        slots = [(min(n, limit), limit) for n, limit in slots]
        check_plan(queue, slots, plan_pushes(queue, slots))


# (case, depth of the task the lease took while idle, blocked, depth limit)
DEPTHS = [
    ("short ones", M, False, M),
    ("medium ones", D, False, 2),
    ("a long one", L, False, 1),
    ("odd depths are clamped", 10 * M, False, M),
    ("blocked", M, True, 0),
    ("blocked, long", L, True, 0),
]


@pytest.mark.parametrize("depth, blocked, expected", [c[1:] for c in DEPTHS], ids=[c[0] for c in DEPTHS])
def test_depth_limit(depth, blocked, expected):
    assert depth_limit(depth, blocked) == expected


# ----------------------------------------------------------------- RunTimes

# (case, recorded run times, mean, short, depth)
RUNS = [
    ("never ran", [], None, False, L),
    ("one short run", [0.001], 0.001, True, S),
    ("one long run", [3.0], 3.0, False, L),
    ("moving mean", [0.001, 0.011], 0.8 * 0.001 + 0.2 * 0.011, False, D),
    ("odd values ignored", [0.001, -1.0, math.nan, math.inf], 0.001, True, S),
    ("just at the limit", [SHORT_TASK_S], SHORT_TASK_S, False, D),
    ("10 ms", [0.0105], 0.0105, False, D),
    ("just at the medium limit", [MEDIUM_TASK_S], MEDIUM_TASK_S, False, L),
]


@pytest.mark.parametrize("runs, mean, short, depth", [c[1:] for c in RUNS], ids=[c[0] for c in RUNS])
def test_run_times(runs, mean, short, depth):
    times = RunTimes()
    for r in runs:
        times.record("f", r)
    assert times.mean("f") == (None if mean is None else pytest.approx(mean))
    assert times.is_short("f") is short
    assert times.depth("f") == depth
    assert times.mean("g") is None and not times.is_short("g") and times.depth("g") == L


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
