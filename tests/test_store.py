"""The object store: allocator, store table (eviction, spilling, restore), crash safety.

The first half tests the pure logic (``Allocator``, ``StoreTable``) on a temporary
arena file; the second half runs real nodes, drivers and workers.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.exceptions import WorkerCrashedError
from meshcompute.host.sessions import arena_path
from meshcompute.store import spill as spill_mod
from meshcompute.store.allocator import Allocator, OutOfSpace
from meshcompute.store.table import StoreFull, StoreTable

from .conftest import pid_alive, wait_for

KiB, MiB = 1 << 10, 1 << 20
PAGE = 4096
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ allocator


def _naive_first_fit(blocks, need):
    return next((off for off, size in blocks if size >= need), None)


def test_allocator_is_exact_first_fit_and_coalesces():
    rng = random.Random(7)
    a = Allocator(32 * MiB)
    live = []
    for step in range(6000):
        if live and rng.random() < 0.45:
            a.free(live.pop(rng.randrange(len(live))))
        else:
            size = rng.choice([rng.randint(1, 20 * KiB), rng.randint(1, 2 * MiB)])
            expected = _naive_first_fit(a.free_blocks(), a.round_up(size))
            try:
                got = a.allocate(size)
            except OutOfSpace:
                got = None
            assert got == expected, step
            if got is not None:
                live.append(got)
        if step % 100 == 0:
            blocks = a.free_blocks()
            assert a.used + sum(s for _, s in blocks) == a.capacity
            # Never overlapping, never touching (touching neighbours are merged).
            assert all(o1 + s1 < o2 for (o1, s1), (o2, _) in zip(blocks, blocks[1:]))
    for off in live:
        a.free(off)
    assert a.free_blocks() == [(0, a.capacity)] and a.used == 0


def _alloc_cost(n_holes: int) -> float:
    """Seconds per allocation that must skip ``n_holes`` free blocks too small for it."""
    a = Allocator((3 * n_holes + 4000) * MiB)
    offs = [a.allocate(MiB) for _ in range(2 * n_holes)]
    for off in offs[::2]:
        a.free(off)
    t = time.perf_counter()
    for _ in range(1000):
        a.allocate(2 * MiB)
    return (time.perf_counter() - t) / 1000


def test_allocation_cost_does_not_grow_with_fragmentation():
    few, many = min(_alloc_cost(10) for _ in range(3)), min(_alloc_cost(20000) for _ in range(3))
    # A first-fit scan over the free list would be ~2000x slower with 20k holes.
    assert many < 10 * few + 20e-6, (few, many)


# ---------------------------------------------------------------- store table

CAP = 64 * PAGE


@pytest.fixture
def table(tmp_path):
    fd = os.open(tmp_path / "arena", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, CAP)
    t = StoreTable(CAP, fd, str(tmp_path / "spill"), "test-node")
    yield t
    os.close(fd)


def _put(t: StoreTable, oid: bytes, data: bytes, primary: bool = True, owner: str = "owner") -> int:
    off = t.create(oid, len(data), owner, "writer", primary)
    os.pwrite(t.arena_fd, data, off)
    assert t.seal(oid) == []
    return off


def _pin(t: StoreTable, oid: bytes, peer: str = "reader"):
    [(p, req_id, value)] = t.pin(oid, peer, 1)
    assert (p, req_id) == (peer, 1)
    return value


def _read(t: StoreTable, oid: bytes) -> bytes | None:
    where = _pin(t, oid)
    if where is None:
        return None
    data = os.pread(t.arena_fd, where[1], where[0])
    t.unpin(oid, "reader")
    return data


def _data(i: int, n: int = 16 * PAGE, compressible: bool = False) -> bytes:
    if compressible:
        return bytes([i % 251]) * n
    return random.Random(i).randbytes(n)


def _spill_files(t: StoreTable) -> list[str]:
    try:
        return sorted(f for f in os.listdir(t.spill.path) if not f.startswith("."))
    except FileNotFoundError:
        return []


def test_table_pin_waits_for_the_seal_and_a_dead_writer_leaves_nothing(table):
    off = table.create(b"a", 3 * PAGE, "owner", "writer")
    assert table.pin(b"a", "reader", 5) == []  # not visible before the seal
    assert table.seal(b"a") == [("reader", 5, (off, 3 * PAGE))]
    # A writer that dies before sealing: its block returns, waiting readers hear "gone".
    table.create(b"b", 5 * PAGE, "owner", "writer2")
    assert table.pin(b"b", "reader", 6) == []
    assert table.statistics().unsealed_objects == 1
    assert table.process_gone("writer2") == [("reader", 6, None)]
    s = table.statistics()
    assert s.objects == 1 and s.unsealed_objects == 0 and s.used == 3 * PAGE
    # The owner dies: its sealed object goes once the last reader unpins it.
    table.process_gone("owner")
    assert table.statistics().used == 3 * PAGE
    table.unpin(b"a", "reader")
    assert table.statistics().used == 0 and table.statistics().objects == 0


def test_table_evicts_secondary_copies_least_recently_pinned_first(table):
    for oid in (b"s1", b"s2", b"s3"):
        _put(table, oid, _data(oid[1], 16 * PAGE), primary=False)
    _put(table, b"p1", _data(9, 16 * PAGE))  # a primary copy: the store is full now
    assert _read(table, b"s1") is not None  # s1 is now the most recently used
    _pin(table, b"s3", "holder")  # pinned copies are never evicted
    _put(table, b"p2", _data(10, 16 * PAGE))
    s = table.statistics()
    assert s.evictions == 1 and s.spills == 0  # secondaries go before any primary spills
    assert _read(table, b"s2") is None  # the least recently used copy went
    _put(table, b"p3", _data(11, 16 * PAGE))
    s = table.statistics()
    assert s.evictions == 2 and s.spills == 0
    assert _read(table, b"s1") is None and table.objects[b"s3"].offset is not None
    # Only pinned s3 is left among the secondaries: the next room comes from a primary.
    _put(table, b"p4", _data(12, 16 * PAGE))
    assert table.statistics().spills == 1 and table.statistics().evictions == 2


def test_table_spills_lru_skipping_pinned_and_restores_bit_exact(table):
    datas = {}
    for i in range(4):  # fills the store; raw and lz4 spill files both appear below
        datas[i] = _data(i, 16 * PAGE, compressible=i % 2 == 1)
        _put(table, bytes([i]), datas[i])
    _pin(table, bytes([0]), "holder")
    assert _read(table, bytes([2])) == datas[2]  # 2 is recently used: 1 and 3 go first
    for i in range(4, 8):
        datas[i] = _data(i, 16 * PAGE, compressible=i % 2 == 1)
        _put(table, bytes([i]), datas[i])
    s = table.statistics()
    assert s.spills == 4 and s.spilled_objects == 4 and len(_spill_files(table)) == 4
    assert table.objects[bytes([0])].offset is not None  # pinned: never moved
    assert {i for i in range(8) if table.objects[bytes([i])].spill_path} == {1, 2, 3, 4}
    # lz4 for the compressible ones, raw for random data.
    sizes = {i: table.objects[bytes([i])].spill_bytes for i in (1, 2, 3, 4)}
    assert sizes[1] < 1000 and sizes[3] < 1000 and sizes[2] > 16 * PAGE and sizes[4] > 16 * PAGE
    # Every object reads back bit-exact, restored (and others spilled) on demand.
    for _ in range(2):
        for i in range(1, 8):
            assert _read(table, bytes([i])) == datas[i], i
    assert table.statistics().restores >= 8
    table.unpin(bytes([0]), "holder")
    assert table.free([bytes([i]) for i in range(8)]) == []
    s = table.statistics()
    assert (s.used, s.objects, s.spilled_objects, s.spilled_bytes) == (0, 0, 0, 0)
    assert _spill_files(table) == []


def test_table_full_only_when_nothing_can_move(table):
    for i in range(3):
        _put(table, bytes([i]), _data(i, 16 * PAGE))
    _pin(table, bytes([0]))
    _pin(table, bytes([1]))
    _put(table, b"x", _data(5, 20 * PAGE))  # spills 2, the only unpinned object
    with pytest.raises(StoreFull) as err:
        table.create(b"y", 40 * PAGE, "owner", "writer")
    msg = str(err.value)
    assert "cannot fit an object of 163840 bytes" in msg
    assert "pinned by readers (2 objects" in msg and "of 1 objects are spilled" in msg
    with pytest.raises(StoreFull, match="larger than the whole store"):
        table.create(b"z", CAP + 1, "owner", "writer")
    # Nothing pinned was moved or dropped, and the failed creates left no record.
    assert table.objects[bytes([0])].offset is not None and table.objects[bytes([1])].offset is not None
    assert set(table.objects) == {bytes([0]), bytes([1]), bytes([2]), b"x"}


def test_table_failed_spill_keeps_the_object_and_leaves_no_file(table, monkeypatch):
    data = _data(1, 40 * PAGE)
    _put(table, b"a", data)
    real_pwrite = os.pwrite
    calls = []

    def failing_pwrite(fd, buf, offset):
        if fd != table.arena_fd and len(calls) >= 1:
            raise OSError(28, "No space left on device")
        calls.append(1)
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(spill_mod.os, "pwrite", failing_pwrite)
    with pytest.raises(StoreFull, match="No space left on device"):
        table.create(b"b", 40 * PAGE, "owner", "writer")
    monkeypatch.undo()
    assert calls and os.listdir(table.spill.path) == [spill_mod.MARKER]  # no .tmp, no .spill
    assert table.statistics().spilled_objects == 0
    assert _read(table, b"a") == data  # never silently dropped


def test_table_retry_replaces_the_object_and_free_of_a_spilled_object(table):
    _put(table, b"a", _data(1))
    _pin(table, b"a", "old-reader")
    off2 = table.create(b"a", 8 * PAGE, "owner", "writer")  # a retried task writes again
    assert table.pin(b"a", "reader", 3) == []  # the new copy is not sealed yet
    assert table.seal(b"a") == [("reader", 3, (off2, 8 * PAGE))]
    assert table.statistics().objects == 2  # the old copy stays while mapped
    table.unpin(b"a", "old-reader")
    assert table.statistics().objects == 1
    table.unpin(b"a", "reader")
    # Spilled and never read back: freeing removes the file at once.
    _put(table, b"big", _data(2, 60 * PAGE))
    assert table.objects[b"a"].offset is None and len(_spill_files(table)) == 1
    table.free([b"a", b"big"])
    s = table.statistics()
    assert (s.objects, s.used, s.spilled_bytes) == (0, 0, 0) and _spill_files(table) == []


class HeldCopies:
    """Copies that finish only when the test says so (as on the daemon's helper threads)."""

    def __init__(self, table: StoreTable) -> None:
        self.table = table
        self.jobs: list = []
        table.copy = lambda job, done: self.jobs.append((job, done))

    def finish(self, n: int | None = None) -> list:
        """Run the first ``n`` (all) copies and their completions; the replies they produced."""
        n = len(self.jobs) if n is None else n
        for job, done in self.jobs[:n]:
            try:
                result, error = job(), None
            except Exception as e:  # noqa: BLE001
                result, error = None, e
            done(result, error)
        del self.jobs[:n]
        return self.table.take_replies()


def _sealed(t: StoreTable, oid: bytes, data: bytes) -> int:
    [(_, _, (status, off, *_))] = t.request_create(oid, len(data), "owner", "writer", "writer", 1)
    assert status == "ok"
    os.pwrite(t.arena_fd, data, off)
    t.seal(oid)
    return off


def test_table_create_waits_for_the_spill_that_makes_room(table):
    copies = HeldCopies(table)
    datas = {i: _data(i, 32 * PAGE) for i in range(2)}
    for i in range(2):
        _sealed(table, bytes([i]), datas[i])
    assert table.request_create(b"new", 32 * PAGE, "owner", "writer", "writer", 7) == []
    assert len(copies.jobs) == 1 and table.objects[bytes([0])].moving == "spill"
    assert table.statistics().used == 64 * PAGE  # the block is still there while it is copied
    [(peer, req_id, (status, off, *_))] = copies.finish()
    assert (peer, req_id, status) == ("writer", 7, "ok") and off == 0
    assert table.objects[bytes([0])].offset is None and table.statistics().spills == 1
    os.pwrite(table.arena_fd, _data(9, 32 * PAGE), off)
    table.seal(b"new")
    # Restoring 0 spills 1 first: the pin is answered once both copies are done.
    assert table.pin(bytes([0]), "reader", 8) == []
    assert copies.finish() == [] and len(copies.jobs) == 1  # the spill finished, the restore runs now
    [(_, req_id, (off0, size0))] = copies.finish()
    assert req_id == 8
    assert os.pread(table.arena_fd, size0, off0) == datas[0]


def test_table_pin_during_a_spill_waits_and_keeps_the_object(table):
    copies = HeldCopies(table)
    data = _data(1, 32 * PAGE)
    off = _sealed(table, b"a", data)
    _sealed(table, b"b", _data(2, 32 * PAGE))
    table.request_create(b"c", 32 * PAGE, "owner", "writer", "writer", 5)
    assert table.objects[b"a"].moving == "spill"
    assert table.pin(b"a", "reader", 6) == []  # waits for the copy
    replies = copies.finish()
    # "a" stays where it was (its spill file is kept); "b" is spilled for "c" instead.
    assert ("reader", 6, (off, 32 * PAGE)) in replies
    assert table.objects[b"a"].spill_path is not None and table.objects[b"a"].offset == off
    assert table.objects[b"b"].moving == "spill"
    [(_, req_id, (status, *_))] = copies.finish()
    assert req_id == 5
    assert status == "ok" and table.objects[b"b"].offset is None
    assert os.pread(table.arena_fd, 32 * PAGE, off) == data


def test_table_free_during_a_spill_deletes_the_file_afterwards(table):
    copies = HeldCopies(table)
    _sealed(table, b"a", _data(1, 32 * PAGE))
    _sealed(table, b"b", _data(2, 32 * PAGE))
    table.request_create(b"c", 32 * PAGE, "owner", "writer", "writer", 5)
    assert table.free([b"a"]) == [] and table.statistics().used == 64 * PAGE  # not while copied
    [(_, req_id, (status, *_))] = copies.finish()
    assert req_id == 5
    assert status == "ok" and b"a" not in table.objects
    s = table.statistics()
    assert (s.spilled_objects, s.spilled_bytes) == (0, 0) and _spill_files(table) == []


def test_table_free_and_death_during_a_restore(table):
    copies = HeldCopies(table)
    _sealed(table, b"a", _data(1, 32 * PAGE))
    _sealed(table, b"b", _data(2, 32 * PAGE))
    table.request_create(b"c", 32 * PAGE, "owner", "writer", "writer", 5)
    copies.finish()
    assert table.objects[b"a"].offset is None
    table.free([b"c"])  # room for the restore without spilling
    assert table.pin(b"a", "reader", 6) == [] and table.objects[b"a"].moving == "restore"
    assert table.free([b"a"]) == []  # freed while its bytes are read back
    assert copies.finish() == [("reader", 6, None)]
    assert b"a" not in table.objects and _spill_files(table) == [] and table.statistics().used == 32 * PAGE
    # A writer that dies while its create waits for room: the block, once found, goes back.
    _sealed(table, b"d", _data(3, 32 * PAGE))
    assert table.request_create(b"e", 32 * PAGE, "owner", "dying", "dying", 9) == []
    table.process_gone("dying")
    copies.finish()
    assert b"e" not in table.objects and table.statistics().used == 32 * PAGE


def test_table_asks_keepers_of_pins_before_it_spills_or_is_full(table):
    """Pins that processes keep (a put's, a get's while the ref lives) hold objects in memory
    only until room is needed: the table asks their keepers once, spills what they let go,
    and is full only when what they keep is in use."""
    for i in range(4):
        _put(table, bytes([i]), _data(i, 16 * PAGE))  # the store is full
    assert table.pin(bytes([0]), "p1", 1, keep=True) and table.pin(bytes([1]), "p1", 2, keep=True)
    assert table.seal(b"late", keep_pinned_by="p2") == []  # no such object: nothing kept
    table.pin(bytes([2]), "p2", 3, keep=True)
    _pin(table, bytes([3]), "reader")  # a plain pin (a transfer's): never asked about
    assert table.request_create(b"x", 16 * PAGE, "owner", "w", "w", 7) == []  # waits for answers
    assert sorted(table.releases.take()) == [("p1", [bytes([0]), bytes([1])]), ("p2", [bytes([2])])]
    assert table.statistics().release_requests == 1 and table.statistics().spills == 0
    assert table.unpin_many([], "p2", "asked") == []  # p2 uses its value: still waiting for p1
    [(peer, req_id, (status, offset, *_))] = table.unpin_many([bytes([0])], "p1", "asked")
    assert (peer, req_id, status) == ("w", 7, "ok") and table.statistics().spills == 1
    assert table.objects[bytes([0])].offset is None and table.objects[bytes([1])].offset is not None
    assert table.seal(b"x") == []
    _pin(table, b"x", "reader")
    # Nothing can move: asked again (once per allocation), about what is kept now.
    assert table.request_create(b"y", 16 * PAGE, "owner", "w", "w", 8) == []
    assert sorted(table.releases.take()) == [("p1", [bytes([1])]), ("p2", [bytes([2])])]
    assert table.unpin_many([], "p1", "asked") == []
    [(_, _, (status, *_))] = table.process_gone("p2")  # a dead keeper answers nothing: its pins go
    assert status == "ok" and table.objects[bytes([2])].offset is None  # spilled
    # A keeper that answers without letting go (its value is in use): then the store is full.
    assert table.request_create(b"z", 16 * PAGE, "owner", "w", "w", 9) == []
    assert table.releases.take() == [("p1", [bytes([1])])]
    [(_, _, (status, why))] = table.unpin_many([], "p1", "asked")
    assert status == "full" and "pinned by readers (3 objects" in why, why
    assert table.statistics().release_requests == 3 and not table.releases.waiting
    # A keeper that disconnects keeps the pins of its values in use, but is never asked again.
    assert table.unpin_many([], "p1", "closing") == []
    with pytest.raises(StoreFull):
        table.create(b"z", 16 * PAGE, "owner", "w")
    assert table.releases.take() == [] and table.statistics().release_requests == 3
    # Kept pins go like any pin: then the blocks of freed objects are reused.
    table.unpin(bytes([1]), "p1")
    table.free([bytes([i]) for i in range(4)] + [b"x", b"y"])
    table.unpin(bytes([3]), "reader")
    table.unpin(b"x", "reader")
    s = table.statistics()
    assert (s.objects, s.used, s.pinned_objects) == (0, 0, 0)


def test_clean_stale_sessions_removes_orphaned_spill_dirs(tmp_path, monkeypatch):
    from meshcompute.host import sessions as procutil

    orphan = tmp_path / "meshcompute_s20260101000000_1_abcdef"
    orphan.mkdir()
    (orphan / spill_mod.MARKER).touch()
    (orphan / "x_1.spill").write_bytes(b"data")
    unmarked = tmp_path / "meshcompute_s20260101000000_2_abcdef"  # not ours: kept
    unmarked.mkdir()
    monkeypatch.setenv("MESH_SPILL_DIR", str(tmp_path))
    removed = procutil.clean_stale_sessions()
    assert str(orphan) in removed and not orphan.exists() and unmarked.exists()


# -------------------------------------------------------------- real processes


def _stats() -> dict:
    from meshcompute.owner import context

    return context.core.node_info()["store"]


def _payload(i: int, base: dict) -> np.ndarray:
    """50 MiB: incompressible for even i, compressible for odd i; distinct for every i."""
    return base[i % 2] ^ np.int64(i * 0x9E3779B97F4A7C15 % (1 << 62))


@pytest.mark.node_options(object_store_memory=200 * MiB)
def test_three_times_capacity_spills_and_restores_bit_exact(fresh_node):
    n = 50 * MiB // 8
    base = {0: np.random.default_rng(0).integers(0, 1 << 62, n, dtype=np.int64),
            1: np.arange(n, dtype=np.int64) % 4096}
    refs = [mesh.put(_payload(i, base)) for i in range(12)]  # 600 MiB through a 200 MiB store
    s = _stats()
    assert s["capacity"] == 200 * MiB and s["used"] <= s["capacity"]
    assert s["spilled_objects"] >= 9 and s["objects"] == 12
    # The compressible half is stored lz4: spill files hold less than the data.
    assert 0 < s["spilled_bytes"] < s["spilled_objects"] * 50 * MiB * 0.8
    spill_dir = s["spill_dir"]
    assert spill_dir.startswith(fresh_node["session_dir"]) and len(
        [f for f in os.listdir(spill_dir) if f.endswith(".spill")]) == s["spilled_objects"]
    for i, ref in enumerate(refs):
        arr = mesh.get(ref)
        assert np.array_equal(arr, _payload(i, base)), i
        del arr  # unpins: the next restore may spill this one
    assert _stats()["restores"] >= 9
    del refs, ref
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=10), _stats()
    s = _stats()
    assert (s["used"], s["spilled_bytes"], s["spilled_objects"]) == (0, 0, 0)
    assert [f for f in os.listdir(spill_dir) if not f.startswith(".")] == []
    arena = arena_path(fresh_node["session_dir"])
    mesh.shutdown()
    assert not os.path.exists(spill_dir) and not os.path.exists(arena)


