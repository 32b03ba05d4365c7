"""MemoryStorage and the durable FileStorage (fsync'ed; recovers from torn writes)."""

from __future__ import annotations

import os

import pytest

from meshcompute.raft import (
    Compacted,
    ConfState,
    Entry,
    EntryType,
    FileStorage,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDate,
    Storage,
    StorageCorrupted,
    Unavailable,
)

CS = ConfState(voters=frozenset({1, 2, 3}))


def _ents(*pairs: tuple[int, int]) -> list[Entry]:
    return [Entry(term=t, index=i, data=b"d%d" % i) for t, i in pairs]


@pytest.fixture(params=["memory", "file"])
def storage(request, tmp_path) -> MemoryStorage:
    if request.param == "memory":
        return MemoryStorage(CS)
    return FileStorage(str(tmp_path / "raft"), CS)


def test_protocol(storage: MemoryStorage) -> None:
    assert isinstance(storage, Storage)
    assert storage.initial_state() == (HardState(), CS)
    assert (storage.first_index(), storage.last_index()) == (1, 0)


def test_append_term_entries(storage: MemoryStorage) -> None:
    storage.append(_ents((1, 1), (1, 2), (2, 3)))
    assert storage.term(0) == 0 and storage.term(3) == 2
    with pytest.raises(Unavailable):
        storage.term(4)
    assert [e.index for e in storage.entries(1, 4)] == [1, 2, 3]
    assert [e.index for e in storage.entries(1, 4, max_size=1)] == [1]  # at least one
    # Overlapping append replaces the suffix.
    storage.append(_ents((3, 2)))
    assert [(e.term, e.index) for e in storage.entries(1, storage.last_index() + 1)] == [(1, 1), (3, 2)]
    with pytest.raises(Unavailable):
        storage.append(_ents((3, 9)))  # gap


def test_snapshot_and_compact(storage: MemoryStorage) -> None:
    storage.append(_ents((1, 1), (1, 2), (2, 3), (2, 4)))
    snap = storage.create_snapshot(3, CS, b"state@3")
    assert (snap.index, snap.term) == (3, 2)
    storage.compact(3)
    assert (storage.first_index(), storage.last_index()) == (4, 4)
    assert storage.term(3) == 2
    with pytest.raises(Compacted):
        storage.term(2)
    with pytest.raises(Compacted):
        storage.entries(3, 5)
    with pytest.raises(SnapshotOutOfDate):
        storage.create_snapshot(2, CS, b"")
    storage.append(_ents((1, 2), (2, 3)))  # entirely covered by the snapshot: ignored
    assert storage.last_index() == 4


def test_apply_snapshot_replaces_log(storage: MemoryStorage) -> None:
    storage.append(_ents((1, 1), (1, 2)))
    snap = Snapshot(SnapshotMetadata(10, 3, CS), b"img")
    storage.save(HardState(3, 1, 10), [], snap)
    assert (storage.first_index(), storage.last_index(), storage.term(10)) == (11, 10, 3)
    assert storage.snapshot() == snap
    with pytest.raises(SnapshotOutOfDate):
        storage.apply_snapshot(snap)


def test_file_storage_survives_reopen(tmp_path) -> None:
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.save(HardState(2, 1, 2), _ents((1, 1), (2, 2), (2, 3)), None)
    st.append([Entry(2, 4, EntryType.CONF_CHANGE, b"AddNode 4 voters=1,2,3,4 learners=")])
    st2 = FileStorage(d)
    assert st2.initial_state() == (HardState(2, 1, 2), CS)
    assert st2.entries(1, 5) == st.entries(1, 5)


def test_file_storage_truncation_and_compaction_survive_reopen(tmp_path) -> None:
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.append(_ents((1, 1), (1, 2), (1, 3), (1, 4)))
    st.append(_ents((2, 3)))  # conflict: 3 and 4 replaced by 2/3
    st.create_snapshot(2, CS, b"img2")
    st.compact(2)
    st.append(_ents((2, 4)))
    st2 = FileStorage(d)
    assert (st2.first_index(), st2.last_index()) == (3, 4)
    assert [(e.term, e.index) for e in st2.entries(3, 5)] == [(2, 3), (2, 4)]
    assert st2.snapshot().data == b"img2"


def test_file_storage_drops_torn_tail(tmp_path) -> None:
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.append(_ents((1, 1), (1, 2)))
    path = os.path.join(d, "log.bin")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 3)  # crash in the middle of writing entry 2
    st2 = FileStorage(d)
    assert st2.last_index() == 1
    st2.append(_ents((1, 2), (1, 3)))
    assert FileStorage(d).last_index() == 3


def test_file_storage_detects_corrupt_snapshot(tmp_path) -> None:
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.append(_ents((1, 1)))
    st.create_snapshot(1, CS, b"image")
    with open(os.path.join(d, "snapshot.bin"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"X")
    with pytest.raises(StorageCorrupted):
        FileStorage(d)


def test_file_storage_interrupted_compaction_keeps_entries(tmp_path) -> None:
    """Crash after the new snapshot was written but before the log was rewritten."""
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.append(_ents((1, 1), (1, 2), (1, 3)))
    MemoryStorage.create_snapshot(st, 2, CS, b"img")  # in memory only ...
    from meshcompute.raft.storage import _SNAPSHOT, _atomic_write, _encode_snapshot

    _atomic_write(d, _SNAPSHOT, _encode_snapshot(st.snapshot()))  # ... and the snapshot file
    st2 = FileStorage(d)
    assert (st2.first_index(), st2.last_index()) == (3, 3)


def test_file_storage_interrupted_install_drops_conflicting_log(tmp_path) -> None:
    d = str(tmp_path / "n1")
    st = FileStorage(d, CS)
    st.append(_ents((1, 1), (1, 2), (1, 3)))
    from meshcompute.raft.storage import _SNAPSHOT, _atomic_write, _encode_snapshot

    _atomic_write(d, _SNAPSHOT, _encode_snapshot(Snapshot(SnapshotMetadata(2, 5, CS), b"x")))
    st2 = FileStorage(d)
    assert (st2.first_index(), st2.last_index(), st2.term(2)) == (3, 2, 5)


def test_raft_node_restarts_from_file_storage(tmp_path) -> None:
    """A node on FileStorage keeps term, vote, log, commit and membership across a restart."""
    import random

    from meshcompute.raft import ConfChange, ConfChangeType, Config, Raft, StateType

    from .helpers import Network, new_raft

    d = str(tmp_path / "n1")
    fs = FileStorage(d, CS)
    net = Network(new_raft(1, storage=fs), new_raft(2), new_raft(3))
    net.campaign(1)
    net.propose(1, b"a")
    net[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.send()
    net.propose(1, b"b")
    before = net[1]
    r = Raft(Config(id=1, pre_vote=False, check_quorum=False), FileStorage(d), random.Random(1))
    assert (r.term, r.vote, r.log.committed, r.log.last_index()) == (
        before.term, before.vote, before.log.committed, before.log.last_index())
    assert r.conf_state == ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    assert [e.data for e in r.log.all_entries()] == [e.data for e in before.log.all_entries()]
    assert r.role == StateType.FOLLOWER
