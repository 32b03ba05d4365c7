"""The pins a process keeps (owner/pins.py), driven step by step on a real mapping.

The values are built as the store client builds them: pickle protocol 5 with the
out-of-band buffers sliced from the pin's exporter.  What is checked is when a pin
is in use, when it is let go, and what the daemon is told.
"""

from __future__ import annotations

import gc
import mmap
import pickle

import numpy as np
import pytest

from meshcompute.owner.pins import PinCache
from meshcompute.store.layout import encoded_size, read_object, write_object

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


class Harness:
    """A PinCache over a 1 MiB anonymous mapping; ``refs`` plays the object table's ref counts
    and ``gone`` collects what the weakrefs report (the I/O thread would run value_gone)."""

    def __init__(self) -> None:
        self.mapping = mmap.mmap(-1, 1 << 20)
        self.refs: set[bytes] = set()
        self.gone: list = []
        self.pins = PinCache(memoryview(self.mapping).toreadonly(), self.refs.__contains__,
                             lambda oid, ref: self.gone.append((oid, ref)))
        self.next_offset = 0

    def store(self, oid: bytes, array: np.ndarray) -> tuple[int, int]:
        """Write ``array`` as the store would; returns its (offset, size)."""
        buffers: list = []
        meta = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        size = encoded_size(len(meta), [v.nbytes for v in views])
        offset = self.next_offset
        write_object(memoryview(self.mapping)[offset: offset + size], meta, views)
        self.next_offset += -(-size // 4096) * 4096
        return offset, size

    def read(self, oid: bytes):
        view = self.pins.view(oid)
        assert view is not None
        meta, bufs, _ = read_object(memoryview(view))
        del view
        return pickle.loads(meta, buffers=bufs)

    def run_gone(self) -> None:
        gone, self.gone = self.gone, []
        for oid, ref in gone:
            self.pins.value_gone(oid, ref)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    gc.collect()


def test_a_value_keeps_its_pin_in_use_until_it_is_gone(h):
    offset, size = h.store(A, np.arange(1000.0))
    h.refs.add(A)
    assert h.pins.add(A, offset, size, use=False) == (None, True)  # a put: kept, not in use
    value = h.read(A)
    again = h.read(A)
    assert value[999] == 999.0 and not value.flags.writeable and value.ctypes.data == again.ctypes.data
    with pytest.raises(ValueError):
        value[0] = 1.0
    assert not h.pins.let_go(A)  # in use: kept whatever the refs
    view = value[10:20]
    del value, again
    assert not h.pins.let_go(A) and h.gone == []  # a slice of a value is a value
    del view
    assert h.gone == []  # referenced: the weakref has nothing to decide
    assert h.pins.let_go(A) and A not in h.pins  # idle, no ref: the caller tells the daemon
    assert h.pins.take_unpins() == []


def test_the_last_value_gone_without_a_ref_unpins_once_per_turn(h):
    for oid in (A, B):
        h.pins.add(oid, *h.store(oid, np.ones(100)), use=False)
    values = [h.read(A), h.read(B)]
    del values
    assert sorted(oid for oid, _ in h.gone) == [A, B]
    h.run_gone()
    assert sorted(h.pins.take_unpins()) == [A, B] and len(h.pins) == 0
    assert h.pins.take_unpins() == []


def test_a_newer_value_makes_an_older_report_stale(h):
    h.pins.add(A, *h.store(A, np.ones(100)), use=False)
    value = h.read(A)
    del value
    value = h.read(A)  # a new exporter before the report of the old one is handled
    h.run_gone()
    assert A in h.pins and h.pins.take_unpins() == []
    del value
    h.run_gone()
    assert h.pins.take_unpins() == [A]


def test_release_idle_keeps_pins_in_use_and_lists_least_recently_read_first(h):
    for oid in (A, B, C):
        h.refs.add(oid)
        h.pins.add(oid, *h.store(oid, np.ones(100)), use=False)
    for oid in (C, A):
        del_me = h.read(oid)
        del del_me
    in_use = h.read(B)
    assert h.pins.release_idle([A, B, C, b"unknown" * 2]) == [C, A]
    assert B in h.pins and A not in h.pins
    del in_use
    assert h.pins.release_all_idle() == [B] and len(h.pins) == 0


def test_an_object_lost_for_good_is_let_go_when_its_value_goes_refs_or_not(h):
    h.refs.add(A)
    h.pins.add(A, *h.store(A, np.ones(100)), use=False)
    value = h.read(A)
    assert not h.pins.let_go(A, for_good=True)  # in use
    del value
    h.run_gone()
    assert h.pins.take_unpins() == [A]


def test_a_second_pin_of_a_kept_object_is_not_kept(h):
    offset, size = h.store(A, np.ones(100))
    exporter, kept = h.pins.add(A, offset, size, use=True)
    assert kept and exporter is not None
    again, kept = h.pins.add(A, offset, size, use=True)
    assert not kept and again is exporter  # the caller unpins its own
