from __future__ import annotations

import pytest

from meshcompute.gossip import (
    Awareness,
    Suspicion,
    clamp_score,
    remaining_suspicion_time,
    scale_timeout,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (1, 0, 1.0, 1.0),
        (1, 5, 1.0, 1.0),
        (1, 10, 1.0, 1.0),
        (1, 50, 1.0, 1.698),  # log10(50) = 1.69897, floored to ms
        (1, 100, 1.0, 2.0),
        (1, 500, 1.0, 2.698),
        (1, 1000, 1.0, 3.0),
        (2, 10, 0.2, 0.4),
        (2, 100, 0.2, 0.8),
        (2, 1000, 0.2, 1.2),
        (4, 10, 3.0, 12.0),
    ],
)
def test_suspicion_timeout_table(mult: int, n: int, interval: float, expected: float) -> None:
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "lo", "hi", "expected"),
    [
        # memberlist's TestSuspicion_remainingSuspicionTime table
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        (2, 3, 3.0, 2.0, 30.0, 4.81),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
        # k < 1: no confirmations expected, start at min
        (0, 0, 0.0, 0.4, 1.2, 0.4),
        (0, 0, 0.1, 0.4, 1.2, 0.3),
        # LAN profile at N=10 (min 0.4, max 1.2)
        (0, 3, 0.0, 0.4, 1.2, 1.2),
        (1, 3, 0.0, 0.4, 1.2, 0.8),
        (2, 3, 0.0, 0.4, 1.2, 0.566),
        (3, 3, 0.0, 0.4, 1.2, 0.4),
        # min == max: confirmations change nothing
        (2, 3, 0.0, 1.0, 1.0, 1.0),
    ],
)
def test_remaining_suspicion_time_table(
    n: int, k: int, elapsed: float, lo: float, hi: float, expected: float
) -> None:
    assert remaining_suspicion_time(n, k, elapsed, lo, hi) == pytest.approx(expected, abs=1e-9)


def test_suspicion_confirmations() -> None:
    s = Suspicion("a", k=3, min_t=2.0, max_t=30.0, start=100.0)
    assert s.deadline == pytest.approx(130.0)
    assert not s.confirm("a"), "the original accuser is not a confirmation"
    assert s.confirm("b")
    assert not s.confirm("b"), "duplicates do not count"
    assert s.deadline == pytest.approx(116.0)
    assert s.confirm("c")
    assert s.confirm("d")
    assert s.deadline == pytest.approx(102.0)
    assert not s.confirm("e"), "at most k confirmations"
    assert s.n == 3
    assert s.remaining(101.0) == pytest.approx(1.0)


def test_suspicion_timeout_is_monotone_in_confirmations() -> None:
    prev = float("inf")
    for n in range(0, 6):
        t = remaining_suspicion_time(n, 5, 0.0, 1.0, 10.0)
        assert 1.0 <= t <= prev
        prev = t


def test_suspicion_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Suspicion("a", 3, 2.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("score", "delta", "max_mult", "expected"),
    [
        (0, -1, 8, 0),  # never below 0
        (0, 1, 8, 1),
        (3, 2, 8, 5),
        (7, 1, 8, 7),  # never above max-1
        (3, 10, 8, 7),
        (5, -2, 8, 3),
        (0, 5, 1, 0),  # max 1: awareness disabled
    ],
)
def test_clamp_score_table(score: int, delta: int, max_mult: int, expected: int) -> None:
    assert clamp_score(score, delta, max_mult) == expected


@pytest.mark.parametrize(
    ("timeout", "score", "expected"),
    [(0.1, 0, 0.1), (0.1, 1, 0.2), (0.1, 3, 0.4), (0.2, 7, 1.6), (3.0, 2, 9.0)],
)
def test_scale_timeout_table(timeout: float, score: int, expected: float) -> None:
    assert scale_timeout(timeout, score) == pytest.approx(expected)


def test_awareness_sequence() -> None:
    a = Awareness(8)
    # two failed probes, each missing 3 nacks, then successes walk it back down
    assert a.apply_delta(3) == 3
    assert a.apply_delta(3) == 6
    assert a.scale(0.1) == pytest.approx(0.7)
    assert a.apply_delta(+5) == 7
    for expected in (6, 5, 4, 3, 2, 1, 0, 0):
        assert a.apply_delta(-1) == expected
    assert a.scale(0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        Awareness(0)
