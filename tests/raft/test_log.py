"""RaftLog and Unstable: stable vs unstable entries, conflicts, commit and apply cursors."""

from __future__ import annotations

import pytest

from meshcompute.raft import (
    Compacted,
    ConfState,
    Entry,
    MemoryStorage,
    RaftInvariantError,
    Snapshot,
    SnapshotMetadata,
)
from meshcompute.raft.log import RaftLog, Unstable


def _log(terms: list[int], committed: int = 0, stable: bool = True) -> RaftLog:
    st = MemoryStorage(ConfState(voters=frozenset({1})))
    es = [Entry(t, i + 1) for i, t in enumerate(terms)]
    if stable:
        st.append(es)
    lg = RaftLog(st, 1 << 20)
    if not stable and es:
        lg.append(es)
    lg.committed = committed
    return lg


def _terms(lg: RaftLog) -> list[int]:
    return [e.term for e in lg.all_entries()]


@pytest.mark.parametrize(
    "new,conflict",
    [
        ([], 0),
        ([(1, 1), (2, 2), (3, 3)], 0),
        ([(2, 2), (3, 3)], 0),
        ([(3, 3)], 0),
        ([(1, 1), (2, 2), (3, 3), (4, 4), (4, 5)], 4),
        ([(4, 4), (4, 5)], 4),
        ([(4, 1), (4, 2)], 1),
        ([(1, 2), (4, 3), (4, 4)], 2),
        ([(1, 3), (2, 4), (4, 5), (4, 6)], 3),
    ],
)
def test_find_conflict(new: list[tuple[int, int]], conflict: int) -> None:
    lg = _log([1, 2, 3])
    assert lg.find_conflict([Entry(t, i) for t, i in new]) == conflict


@pytest.mark.parametrize(
    "last_index,term,ok",
    [(2, 4, True), (3, 4, True), (4, 4, True), (2, 2, False), (3, 3, True), (4, 3, True), (2, 3, False)],
)
def test_is_up_to_date(last_index: int, term: int, ok: bool) -> None:
    lg = _log([1, 2, 3])
    assert lg.is_up_to_date(last_index, term) == ok


@pytest.mark.parametrize(
    "index,log_term,commit,ents,want,wcommit,wterms",
    [
        # not match: term differs / index out of range
        (2, 3, 3, [(4, 4)], None, 1, [1, 2, 3]),
        (4, 4, 3, [(4, 5)], None, 1, [1, 2, 3]),
        # match with the last entry
        (3, 3, 3, [], 3, 3, [1, 2, 3]),
        (3, 3, 4, [], 3, 3, [1, 2, 3]),  # never commit past the last new entry
        (3, 3, 2, [], 3, 2, [1, 2, 3]),
        (3, 3, 0, [], 3, 1, [1, 2, 3]),  # commit never decreases
        (3, 3, 3, [(4, 4)], 4, 3, [1, 2, 3, 4]),
        (3, 3, 4, [(4, 4), (4, 5)], 5, 4, [1, 2, 3, 4, 4]),
        # match with an earlier entry: existing matching entries are kept
        (2, 2, 3, [(3, 3)], 3, 3, [1, 2, 3]),
        (2, 2, 4, [(3, 3), (4, 4)], 4, 4, [1, 2, 3, 4]),
        # conflicting suffix is replaced
        (1, 1, 3, [(4, 2)], 2, 2, [1, 4]),
        (2, 2, 3, [(4, 3), (4, 4)], 4, 3, [1, 2, 4, 4]),
    ],
)
def test_maybe_append(index: int, log_term: int, commit: int, ents: list[tuple[int, int]],
                      want: int | None, wcommit: int, wterms: list[int]) -> None:
    lg = _log([1, 2, 3], committed=1)
    res = lg.maybe_append(index, log_term, commit, [Entry(t, i) for t, i in ents])
    assert (res[0] if res else None) == want
    assert lg.committed == wcommit
    assert _terms(lg) == wterms


def test_maybe_append_never_truncates_committed() -> None:
    lg = _log([1, 2, 3], committed=2)
    with pytest.raises(RaftInvariantError):
        lg.maybe_append(1, 1, 2, [Entry(4, 2)])


def test_duplicate_old_append_does_not_truncate() -> None:
    """A re-delivered shorter MsgApp must not delete entries a newer one appended."""
    lg = _log([1, 1, 1, 1])
    res = lg.maybe_append(1, 1, 0, [Entry(1, 2)])
    assert res == (2, [])
    assert _terms(lg) == [1, 1, 1, 1]


def test_commit_to_beyond_last_index_is_a_bug() -> None:
    lg = _log([1])
    with pytest.raises(RaftInvariantError, match="out of range"):
        lg.commit_to(5)


@pytest.mark.parametrize("idx,term,ok", [(3, 3, True), (3, 2, False), (2, 2, False), (1, 1, False)])
def test_maybe_commit_only_current_term(idx: int, term: int, ok: bool) -> None:
    """§5.4.2: counting replicas commits only entries of the current term."""
    lg = _log([1, 2, 3], committed=0)
    assert lg.maybe_commit(idx, term if idx == 3 else 3) == ok


def test_stable_to_and_unstable_slices() -> None:
    lg = _log([1, 1], committed=0)
    lg.append([Entry(2, 3), Entry(2, 4)])
    assert lg.unstable.offset == 3
    assert [e.index for e in lg.slice(1, 5)] == [1, 2, 3, 4]
    lg.stable_to(3, 2)
    assert lg.unstable.offset == 4
    # A stale acknowledgement (different term) is ignored.
    lg.stable_to(4, 1)
    assert [e.index for e in lg.unstable.entries] == [4]


def test_stable_to_after_truncation_is_ignored() -> None:
    u = Unstable(1)
    u.truncate_and_append([Entry(1, 1), Entry(1, 2)])
    u.truncate_and_append([Entry(2, 2)])  # replaced before it was persisted
    u.stable_to(2, 1)
    assert [(e.term, e.index) for e in u.entries] == [(1, 1), (2, 2)]


def test_applied_le_committed_le_last() -> None:
    lg = _log([1, 1, 1], committed=2)
    lg.applied_to(2)
    with pytest.raises(RaftInvariantError):
        lg.applied_to(3)
    with pytest.raises(RaftInvariantError):
        lg.applied_to(1)


def test_next_committed_ents_respects_size_limit_and_snapshot() -> None:
    lg = _log([1] * 5, committed=5)
    lg.max_applying_size = 20
    assert [e.index for e in lg.next_committed_ents()] == [1]  # at least one
    lg.max_applying_size = 1 << 20
    assert [e.index for e in lg.next_committed_ents()] == [1, 2, 3, 4, 5]
    lg.restore(Snapshot(SnapshotMetadata(9, 2, ConfState(voters=frozenset({1})))))
    assert lg.next_committed_ents() == []  # restore the snapshot first
    assert lg.committed == 9 and lg.last_index() == 9 and lg.first_index() == 10
    assert lg.term(9) == 2


def test_compacted_term_raises() -> None:
    st = MemoryStorage(ConfState(voters=frozenset({1})))
    st.append([Entry(1, i) for i in range(1, 6)])
    st.create_snapshot(3, ConfState(voters=frozenset({1})), b"")
    st.compact(3)
    lg = RaftLog(st, 1 << 20)
    assert lg.first_index() == 4 and lg.term(3) == 1
    with pytest.raises(Compacted):
        lg.term(2)
    assert lg.term_or_zero(2) == 0
    with pytest.raises(Compacted):
        lg.slice(2, 5)
