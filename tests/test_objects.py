"""Objects: inline and shared-memory values, zero-copy reads, reference counting."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.exceptions import ObjectStoreFullError

from .conftest import store_used, wait_for

pytestmark = pytest.mark.usefixtures("node")

MiB = 1 << 20


@mesh.remote
def make_array(n_bytes, fill):
    return np.full(n_bytes // 8, fill, dtype=np.float64)


@mesh.remote
def total(arr):
    return float(arr.sum()), arr.flags.writeable


def test_small_values_round_trip():
    for value in [None, 1, 2.5, "text", b"bytes", [1, {"a": (2, 3)}], {"nested": [None] * 3}]:
        assert mesh.get(mesh.put(value)) == value


def test_a_get_right_after_a_put_needs_no_turn_of_the_io_thread():
    """A small value put by this thread is read back at once: the get does not wait for the
    I/O thread to record the put (it used to: two thread hand-offs per put + get)."""
    import threading

    from meshcompute.owner import context

    core = context.core
    gate = threading.Event()
    core.io.post(gate.wait, 30)  # the I/O thread is busy until the gate opens
    try:
        ref = mesh.put({"k": [1, 2]})
        assert mesh.get(ref, timeout=5) == {"k": [1, 2]}
        assert mesh.get([ref, ref], timeout=5) == [{"k": [1, 2]}] * 2
    finally:
        gate.set()
    oid = ref._id
    assert wait_for(lambda: oid not in core.objects.fresh and oid in core.objects.entries, timeout=5)
    del ref
    assert wait_for(lambda: oid not in core.objects.entries, timeout=5)


def test_large_numpy_is_zero_copy_and_read_only():
    arr = np.arange(4 * MiB, dtype=np.uint8)
    ref = mesh.put(arr)
    out = mesh.get(ref)
    assert np.array_equal(out, arr)
    assert not out.flags.writeable
    # Zero copy: the array's memory is a mapping of the node's shared-memory arena.
    assert _mapped_file(out.ctypes.data).startswith("/dev/shm/meshcompute_")


def _mapped_file(address: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else ""
    return ""


def test_large_task_results_and_arguments_go_through_the_store():
    ref = make_array.remote(20 * MiB, 1.5)
    s, writeable = mesh.get(total.remote(ref))
    assert s == 1.5 * (20 * MiB // 8) and writeable is False
    arr = mesh.get(ref)
    assert arr.shape == (20 * MiB // 8,) and arr[0] == 1.5
    # A large direct argument is stored once and read zero-copy by the task.
    big = np.ones(10 * MiB // 8)
    assert mesh.get(total.remote(big))[0] == float(big.sum())


def test_memory_is_freed_when_no_ref_remains():
    gc.collect()
    base = wait_for(lambda: store_used() or True) and store_used()
    refs = [mesh.put(np.zeros(8 * MiB // 8)) for _ in range(5)]
    # Not base + 40 MiB: an earlier test's object may be freed meanwhile.
    assert store_used() >= 5 * 8 * MiB
    task_ref = make_array.remote(8 * MiB, 2.0)
    mesh.get(task_ref)
    del refs, task_ref
    gc.collect()
    assert wait_for(lambda: store_used() <= base, timeout=5), (store_used(), base)


def test_view_stays_valid_after_the_object_is_freed():
    ref = mesh.put(np.full(16 * MiB // 8, 7.0))
    view = mesh.get(ref)
    del ref
    gc.collect()
    # Churn the store so a freed block would be reused by new objects.
    for i in range(6):
        r = mesh.put(np.full(16 * MiB // 8, float(i)))
        del r
    assert float(view[0]) == 7.0 and float(view[-1]) == 7.0
    assert view.sum() == 7.0 * (16 * MiB // 8)


def test_create_and_drop_far_more_than_capacity():
    # 4 GiB of arrays through a 512 MiB store: freeing keeps it within capacity.
    gc.collect()
    for i in range(64):
        ref = mesh.put(np.full(64 * MiB // 8, float(i)))
        assert mesh.get(ref)[0] == float(i)
        del ref
    for i in range(16):
        ref = make_array.remote(64 * MiB, float(i))
        assert mesh.get(total.remote(ref))[0] == float(i) * (64 * MiB // 8)
        del ref
    gc.collect()
    assert wait_for(lambda: store_used() < 64 * MiB, timeout=5)


def test_store_full_raises_with_an_explanation():
    # Refs alone would be spilled to make room; values being read (pinned) cannot move.
    refs = [mesh.put(np.zeros(100 * MiB // 8)) for _ in range(4)]
    views = mesh.get(refs)
    with pytest.raises(ObjectStoreFullError, match=r"in use.*pinned by readers \(4 objects"):
        mesh.put(np.zeros(200 * MiB // 8))
    del views, refs


def test_refs_inside_put_values_keep_their_objects_alive():
    inner = mesh.put(np.full(2 * MiB // 8, 3.0))
    outer = mesh.put({"inner": inner})
    inner_id = inner.hex()
    del inner
    gc.collect()
    time.sleep(0.1)
    got = mesh.get(outer)["inner"]
    assert got.hex() == inner_id
    assert mesh.get(got)[0] == 3.0


def test_refs_returned_from_tasks_stay_alive():
    @mesh.remote
    def producer():
        return [mesh.put(np.full(2 * MiB // 8, 4.0)), mesh.put("small")]

    refs = mesh.get(producer.remote())
    time.sleep(0.2)
    assert mesh.get(refs[0])[0] == 4.0
    assert mesh.get(refs[1]) == "small"


def test_borrowed_ref_in_worker_outlives_the_drivers_ref():
    @mesh.remote
    class Holder:
        def hold(self, box):
            self.ref = box[0]
            return True

        def read(self):
            return float(mesh.get(self.ref)[0])

    h = Holder.remote()
    ref = mesh.put(np.full(2 * MiB // 8, 9.0))
    assert mesh.get(h.hold.remote([ref]))
    del ref
    gc.collect()
    time.sleep(0.2)
    assert mesh.get(h.read.remote()) == 9.0


@mesh.remote(num_returns=2)
def _two_puts(i):
    return mesh.put(("a", i)), mesh.put(("b", i))


@mesh.remote
class _TwoPuts:
    @mesh.method(num_returns=2)
    def two(self, i):
        return mesh.put(("a", i)), mesh.put(("b", i))


def test_refs_nested_in_multiple_returns_live_as_long_as_the_outer_refs(node):
    """Was: the owner let the worker drop its hold on the inner refs (RELEASE_HANDOFF)
    before its own ADD_BORROWER went out, so about half of them were freed early."""
    actor = _TwoPuts.remote()
    for i in range(60):
        for r0, r1 in (_two_puts.remote(i), actor.two.remote(i)):
            assert mesh.get(mesh.get(r0)) == ("a", i) and mesh.get(mesh.get(r1)) == ("b", i)
