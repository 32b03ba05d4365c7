"""Object pulls driven message by message: the credit window, a stalled source, duplicates.

The pull state (node/pulls.py) runs here over a real store table in a real
file, with the messages it sends collected instead of sent and the clock
given by the test: no sockets, no sleeping.
"""

from __future__ import annotations

import mmap
import os
from types import SimpleNamespace

import pytest

from meshcompute.node.chunk_pages import ChunkPages, MapFirst
from meshcompute.node.pulls import (
    PULL_CHUNK_BYTES,
    PULL_RETRIES,
    PULL_STALL_S,
    PULL_WINDOW,
    Pulls,
)
from meshcompute.node.store_service import StoreService
from meshcompute.store.shm import mapping_address
from meshcompute.store.table import StoreTable
from meshcompute.wire.messages import Msg
from meshcompute.wire.sealing import ANSWER, Seal, new_key, new_session_id

SOURCE = "nodeB/daemon@tcp://127.0.0.1:1"
READER = "nodeA/p_reader@"
OID = b"o" * 28


class Net:
    """Collects what the pull sends, as (peer, type, fields)."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, peer, msg_type, *fields, frames=(), after=None, reading=None):
        self.sent.append((peer, msg_type, fields, list(frames)))
        if reading is not None:
            reading(lambda: bytes(frames[0]))  # as the bulk channel seals it
        if after is not None:
            after()  # the chunk's buffer is no longer read

    def of(self, msg_type):
        return [(p, f) for p, t, f, _ in self.sent if t == msg_type]


@pytest.fixture
def pulls(tmp_path):
    cap = 64 << 20
    fd = os.open(tmp_path / "arena", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, cap)
    table = StoreTable(cap, fd, str(tmp_path / "spill"), "nodeA")
    net = Net()
    clock = [100.0]
    store = StoreService(table, "nodeA", net.send, lambda node: None)
    peer = SimpleNamespace(node_id="nodeB", state="alive", address=SOURCE)
    located: list = []  # (oid, answer) of each LOCATE the pulls asked for
    p = Pulls(store, memoryview(bytearray(0)), lambda: "nodeA/daemon@", lambda: {"nodeB": peer}, net.send,
              lambda job, done: done(job(), None), lambda: clock[0],
              lambda oid, answer: located.append((oid, answer)))
    p.located = located
    yield p, net, clock, table
    os.close(fd)


def _chunk(p, net, offset, size):
    p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, offset, False, None), [b"x" * size])


def test_pull_keeps_a_window_of_chunk_requests_and_seals_when_all_arrived(pulls):
    p, net, clock, table = pulls
    size = 6 * PULL_CHUNK_BYTES + 5
    p.pull(OID, "nodeB", size, READER, 7, clock[0])
    asked = [f[1] for _, f in net.of(Msg.PULL_CHUNK)]
    assert asked == [i * PULL_CHUNK_BYTES for i in range(PULL_WINDOW)]
    for i in range(7):
        length = min(PULL_CHUNK_BYTES, size - i * PULL_CHUNK_BYTES)
        _chunk(p, net, i * PULL_CHUNK_BYTES, length)
    assert net.of(Msg.PULL_DONE) == [(SOURCE, (OID,))]
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER][0][0] == 7  # the reader's pin is answered
    assert table.objects[OID].sealed


def test_a_stalled_pull_asks_again_then_fails_and_never_waits_forever(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 9, clock[0])
    _chunk(p, net, 0, PULL_CHUNK_BYTES)  # the second chunk never comes
    clock[0] += PULL_STALL_S - 0.1
    p.expire(clock[0])
    assert len(net.of(Msg.PULL_CHUNK)) == 2, "asked again too early"
    for retry in range(PULL_RETRIES):
        clock[0] += PULL_STALL_S
        p.expire(clock[0])
        assert [f[1] for _, f in net.of(Msg.PULL_CHUNK)][2:] == [PULL_CHUNK_BYTES] * (retry + 1)
    assert not [f for peer, f in net.of(Msg.REPLY) if peer == READER]
    clock[0] += PULL_STALL_S
    p.expire(clock[0])
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER] == [(9, None)]  # the read fails: lost
    assert OID not in p.pulls
    assert table.statistics().used == 0, "the secondary block was freed"


def test_a_chunk_that_comes_twice_after_a_retry_is_written_once(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 3, clock[0])
    clock[0] += PULL_STALL_S
    p.expire(clock[0])  # both chunks asked again
    _chunk(p, net, 0, PULL_CHUNK_BYTES)
    _chunk(p, net, 0, PULL_CHUNK_BYTES)  # the first request's answer, late
    assert not net.of(Msg.PULL_DONE), "a repeated chunk counted as new bytes"
    _chunk(p, net, PULL_CHUNK_BYTES, PULL_CHUNK_BYTES)
    assert len(net.of(Msg.PULL_DONE)) == 1
    assert table.objects[OID].sealed


OTHER = "nodeC/daemon@tcp://127.0.0.1:2"


def test_a_pull_whose_source_dies_goes_on_from_another_copy(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 3 * PULL_CHUNK_BYTES, READER, 5, clock[0])
    _chunk(p, net, 0, PULL_CHUNK_BYTES)
    net.sent.clear()
    p.node_gone("nodeB")
    assert [oid for oid, _ in p.located] == [OID]
    assert not net.sent, "nothing is asked of anyone until another copy is found"
    p.located[0][1]([None, OTHER])  # one peer has no copy, node C has one
    asked = [(peer, f[1]) for peer, f in net.of(Msg.PULL_CHUNK)]
    # The first chunk again (it pins the copy there), then the chunks still missing.
    assert asked == [(OTHER, 0), (OTHER, PULL_CHUNK_BYTES), (OTHER, 2 * PULL_CHUNK_BYTES)]
    p.on_chunk_data(OTHER, (Msg.CHUNK_DATA, OID, 0, False, None), [b"x" * PULL_CHUNK_BYTES])  # dropped
    for offset in (PULL_CHUNK_BYTES, 2 * PULL_CHUNK_BYTES):
        p.on_chunk_data(OTHER, (Msg.CHUNK_DATA, OID, offset, False, None), [b"x" * PULL_CHUNK_BYTES])
    assert net.of(Msg.PULL_DONE) == [(OTHER, (OID,))]
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER][0][0] == 5
    assert p.started["resumed"] == 1


def test_a_pull_whose_source_dies_with_no_other_copy_fails(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 6, clock[0])
    p.node_gone("nodeB")
    p.located[0][1]([None, None])
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER] == [(6, None)]
    assert OID not in p.pulls and table.statistics().used == 0


def test_a_reader_sent_to_a_relay_asks_it_and_falls_back_to_the_holder_if_it_fails(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 3 * PULL_CHUNK_BYTES, READER, 5, clock[0])
    net.sent.clear()
    p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, 0, False, ("relay", OTHER)), [])
    assert [(peer, f[1], f[3]) for peer, f in net.of(Msg.PULL_CHUNK)] == [
        (OTHER, 0, False), (OTHER, PULL_CHUNK_BYTES, False), (OTHER, 2 * PULL_CHUNK_BYTES, False)]
    assert p.started["relayed"] == 1
    # The holder's refusals of the other first requests (it sent us elsewhere) change nothing.
    p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, PULL_CHUNK_BYTES, False, "not here"), [])
    assert OID in p.pulls
    p.on_chunk_data(OTHER, (Msg.CHUNK_DATA, OID, 0, False, None), [b"x" * PULL_CHUNK_BYTES])
    net.sent.clear()
    p.on_chunk_data(OTHER, (Msg.CHUNK_DATA, OID, PULL_CHUNK_BYTES, False, "the relay lost the object"), [])
    # Back to the holder, which must serve us itself: the first chunk (it pins) and the missing ones.
    assert [(peer, f[1], f[3]) for peer, f in net.of(Msg.PULL_CHUNK)] == [
        (SOURCE, 0, True), (SOURCE, PULL_CHUNK_BYTES, True), (SOURCE, 2 * PULL_CHUNK_BYTES, True)]
    for offset in (PULL_CHUNK_BYTES, 2 * PULL_CHUNK_BYTES):
        _chunk(p, net, offset, PULL_CHUNK_BYTES)
    assert net.of(Msg.PULL_DONE) == [(SOURCE, (OID,))]
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER][0][0] == 5
    assert table.objects[OID].sealed


def test_a_node_pulling_an_object_serves_its_chunks_on_as_they_land(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 1, clock[0])

    def served():
        return [f[1] for peer, f in net.of(Msg.CHUNK_DATA) if peer == OTHER and f[3] is None]

    p.on_pull_chunk(OTHER, (Msg.PULL_CHUNK, OID, 0, PULL_CHUNK_BYTES, False), [])
    p.on_pull_chunk(OTHER, (Msg.PULL_CHUNK, OID, PULL_CHUNK_BYTES, PULL_CHUNK_BYTES, False), [])
    assert served() == [], "a chunk not here yet waits"
    _chunk(p, net, 0, PULL_CHUNK_BYTES)
    assert served() == [0]
    _chunk(p, net, PULL_CHUNK_BYTES, PULL_CHUNK_BYTES)
    assert served() == [0, PULL_CHUNK_BYTES]
    assert p.served_bytes == 2 * PULL_CHUNK_BYTES
    # Sealed now: the relay's reader holds a pin on the copy until its PULL_DONE.
    assert table.objects[OID].sealed and OTHER in table.objects[OID].pins
    p.on_pull_done(OTHER, (Msg.PULL_DONE, OID), [])
    assert OTHER not in table.objects[OID].pins


def test_a_reader_whose_relay_stalls_goes_back_to_the_holder(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 2, clock[0])
    p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, 0, False, ("relay", OTHER)), [])
    net.sent.clear()
    clock[0] += PULL_STALL_S
    p.expire(clock[0])  # the relay sent nothing for PULL_STALL_S
    assert [(peer, f[1], f[3]) for peer, f in net.of(Msg.PULL_CHUNK)] == [
        (SOURCE, 0, True), (SOURCE, PULL_CHUNK_BYTES, True)]
    for offset in (0, PULL_CHUNK_BYTES):
        _chunk(p, net, offset, PULL_CHUNK_BYTES)
    assert [f for peer, f in net.of(Msg.REPLY) if peer == READER][0][0] == 2


def test_readers_waiting_on_a_relay_whose_pull_fails_hear_it_at_once(pulls):
    p, net, clock, table = pulls
    p.pull(OID, "nodeB", 2 * PULL_CHUNK_BYTES, READER, 4, clock[0])
    _chunk(p, net, 0, PULL_CHUNK_BYTES)
    p.on_pull_chunk(OTHER, (Msg.PULL_CHUNK, OID, PULL_CHUNK_BYTES, PULL_CHUNK_BYTES, False), [])
    p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, PULL_CHUNK_BYTES, False, "the object is not here any more"), [])
    assert [f[1:] for peer, f in net.of(Msg.CHUNK_DATA) if peer == OTHER] == [
        (PULL_CHUNK_BYTES, False, "the relay lost the object")]
    assert OID not in p.pulls and table.statistics().used == 0


def test_chunk_pages_are_mapped_once_until_punched_and_dropped_once_idle():
    MiB = 1 << 20
    pages = ChunkPages(64 * MiB)
    assert pages.take_idle(100.0, 2.0) is None  # nothing touched
    # (epoch now, latest punch epoch there, all written), as PagePool.punch_info gives them
    how = pages.plan(8 * MiB, 16 * MiB, (5, 0, False), 100.0)
    assert how == MapFirst(5, record=True)  # not mapped: map it first
    pages.mapped(8 * MiB, 16 * MiB, how)
    pages.done(100.1)
    assert pages.plan(8 * MiB, 16 * MiB, (5, 0, False), 100.5) is None  # mapped already
    pages.done(100.5)
    how = pages.plan(0, 8 * MiB, (5, 0, False), 101.0)
    assert how is not None  # its neighbour is not
    pages.mapped(0, 8 * MiB, how)
    pages.done(101.0)
    assert pages.plan(4 * MiB, 12 * MiB, (5, 0, False), 101.0) is None
    pages.done(101.0)
    # A punch after they were mapped (epoch 7 > 5) took the pages out of every mapping.
    assert pages.plan(8 * MiB, 16 * MiB, (7, 7, False), 101.5) == MapFirst(7, record=True)
    pages.done(101.5)
    assert pages.take_idle(103.4, 2.0) is None  # a chunk 1.9 s ago: transfers may go on
    assert pages.take_idle(103.5, 2.0) == (0, 16 * MiB)
    assert pages.take_idle(110.0, 2.0) is None  # dropped once
    # While the drop's unmap runs, a chunk maps its pages but records nothing (they may be
    # zapped under it); the pages it touched are dropped the next time.
    how = pages.plan(0, 8 * MiB, (7, 0, False), 111.0)
    assert how == MapFirst(7, record=False)
    pages.mapped(0, 8 * MiB, how)
    pages.done(111.0)
    assert pages.populated.spans() == [] and pages.take_idle(120.0, 2.0) is None  # (still dropping)
    pages.dropped()
    assert pages.take_idle(120.0, 2.0) == (0, 8 * MiB)
    pages.dropped()


def test_chunk_pages_are_not_dropped_while_a_chunk_is_in_progress():
    """A chunk job can wait in the helper threads' queue behind a long spill: its pages are
    not dropped before it completes, however long ago it was planned."""
    pages = ChunkPages(64 << 20)
    how = pages.plan(0, 8 << 20, (1, 0, False), 100.0)
    assert pages.take_idle(150.0, 2.0) is None  # planned 50 s ago, still in progress
    pages.mapped(0, 8 << 20, how)
    pages.done(150.0)
    assert pages.take_idle(151.0, 2.0) is None  # completed 1 s ago
    assert pages.take_idle(152.0, 2.0) == (0, 8 << 20)


def test_the_daemon_keeps_chunk_pages_mapped_as_long_as_the_store_keeps_pages_warm(pulls):
    p, net, clock, table = pulls
    table.pages.linger, table.pages.linger_s = 64 << 20, 30.0  # as a daemon's store (node/config.py)
    p.pages.plan(0, 8 << 20, (0, 0, False), clock[0])
    p.pages.done(clock[0])
    p.tick(clock[0] + 2.5)
    assert (p.pages.start, p.pages.end) == (0, 8 << 20)  # a pause of seconds: still mapped
    p.tick(clock[0] + 30.5)
    assert p.pages.end == 0  # dropped once the pool's linger is over
    table.pages.linger = 0  # MESH_STORE_WARM_LINGER=0: the pool keeps pages its window long
    p.pages.plan(0, 8 << 20, (0, 0, False), clock[0] + 40)
    p.pages.done(clock[0] + 40)
    p.tick(clock[0] + 40 + table.pages.window_s)
    assert p.pages.end == 0


def _resident_in_mapping(base: int) -> int:
    """Resident bytes of this process's mapping that starts at ``base`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) == base
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no such mapping")


