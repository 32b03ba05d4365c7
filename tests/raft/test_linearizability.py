"""The linearizability checker on hand-made histories (Wing & Gong / Porcupine style)."""

from __future__ import annotations

import random

from meshcompute.raft.linearizability import UNKNOWN, KVModel, Operation, check_operations


def put(c: int, k: str, v: str, call: float, ret: float | None) -> Operation:
    return Operation(c, ("put", k, v), call, None, ret)


def get(c: int, k: str, out: str | None, call: float, ret: float) -> Operation:
    return Operation(c, ("get", k, None), call, out, ret)


def cas(c: int, k: str, old: str | None, new: str, out: bool, call: float, ret: float | None) -> Operation:
    return Operation(c, ("cas", k, (old, new)), call, out if ret is not None else UNKNOWN, ret)


def ok(history: list[Operation]) -> bool | None:
    return check_operations(KVModel(), history).ok


def test_empty_and_sequential() -> None:
    assert ok([]) is True
    assert ok([put(0, "x", "1", 0, 1), get(0, "x", "1", 2, 3), put(0, "x", "2", 4, 5), get(0, "x", "2", 6, 7)])


def test_concurrent_read_may_see_old_or_new() -> None:
    w = put(0, "x", "1", 0, 10)
    assert ok([w, get(1, "x", "1", 1, 2)])
    assert ok([w, get(1, "x", None, 1, 2)])


def test_stale_read_after_completed_write() -> None:
    assert ok([put(0, "x", "1", 0, 1), get(1, "x", None, 2, 3)]) is False


def test_reads_cannot_go_back_in_time() -> None:
    """Once a read saw the new value, a later read may not see the old one."""
    h = [put(0, "x", "1", 0, 10), get(1, "x", "1", 1, 2), get(1, "x", None, 3, 4)]
    assert ok(h) is False


def test_read_of_value_never_written() -> None:
    assert ok([put(0, "x", "1", 0, 1), get(1, "x", "7", 2, 3)]) is False


def test_two_successful_cas_from_same_value() -> None:
    h = [cas(0, "x", None, "a", True, 0, 5), cas(1, "x", None, "b", True, 1, 6)]
    assert ok(h) is False
    h = [cas(0, "x", None, "a", True, 0, 5), cas(1, "x", None, "b", False, 1, 6)]
    assert ok(h) is True


def test_unknown_outcome_may_apply_late_or_never() -> None:
    lost = put(0, "x", "1", 0, None)
    assert ok([lost, get(1, "x", "1", 5, 6)])
    assert ok([lost, get(1, "x", None, 5, 6)])
    # ... but not both orders at once: seen, then unseen.
    assert ok([lost, get(1, "x", "1", 5, 6), get(1, "x", None, 7, 8)]) is False
    # An unknown cas may have succeeded.
    assert ok([cas(0, "x", None, "a", False, 0, None), get(1, "x", "a", 2, 3)])


def test_keys_are_independent() -> None:
    h = [put(0, "x", "1", 0, 1), put(1, "y", "2", 0, 1), get(0, "y", "2", 2, 3), get(1, "x", "1", 2, 3)]
    res = check_operations(KVModel(), h)
    assert res.ok is True


def test_failure_reports_the_offending_subhistory() -> None:
    h = [put(0, "y", "1", 0, 1), put(0, "x", "1", 0, 1), get(1, "x", None, 2, 3)]
    res = check_operations(KVModel(), h)
    assert res.ok is False
    assert res.failed_partition is not None
    assert {op.input[1] for op in res.failed_partition} == {"x"}
    assert "NOT linearizable" in res.describe()


def _random_linearizable_history(rng: random.Random, n_ops: int, clients: int) -> list[Operation]:
    """Execute ops sequentially at random instants, then widen each into a window
    around its linearization point that never overlaps the same client's other ops."""
    value: str | None = None
    t = 0.0
    ops: list[Operation] = []
    free_at = [0.0] * clients
    for i in range(n_ops):
        t += rng.random()
        idle = [c for c in range(clients) if free_at[c] <= t]
        if not idle:
            t = min(free_at) + 0.01
            idle = [c for c in range(clients) if free_at[c] <= t]
        c = rng.choice(idle)
        call = rng.uniform(free_at[c], t)
        ret = t + rng.random() * 3
        free_at[c] = ret
        kind = rng.choice(("put", "get", "cas"))
        if kind == "put":
            value = str(i)
            ops.append(put(c, "x", value, call, ret))
        elif kind == "get":
            ops.append(get(c, "x", value, call, ret))
        else:
            old = value if rng.random() < 0.5 else "nope"
            success = old == value
            if success:
                value = str(i)
            ops.append(cas(c, "x", old, str(i), success, call, ret))
    return ops


def test_random_linearizable_histories_pass_quickly() -> None:
    rng = random.Random(7)
    for _ in range(30):
        h = _random_linearizable_history(rng, 120, 4)
        res = check_operations(KVModel(), h)
        assert res.ok is True, res.describe()
        assert res.steps < 100_000  # memoization keeps the search small


def test_budget_exhaustion_is_inconclusive_not_wrong() -> None:
    rng = random.Random(1)
    h = _random_linearizable_history(rng, 200, 4)
    res = check_operations(KVModel(), h, budget=5)
    assert res.ok is None
    assert "gave up" in res.describe()
