"""The task path's message budget, counted message by message.

Each test names a back-and-forth the runtime once had and holds the path to the
count it needs now.  The counts come from the runtime's own counters of
messages sent and received by type (``Core.sent`` / ``Core.received``).
TASK_STATS (a timer while counters move) and WORKER_OUTPUT are left out: they
are not on the task path.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.owner import context
from meshcompute.wire.messages import Msg

from .conftest import wait_for

OFF_PATH = {Msg.TASK_STATS, Msg.WORKER_OUTPUT}


def _snapshot(core) -> tuple[dict, dict]:
    return dict(core.sent), dict(core.received)


def _delta(core, before) -> dict[str, int]:
    sent, received = before
    out: dict[str, int] = {}
    for now, then, tag in ((core.sent, sent, "sent"), (core.received, received, "received")):
        for kind, n in now.items():
            if kind not in OFF_PATH and n - then.get(kind, 0):
                out[f"{tag} {Msg(kind).name}"] = n - then.get(kind, 0)
    return out


@mesh.remote
def add_one(x):
    return x + 1


@mesh.remote
def short_sleep(s):
    time.sleep(s)
    return s


@mesh.remote
def child(x):
    return x * 2


@mesh.remote
def parent(x):
    core = context.core
    before = (dict(core.sent), dict(core.received))
    value = mesh.get(child.remote(x))
    return value, _delta(core, before)


def test_warm_sync_task_costs_two_messages(fresh_node):
    """Was: a lease kept 10 ms, so get(f.remote()) with work between calls paid
    REQUEST_LEASE + LEASE_GRANTED + RETURN_LEASE per task."""
    core = context.core
    assert mesh.get(add_one.remote(0)) == 1  # warm: the worker has the function and a lease
    before = _snapshot(core)
    n = 20
    for i in range(n):
        assert mesh.get(add_one.remote(i)) == i + 1
        time.sleep(0.02)  # the driver's own work between calls
    assert _delta(core, before) == {"sent PUSH_TASKS": n, "received TASKS_DONE": n}


def test_nested_child_run_inline_costs_no_message(fresh_node):
    """Was: the inline child's result went to the worker's own inbox (TASKS_DONE to
    self), then BLOCKED/UNBLOCKED to the daemon, and its lease request was granted
    after the parent ended and returned again."""
    mesh.get(parent.remote(1))  # warm
    value, delta = mesh.get(parent.remote(21))
    assert value == 42
    assert delta == {}


def test_batch_leaves_no_stale_grants(fresh_node):
    """Was: after 40 tasks of 20 ms on 2 CPUs, 16 grants arrived for requests the
    queue no longer needed and were returned at once."""
    core = context.core
    mesh.get(short_sleep.remote(0))
    held = len(core.tasks.lease_by_id)
    before = _snapshot(core)
    assert mesh.get([short_sleep.remote(0.02) for _ in range(40)]) == [0.02] * 40
    time.sleep(0.7)  # the idle leases go back
    delta = _delta(core, before)
    assert core.tasks.stale_grants == 0, delta
    assert delta.get("received LEASE_GRANTED", 0) + held == delta.get("sent RETURN_LEASE", 0) <= 2, delta
    assert not core.tasks.requests, "every lease request was granted or withdrawn"
    # Was: LEASE_REVOKE went to the very owner whose own requests were waiting.
    assert "received LEASE_REVOKE" not in delta, delta


@pytest.mark.node_options(num_cpus=2)
def test_long_task_never_waits_behind_another_while_a_cpu_is_free(fresh_node):
    """Was: a batch of tasks of a function known to be short was pushed to one
    worker; a call of it that turned long then held the ones behind it."""

    @mesh.remote
    def maybe_slow(s):
        time.sleep(s)
        return s

    mesh.get([maybe_slow.remote(0) for _ in range(50)])  # known short now
    start = time.monotonic()
    refs = [maybe_slow.remote(1.0), maybe_slow.remote(1.0)]
    mesh.get(refs)
    assert time.monotonic() - start < 1.8, "the second call waited behind the first on one worker"


def test_dropping_many_refs_at_once_wakes_the_io_thread_a_few_times(fresh_node):
    """Was: every dropped ref posted its release with a write to the I/O thread's
    wake-up fd (a syscall, and a thread woken) until that thread had the GIL back
    to say it was up: the 3,000 refs of a num_returns=3000 task cost ~2,700 writes."""
    core = context.core
    refs = [mesh.put(i) for i in range(3000)]
    ids = [r._id for r in refs]
    time.sleep(0.2)  # the I/O thread asleep
    before = core.io.wakeups
    while refs:
        refs.pop()
    core.io.call(lambda: None)  # posted after the releases: they ran before it
    assert not any(oid in core.objects.entries for oid in ids), "every dropped object was freed"
    assert core.io.wakeups - before < 300, core.io.wakeups - before


@mesh.remote
def get_repeatedly(box):
    core = context.core
    before = _snapshot(core)
    first = mesh.get(box[0])
    first_delta = _delta(core, before)
    before = _snapshot(core)
    values = [mesh.get(box[0]) for _ in range(3)]
    assert all(not v.flags.writeable for v in values) and first.ctypes.data == values[0].ctypes.data
    return int(values[-1][-1]), first_delta, _delta(core, before)


def _store_objects(core) -> int:
    return core.node_info()["store"]["objects"]


def test_repeated_get_of_a_store_object_costs_no_message(fresh_node):
    """Was: every get of a store object pinned it (STORE_PIN and its REPLY) and mapped it
    afresh, and each value's mapping unpinned it once dropped (STORE_UNPIN): three messages
    per get, in the process that put the object too.  Now a put keeps its pin, and so does
    the first get in another process while it holds the ref."""
    core = context.core
    before = _snapshot(core)
    ref = mesh.put(np.arange(1 << 20))  # 8 MiB: in the store
    for _ in range(5):
        value = mesh.get(ref)
        assert value[-1] == (1 << 20) - 1 and not value.flags.writeable
        with pytest.raises(ValueError):
            value[0] = 1
        del value
    del ref
    gc.collect()
    assert wait_for(lambda: core.sent.get(Msg.STORE_FREE, 0) > before[0].get(Msg.STORE_FREE, 0), timeout=5)
    # The free carries the unpin of the put's kept pin: no message beyond the put's and the free.
    assert _delta(core, before) == {"sent STORE_CREATE": 1, "received REPLY": 1, "sent STORE_SEAL": 1,
                                    "sent STORE_FREE": 1}
    assert wait_for(lambda: _store_objects(core) == 0, timeout=5)
    # Another process (a borrower): its first get pins, its next ones send nothing.
    ref = mesh.put(np.arange(1 << 20))
    last, first_delta, delta = mesh.get(get_repeatedly.remote([ref]))
    assert last == (1 << 20) - 1
    assert first_delta.get("sent STORE_PIN") == 1 and delta == {}
    del ref
    gc.collect()
    assert wait_for(lambda: _store_objects(core) == 0, timeout=5), "the worker's kept pin outlived its ref"