def _record(oid: bytes) -> dict:
    from meshcompute.owner import context
    from meshcompute.wire.messages import Msg

    return next(r for r in context.core.request_daemon(Msg.LIST_OBJECTS, "node") if r["object_id"] == oid.hex())


@pytest.mark.node_options(object_store_memory=64 * MiB)
def test_a_full_store_spills_objects_whose_pins_are_only_kept(fresh_node):
    """A put keeps its pin, and a get keeps one while the ref lives; a full store still makes
    room: it asks the keeper to let go, and spills every object whose value is not in use."""
    n = 20 * MiB // 8
    refs = [mesh.put(np.full(n, 0.0))]
    in_use = mesh.get(refs[0])
    for i in range(1, 6):  # 120 MiB through a 64 MiB store, every ref held
        refs.append(mesh.put(np.full(n, float(i))))
    s = _stats()
    assert s["release_requests"] >= 1 and s["spills"] >= 3, s
    assert _record(refs[0]._id)["in_memory"]  # its value is in use: never spilled
    for _ in range(2):
        for i, ref in enumerate(refs):  # each restore asks again for room
            value = mesh.get(ref)
            assert value[0] == i and value[-1] == i
            del value
    assert _stats()["restores"] >= 5 and _record(refs[0]._id)["in_memory"]
    assert in_use[0] == 0.0 and in_use[-1] == 0.0
    del refs, ref, in_use
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=10), _stats()
    assert _stats()["used"] == 0