def test_chunks_map_their_pages_once_and_the_daemon_drops_them_when_idle(tmp_path, monkeypatch):
    """Over a real mapping of a tmpfs-like arena: a pull opens sealed chunks straight into
    the block, mapping each chunk's pages first; serving the object on reads them without
    mapping them again; once no chunk moved for the idle time they leave the page table
    in one call (the file keeps their bytes), and the next chunk maps them again."""
    import meshcompute.node.pulls as pulls_module

    populated, unmapped = [], []
    real_populate, real_unmap = pulls_module.populate, pulls_module.unmap_pages
    monkeypatch.setattr(pulls_module, "populate", lambda b, o, n: populated.append((o, n)) or real_populate(b, o, n))
    monkeypatch.setattr(pulls_module, "unmap_pages", lambda b, o, n: unmapped.append((o, n)) or real_unmap(b, o, n))
    cap = 64 << 20
    fd = os.open(tmp_path / "arena", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, cap)
    arena = mmap.mmap(fd, cap)
    try:
        base = mapping_address(arena)
        if real_populate(base, 0, mmap.PAGESIZE):
            pytest.skip("this kernel cannot populate a mapping in one call (Linux < 5.14)")
        real_unmap(base, 0, mmap.PAGESIZE)
        table = StoreTable(cap, fd, str(tmp_path / "spill"), "nodeA")
        net, clock = Net(), [100.0]
        store = StoreService(table, "nodeA", net.send, lambda node: None)
        peer = SimpleNamespace(node_id="nodeB", state="alive", address=SOURCE)
        p = Pulls(store, memoryview(arena), lambda: "nodeA/daemon@", lambda: {"nodeB": peer}, net.send,
                  lambda job, done: done(job(), None), lambda: clock[0], lambda oid, answer: None)
        seal = Seal(new_key(), new_session_id())
        size = 2 * PULL_CHUNK_BYTES
        data = os.urandom(size)
        p.pull(OID, "nodeB", size, READER, 7, clock[0])
        for i, offset in enumerate((0, PULL_CHUNK_BYTES)):
            prefix, *boxes = seal.seal(ANSWER, 2 * i, [b"header", data[offset: offset + PULL_CHUNK_BYTES]])
            _, part = seal.open_first(ANSWER, 2 * i, prefix, boxes)
            p.on_chunk_data(SOURCE, (Msg.CHUNK_DATA, OID, offset, False, None), [part])
        start = table.objects[OID].offset
        assert table.objects[OID].sealed
        assert populated == [(start, PULL_CHUNK_BYTES), (start + PULL_CHUNK_BYTES, PULL_CHUNK_BYTES)]
        assert _resident_in_mapping(base) >= size
        # Served on to another node: read from the pages mapped already.
        for offset in (0, PULL_CHUNK_BYTES):
            p.on_pull_chunk(OTHER, (Msg.PULL_CHUNK, OID, offset, PULL_CHUNK_BYTES, True), [])
        served = [f for peer_, t, f, fr in net.sent if t == Msg.CHUNK_DATA and peer_ == OTHER]
        assert len(served) == 2 and len(populated) == 2 and p.pages.in_progress == 0
        p.tick(clock[0] + 1.0)
        assert unmapped == [] and _resident_in_mapping(base) >= size  # within the idle time: kept
        p.tick(clock[0] + 2.5)
        assert unmapped == [(start, size)] and _resident_in_mapping(base) == 0
        assert arena[start: start + size] == data  # the file kept the bytes
        # The next chunk served maps its pages again.
        clock[0] += 10
        p.on_pull_chunk(OTHER, (Msg.PULL_CHUNK, OID, 0, PULL_CHUNK_BYTES, True), [])
        assert populated[2:] == [(start, PULL_CHUNK_BYTES)]
    finally:
        os.close(fd)  # (the mapping goes with the last view of it)
