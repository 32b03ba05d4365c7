from __future__ import annotations

import pytest

from meshcompute.gossip import BroadcastQueue, retransmit_limit


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (4, 0, 1),
        (4, 1, 4),
        (4, 9, 4),
        (4, 10, 8),
        (4, 99, 8),
        (4, 100, 12),
        (4, 1000, 16),
        (6, 1000, 24),
        (6, 20, 12),
    ],
)
def test_retransmit_limit_table(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


def queue(n: int = 5, mult: int = 1) -> BroadcastQueue[str]:
    return BroadcastQueue(mult, lambda: n)


def test_newer_item_invalidates_older_with_same_key() -> None:
    q = queue()
    q.enqueue(("m", "a"), "a-suspect", 10)
    q.enqueue(("m", "b"), "b-alive", 10)
    q.enqueue(("m", "a"), "a-alive-inc2", 10)
    assert len(q) == 2
    assert ("m", "a") in q
    assert sorted(q.take(1000)) == ["a-alive-inc2", "b-alive"]


def test_fresh_items_preferred() -> None:
    q = queue(n=1000, mult=4)
    q.enqueue("x", "x", 10)
    assert q.take(1000) == ["x"]
    q.enqueue("y", "y", 10)
    # budget for one item: y has 0 transmissions, x has 1
    assert q.take(10) == ["y"]
    assert q.take(10) == ["y"]  # y:2, x:1
    assert q.take(10) == ["x"]


def test_newest_first_among_equal_transmits() -> None:
    q = queue(n=1000, mult=4)
    for name in ("a", "b", "c"):
        q.enqueue(name, name, 10)
    assert q.take(20) == ["c", "b"]
    assert q.take(10) == ["a"]


def test_dropped_after_retransmit_limit() -> None:
    q = queue(n=9, mult=3)  # limit 3
    q.enqueue("k", "msg", 10)
    for _ in range(3):
        assert q.take(100) == ["msg"]
    assert q.take(100) == []
    assert len(q) == 0


def test_limit_follows_cluster_size() -> None:
    size = {"n": 9}
    q: BroadcastQueue[str] = BroadcastQueue(1, lambda: size["n"])
    q.enqueue("k", "msg", 10)
    assert q.take(100) == ["msg"]  # limit 1 at n=9
    assert len(q) == 0
    size["n"] = 100  # limit 3
    q.enqueue("k", "msg", 10)
    assert [len(q.take(100)) for _ in range(4)] == [1, 1, 1, 0]


def test_budget_skips_large_items_but_takes_smaller() -> None:
    q = queue(n=1000, mult=4)
    q.enqueue("small", "small", 30)
    q.enqueue("big", "big", 500)
    assert q.take(100) == ["small"]
    assert q.transmits("big") == 0
    assert q.take(0) == []
    assert q.take(600) == ["big", "small"]


def test_max_items_and_discard() -> None:
    q = queue(n=1000, mult=4)
    for i in range(10):
        q.enqueue(i, i, 1)
    assert len(q.take(1000, max_items=4)) == 4
    q.discard(0)
    q.discard("missing")
    assert 0 not in q and len(q) == 9
    q.clear()
    assert len(q) == 0 and q.take(100) == []