def test_a_pin_waits_for_the_seal(fresh_node):
    from meshcompute.owner import context
    from meshcompute.wire.messages import Msg

    core = context.core
    answer = core.request_daemon(Msg.STORE_CREATE, b"o" * 28, 2 * MiB, core.address)
    assert answer[0] == "ok"
    got = []
    reader = threading.Thread(target=lambda: got.append(core.request_daemon(Msg.STORE_PIN, b"o" * 28, None)))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and not got  # invisible until sealed
    core.post(core._send_daemon, Msg.STORE_SEAL, b"o" * 28, False)
    reader.join(5)
    assert got == [(answer[1], 2 * MiB)]
    core.post(core._send_daemon, Msg.STORE_UNPIN, [b"o" * 28], "unused")
    core.post(core._send_daemon, Msg.STORE_FREE, (b"o" * 28,), None, ())
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=5)


def _kill_when_writing(pid_of, timeout: float = 20.0) -> int:
    """SIGKILL the writer as soon as the store shows an object being written."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = pid_of()
        if pid and _stats()["unsealed_objects"] > 0:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.002)
    raise AssertionError(f"no write seen: {_stats()}")


@pytest.mark.node_options(num_cpus=1, object_store_memory=512 * MiB)
def test_worker_killed_mid_put_leaves_no_partial_object(fresh_node, tmp_path):
    @mesh.remote(max_retries=0)
    def big_result(path):
        arr = np.ones(400 * MiB // 8)
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        return arr

    path = str(tmp_path / "pid")
    ref = big_result.remote(path)
    victim = _kill_when_writing(lambda: os.path.exists(path) and int(open(path).read() or 0))
    with pytest.raises(WorkerCrashedError):
        mesh.get(ref, timeout=20)
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=5), _stats()
    assert _stats()["used"] == 0 and not pid_alive(victim)
    spill_dir, arena = _stats()["spill_dir"], arena_path(fresh_node["session_dir"])
    mesh.shutdown()
    assert not os.path.exists(arena) and not os.path.exists(spill_dir)


PUTTER = textwrap.dedent("""
    import sys, numpy as np
    import meshcompute as mesh
    mesh.init(address=sys.argv[1])
    print("joined", flush=True)
    sys.stdin.readline()
    mesh.put(np.ones(400 * 2**20 // 8))
    print("done", flush=True)
""")


@pytest.mark.node_options(num_cpus=1, object_store_memory=512 * MiB)
def test_driver_killed_mid_put_leaves_no_partial_object(fresh_node):
    proc = subprocess.Popen([sys.executable, "-c", PUTTER, fresh_node["session_dir"]], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "joined"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _kill_when_writing(lambda: proc.pid)
        proc.wait(5)
        # The daemon notices the dead driver within its liveness period.
        assert wait_for(lambda: _stats()["objects"] == 0, timeout=5), _stats()
        assert _stats()["used"] == 0
    finally:
        proc.kill()
        proc.wait(5)


SPILLER = textwrap.dedent("""
    import json, os, sys, time, psutil, numpy as np
    import meshcompute as mesh
    info = mesh.init(num_cpus=1, object_store_memory=64 << 20)
    refs = [mesh.put(np.random.default_rng(i).random(16 << 17)) for i in range(8)]  # 128 MiB
    store = mesh.nodes()[0]["ObjectStore"]
    daemon = [p for p in psutil.Process().children() if "meshcompute.node.daemon" in " ".join(p.cmdline())][0]
    tree = [daemon.pid] + [c.pid for c in daemon.children(recursive=True)]
    print(json.dumps({"session": info["session_dir"], "daemon": daemon.pid, "tree": tree,
                      "spill_dir": store["spill_dir"], "spilled": store["spilled_objects"]}), flush=True)
    time.sleep(60)
""")


def test_sigkill_of_the_daemon_leaves_no_arena_and_no_spill_files(tmp_path, monkeypatch):
    root = tmp_path / "spill-root"
    env = dict(os.environ, MESH_SPILL_DIR=str(root))
    proc = subprocess.Popen([sys.executable, "-c", SPILLER], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "driver failed to start"
        info = json.loads(line)
        arena = arena_path(info["session"])
        # Spill files live in a per-node subdirectory of MESH_SPILL_DIR.
        assert info["spill_dir"] == str(root / ("meshcompute_" + os.path.basename(info["session"])))
        assert info["spilled"] >= 4 and len(os.listdir(info["spill_dir"])) >= 5
        os.kill(info["daemon"], signal.SIGKILL)
        assert wait_for(lambda: not any(pid_alive(p) for p in info["tree"]), timeout=5)
        assert os.path.exists(arena) and os.path.exists(info["spill_dir"])  # nobody cleaned up yet
        from meshcompute.host.sessions import clean_stale_sessions

        monkeypatch.setenv("MESH_SPILL_DIR", str(root))
        clean_stale_sessions()  # what the next node started on this host does
        assert not os.path.exists(arena) and not os.path.exists(info["spill_dir"])
        assert not os.path.exists(info["session"])
    finally:
        proc.kill()
        proc.wait(5)


def test_clean_stale_sessions_leaves_arenas_of_live_daemons_alone():
    import fcntl

    from meshcompute.host.sessions import clean_stale_sessions

    arena = arena_path(f"/nowhere/s20260101000000_{os.getpid()}_abcdef")  # no session dir
    foreign = f"/dev/shm/meshcompute_x{os.getpid()}_not_a_session"
    fd = os.open(arena, os.O_RDWR | os.O_CREAT, 0o600)
    open(foreign, "w").close()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a live daemon holds
        clean_stale_sessions()
        assert os.path.exists(arena)
        os.close(fd)
        fd = -1
        clean_stale_sessions()
        assert not os.path.exists(arena) and os.path.exists(foreign)
    finally:
        if fd >= 0:
            os.close(fd)
        for path in (arena, foreign):
            if os.path.exists(path):
                os.unlink(path)


def test_a_put_copies_only_behind_the_populating_thread_at_any_offset():
    import mmap

    from meshcompute.store.layout import encoded_size, read_object, write_object_behind
    from meshcompute.store.shm import PUT_CHUNK, PopulatedRanges, Prefaulter, mapping_address

    offset, payload = 3 * PUT_CHUNK + 4096, np.random.default_rng(7).integers(0, 255, 5 * PUT_CHUNK, np.uint8)
    size = encoded_size(3, [payload.nbytes])
    path = f"/dev/shm/meshcompute_test_{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    try:
        os.ftruncate(fd, offset + size)
        os.pwrite(fd, bytes(offset + size), 0)  # written pages, as the warm region's are
        mm = mmap.mmap(fd, offset + size)
        populator = Prefaulter(mapping_address(mm), PopulatedRanges(offset + size), idle_unmap_s=None)
        job = populator.populate_now(offset, size)
        asked: list = []

        def ready(length: int) -> bool:
            ok = job.wait(length)
            asked.append((length, job.done_upto - offset))
            return ok

        view = memoryview(mm)[offset: offset + size]
        assert write_object_behind(view, b"abc", [memoryview(payload)], False, ready, PUT_CHUNK)
        # Every part was copied once the pages under it were mapped, never before.
        assert len(asked) >= 6 and all(done >= length for length, done in asked), asked
        assert asked[-1][0] == size
        meta, bufs, _ = read_object(view)
        assert bytes(meta) == b"abc" and np.array_equal(np.frombuffer(bufs[0], np.uint8), payload)
        del meta, bufs, view
        populator.close()
        mm.close()
    finally:
        os.close(fd)


def test_ranges_merge_and_cover():
    from meshcompute.store.shm import Ranges

    r = Ranges()
    r.add(100, 200)
    r.add(300, 400)
    assert r.covers(120, 200) and not r.covers(150, 350) and not r.covers(0, 50)
    r.add(200, 300)  # touching ranges merge
    assert r.covers(100, 400) and len(r) == 1 and r.total() == 300
    r.add(50, 60)
    r.add(0, 1000)
    assert len(r) == 1 and r.covers(0, 1000)


def test_puts_write_unmapped_blocks_with_pwritev_and_reused_ones_through_the_mapping(no_prefault, fresh_node,
                                                                                     monkeypatch):
    from meshcompute.owner import context
    from meshcompute.owner import store_client as core_mod

    core = context.core
    calls = []
    real = core_mod.pwrite_object
    monkeypatch.setattr(core_mod, "pwrite_object", lambda *a: calls.append(a[1]) or real(*a))
    first = np.arange(8 * MiB // 8, dtype=np.float64)
    ref = mesh.put(first)
    assert len(calls) == 1  # a block this process never mapped
    offset = calls[0]
    assert np.array_equal(mesh.get(ref), first)
    # The writer maps the block in the background; once it has, a put there is a memcpy.
    assert wait_for(lambda: core.store.touched.covers(offset, offset + 8 * MiB), timeout=10)
    del ref
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=5)
    second = first[::-1].copy()
    ref = mesh.put(second)
    assert len(calls) == 1 and mesh.get(ref)[0] == second[0]
    assert np.array_equal(mesh.get(ref), second)


def test_a_writer_maps_ahead_only_while_its_blocks_march_up_the_arena(fresh_node, monkeypatch):
    """Mapping the block after a put ahead of the next put pays for a loop that keeps what it
    puts; a loop that frees what it put reuses its block, and one put says nothing yet, so
    neither maps ahead (that work would compete with whatever reads the object)."""
    from meshcompute.owner import context

    core = context.core
    mapped_ahead = []
    real_request = core.store.prefaulter.request

    def request(offset, length, epoch, ahead=False):
        if ahead:
            mapped_ahead.append(offset)
        return real_request(offset, length, epoch, ahead=ahead)

    monkeypatch.setattr(core.store.prefaulter, "request", request)
    a = np.ones(8 * MiB // 8)
    first = mesh.put(a)
    assert mapped_ahead == []  # one put alone
    second = mesh.put(a * 2)  # the first is kept: the next block
    assert len(mapped_ahead) == 1
    del second
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 1, timeout=5)
    third = mesh.put(a * 3)  # back into the block just freed
    assert len(mapped_ahead) == 1
    assert mesh.get(third)[0] == 3 and mesh.get(first)[0] == 1


# ------------------------------------------------------- returning pages


@pytest.fixture
def shm_table(tmp_path):
    """A table over a real tmpfs arena (pages are allocated and punched as on a node)."""
    from meshcompute.store.pages import PagePool

    path = f"/dev/shm/meshcompute_test_pages_{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(fd, CAP)
    t = StoreTable(CAP, fd, str(tmp_path / "spill"), "test-node")
    t.pages = PagePool(CAP, floor=0, pool_max=CAP, window_s=1.0, min_punch=PAGE, align=PAGE)
    yield t
    os.close(fd)


def test_a_block_is_written_only_inside_the_zeroed_region_and_never_punched():
    from meshcompute.store.pages import EPOCH_CHUNK, PagePool

    pool = PagePool(64 * EPOCH_CHUNK)
    pool.zeroed = 16 * EPOCH_CHUNK
    assert pool.punch_info(0, 16 * EPOCH_CHUNK) == (0, 0, True)
    assert pool.punch_info(8 * EPOCH_CHUNK, 9 * EPOCH_CHUNK)[2] is False  # reaches past the zeroed region
    pool.done(4 * EPOCH_CHUNK, 5 * EPOCH_CHUNK, EPOCH_CHUNK, EPOCH_CHUNK, ok=True)
    assert pool.punch_info(0, 4 * EPOCH_CHUNK) == (1, 0, True)
    assert pool.punch_info(0, 5 * EPOCH_CHUNK) == (1, 1, False)  # a hole now


def test_table_punches_free_pages_beyond_the_warm_pool_highest_first(shm_table):
    from meshcompute.store.pages import allocated_bytes, resident_extents

    t = shm_table
    copies = HeldCopies(t)
    datas = {oid: _data(i, 16 * PAGE) for i, oid in enumerate([b"a", b"b", b"c", b"d"])}
    offs = {oid: _sealed(t, oid, d) for oid, d in datas.items()}
    assert allocated_bytes(t.arena_fd) == 64 * PAGE
    t.free([b"a", b"b", b"c"])
    # Just put: the pool keeps what the last window allocated.
    assert t.return_pages(0.0) == [] and copies.jobs == []
    # A window later the pool shrinks to its floor; the highest free pages go first.
    t.pages.floor = 16 * PAGE
    t.return_pages(5.0)
    assert len(copies.jobs) == 1 and t.pages.punching == 32 * PAGE
    assert t.statistics().used == 16 * PAGE  # "d" only: a range being punched holds no object
    # The range being punched is reserved: a new block goes elsewhere meanwhile.
    [(_, _, (status, off, epoch, punched_at, written))] = t.request_create(b"e", 8 * PAGE, "owner", "w", "w", 2)
    assert status == "ok" and (epoch, punched_at, written) == (0, 0, False)  # nothing zeroed at start here
    assert not offs[b"b"] <= off < offs[b"c"] + 16 * PAGE
    copies.finish()
    assert t.pages.punching == 0 and t.pages.epoch == 1
    kept = resident_extents(t.arena_fd, 0, CAP)
    assert (offs[b"a"], offs[b"a"] + 16 * PAGE) in kept and allocated_bytes(t.arena_fd) == 32 * PAGE
    assert os.pread(t.arena_fd, 16 * PAGE, offs[b"d"]) == datas[b"d"]
    # A block over punched pages says so: its writer's mapping of them is gone.
    t.free([b"e"])
    t.pages.zeroed = CAP  # (as if zeroed at start: punched since all the same)
    [(_, _, (status, off, epoch, punched_at, written))] = t.request_create(b"f", 48 * PAGE, "owner", "w", "w", 3)
    assert status == "ok" and off == 0 and (epoch, punched_at, written) == (1, 1, False)
    # With no floor, every free page goes.
    t.free([b"f"])
    t.pages.floor = 0
    t.return_pages(10.0)  # "e" and "f" were allocated since the last check: kept
    assert copies.jobs == []
    t.return_pages(20.0)
    copies.finish()
    assert allocated_bytes(t.arena_fd) == 16 * PAGE
    assert resident_extents(t.arena_fd, 0, CAP) == [(offs[b"d"], offs[b"d"] + 16 * PAGE)]
    assert t.statistics().used == 16 * PAGE


def test_the_warm_pool_keeps_a_bounded_part_of_a_burst_for_a_while_after_it():
    from meshcompute.store.pages import PagePool

    floor, linger = 64 * MiB, 256 * MiB
    pool = PagePool(4 << 30, floor=floor, pool_max=1 << 30, window_s=2.0, linger=linger, linger_s=30.0)
    assert pool.target(0.0) == floor
    pool.note_allocated(1000 * MiB)
    assert pool.target(0.25) == 1 << 30  # twice the last window's bytes, capped
    assert pool.target(3.0) == floor + linger  # the window passed: the lingering part stays
    assert pool.target(29.0) == floor + linger
    assert pool.target(31.0) == floor  # 30 s after the allocations
    pool.note_allocated(50 * MiB)
    assert pool.target(40.0) == floor + 50 * MiB  # (more than twice it: the floor is kept besides)
    assert pool.target(43.0) == floor + 50 * MiB  # a small burst lingers whole
    assert pool.target(75.0) == floor
    off = PagePool(4 << 30, floor=floor, pool_max=1 << 30, window_s=2.0)  # linger 0: as before
    off.note_allocated(1000 * MiB)
    assert off.target(0.25) == 1 << 30 and off.target(3.0) == floor


def test_table_restores_a_spilled_object_into_punched_pages(shm_table):
    from meshcompute.store.pages import resident_extents

    t = shm_table
    data = _data(7, 32 * PAGE)
    off = _sealed(t, b"a", data)
    _sealed(t, b"b", _data(8, 32 * PAGE))
    t.create(b"c", 32 * PAGE, "owner", "writer")  # "a" is spilled to make room
    assert t.objects[b"a"].offset is None
    t.free([b"b", b"c"])
    t.return_pages(0.0)
    t.return_pages(10.0)  # a window later: every free page goes
    assert resident_extents(t.arena_fd, 0, CAP) == [] and t.pages.punched_bytes > 0
    [(_, _, (restored, size))] = t.pin(b"a", "reader", 3)
    assert restored == off and os.pread(t.arena_fd, size, restored) == data


def test_populated_ranges_forget_chunks_punched_after_they_were_mapped():
    from meshcompute.store.pages import EPOCH_CHUNK
    from meshcompute.store.shm import PopulatedRanges

    r = PopulatedRanges(8 * EPOCH_CHUNK)
    r.add_at(0, 3 * EPOCH_CHUNK, epoch=2)
    r.forget_punched(0, EPOCH_CHUNK, punched_at=2)  # a punch before we mapped it: still ours
    assert r.covers(0, 3 * EPOCH_CHUNK)
    r.forget_punched(EPOCH_CHUNK, EPOCH_CHUNK + PAGE, punched_at=3)  # punched since
    assert r.covers(0, EPOCH_CHUNK) and not r.covers(EPOCH_CHUNK, EPOCH_CHUNK + PAGE)
    assert r.covers(2 * EPOCH_CHUNK, 3 * EPOCH_CHUNK) and len(r) == 2
    r.add_at(EPOCH_CHUNK, 2 * EPOCH_CHUNK, epoch=3)  # mapped again after that punch
    r.forget_punched(EPOCH_CHUNK, 2 * EPOCH_CHUNK, punched_at=3)
    assert r.covers(0, 3 * EPOCH_CHUNK)


@pytest.fixture
def no_prefault(monkeypatch):
    monkeypatch.setenv("MESH_STORE_PREFAULT", "0")  # idle means no resident pages at all


@pytest.fixture
def no_linger(monkeypatch):
    monkeypatch.setenv("MESH_STORE_WARM_LINGER", "0")  # the pool falls to its floor 2-3 s after puts


def _arena_bytes() -> int:
    from meshcompute.owner import context

    return os.fstat(context.core.store.fd).st_blocks * 512


def _shared_resident() -> int:
    """Bytes of shared memory in this process's page table (/proc: RssShmem)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


def test_a_put_into_zeroed_pages_maps_them_as_it_copies_and_an_idle_writer_unmaps_them(fresh_node, monkeypatch):
    from meshcompute.owner import context

    core = context.core
    size = 32 * MiB
    # The daemon zeroes its pre-allocated region (64 MiB of this 256 MiB store) in the background.
    assert wait_for(lambda: _stats()["zeroed_bytes"] >= 64 * MiB, timeout=30), _stats()
    core.store.prefaulter.unmap_when_idle_for(3600.0)
    before = dict(core.store.writes)
    first = np.random.default_rng(1).random(size // 8)
    ref = mesh.put(first)
    assert dict(core.store.writes) == {**before, "populated": before.get("populated", 0) + 1}
    assert np.array_equal(mesh.get(ref), first)
    mapped = _shared_resident()
    assert mapped >= size
    # Idle a moment: the writer drops what it mapped; the daemon's arena keeps the pages.
    arena = _arena_bytes()
    core.store.prefaulter.unmap_when_idle_for(0.2)
    assert wait_for(lambda: core.store.touched.total() == 0, timeout=10)
    assert core.store.prefaulter.unmapped_bytes >= size
    assert _shared_resident() <= mapped - size + MiB and _arena_bytes() >= arena - MiB
    # The object reads the same through the dropped mapping (the pages fault back in).
    assert np.array_equal(mesh.get(ref), first)
    del ref
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=5)
    # The freed block is written again the same way, and reads back right.
    core.store.prefaulter.unmap_when_idle_for(3600.0)
    second = first[::-1].copy()
    ref = mesh.put(second)
    assert core.store.writes["populated"] == before.get("populated", 0) + 2 and "pwritev" not in core.store.writes
    assert np.array_equal(mesh.get(ref), second)
    del ref
    gc.collect()
    assert wait_for(lambda: _stats()["objects"] == 0, timeout=5)
    # Now mapped: a memcpy, on two threads for an object this large; the halves meet right.
    third = np.random.default_rng(3).random(size // 8)
    mapped = core.store.writes["mapped"]
    ref = mesh.put(third)
    assert core.store.writes["mapped"] == mapped + 1
    assert np.array_equal(mesh.get(ref), third)


@pytest.mark.node_options(object_store_memory=1 << 30)
def test_freed_arena_pages_go_back_to_the_kernel_and_reuse_stays_correct(no_prefault, no_linger, fresh_node,
                                                                          monkeypatch):
    from meshcompute.owner import context
    from meshcompute.owner import store_client as core_mod

    core = context.core
    pwrites = []
    real = core_mod.pwrite_object
    monkeypatch.setattr(core_mod, "pwrite_object", lambda *a: pwrites.append(a[1]) or real(*a))
    monkeypatch.setattr(core_mod, "MAP_AHEAD_MAX", 0)  # only the blocks written are mapped
    # The writer keeps what it mapped however long it stays idle: what it loses is the punches' doing.
    core.store.prefaulter.unmap_when_idle_for(None)
    idle = _arena_bytes()
    rng = np.random.default_rng(5)
    offsets: list = []
    for _ in range(3):
        arrays = [rng.random(64 * MiB // 8) for _ in range(4)]
        if offsets:  # the writer still has the last round's blocks in its books...
            assert all(core.store.touched.covers(o, o + 64 * MiB) for o in offsets)
        n = len(pwrites)
        refs = [mesh.put(a) for a in arrays]
        assert _arena_bytes() >= idle + 256 * MiB
        # ...but they were punched since: the same blocks are written with pwritev, not
        # through a mapping that lost them.
        assert len(pwrites) == n + 4 and (not offsets or pwrites[n:] == offsets)
        offsets = pwrites[n:]
        for a, ref in zip(arrays, refs):
            got = mesh.get(ref)
            assert np.array_equal(got, a)
            del got
        # The writer maps its blocks in the background.
        assert wait_for(lambda got=offsets: all(core.store.touched.covers(o, o + 64 * MiB) for o in got), timeout=20)
        del refs, arrays, ref, a
        gc.collect()
        # Once the puts stop, the warm pool shrinks to nothing and the pages go back.
        assert wait_for(lambda: _arena_bytes() <= idle + 16 * MiB, timeout=20), _arena_bytes()
    # (The file shrinks when a punch returns, on a helper thread; the loop counts it just after.)
    assert wait_for(lambda: _stats()["punched_bytes"] >= 3 * 256 * MiB, timeout=5), _stats()


@pytest.mark.node_options(object_store_memory=1 << 30)
def test_after_a_burst_a_bounded_part_of_its_pages_stays_for_the_next(no_prefault, fresh_node):
    from meshcompute.node.config import default_warm_linger

    linger = default_warm_linger(1 << 30)
    assert linger == 256 * MiB
    idle = _arena_bytes()
    refs = [mesh.put(np.full(64 * MiB // 8, i, dtype=np.int64)) for i in range(6)]
    assert _arena_bytes() >= idle + 384 * MiB
    del refs
    gc.collect()
    # What is beyond the lingering part goes back within seconds, and no more than that.
    assert wait_for(lambda: _arena_bytes() <= idle + linger + 16 * MiB, timeout=20), _arena_bytes()
    assert wait_for(lambda: _stats()["punching_bytes"] == 0, timeout=5)  # each punch counted
    punched = _stats()["punched_bytes"]
    assert punched >= 128 * MiB - 16 * MiB
    for _ in range(10):  # the lingering part stays resident (its 30 s are not over)
        time.sleep(0.5)
        assert _arena_bytes() >= idle + linger - 16 * MiB and _stats()["punched_bytes"] == punched


@pytest.mark.node_options(object_store_memory=1 << 30)
def test_a_put_loop_keeps_its_pages_warm(no_prefault, fresh_node, monkeypatch):
    from meshcompute.owner import context
    from meshcompute.owner import store_client as core_mod

    core = context.core
    pwrites = []
    real = core_mod.pwrite_object
    monkeypatch.setattr(core_mod, "pwrite_object", lambda *a: pwrites.append(a[1]) or real(*a))
    a = np.arange(32 * MiB // 8, dtype=np.float64)
    ref = mesh.put(a)
    assert len(pwrites) == 1
    assert wait_for(lambda: core.store.touched.covers(pwrites[0], pwrites[0] + 32 * MiB), timeout=10)
    del ref
    for i in range(8):
        time.sleep(0.3)  # longer than the pool's check period, within its window
        ref = mesh.put(a + i)
        assert mesh.get(ref)[1] == 1 + i
        del ref
    # Every put reused the first block, still warm and still mapped: one memcpy each.
    assert len(pwrites) == 1 and _stats()["punched_bytes"] == 0
