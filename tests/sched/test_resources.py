"""Request shapes and a node's resource pool."""

from __future__ import annotations

import math

import pytest

from meshcompute.sched.bundles import bundle_keys
from meshcompute.sched.resources import ResourcePool, feasible, fits, normalize_shape

# ------------------------------------------------------------ normalize_shape


@pytest.mark.parametrize("given, expected", [
    ({"CPU": 1}, (("CPU", 1.0),)),
    ({"GPU": 0.5, "CPU": 2.0}, (("CPU", 2.0), ("GPU", 0.5))),
    ({"CPU": 1.0, "GPU": 0, "memory": 0.0}, (("CPU", 1.0),)),
    ([["node:a", 0.001], ["CPU", 1]], (("CPU", 1.0), ("node:a", 0.001))),
    ({}, ()),
])
def test_normalize_sorts_and_drops_zero_amounts(given, expected):
    assert normalize_shape(given) == expected


@pytest.mark.parametrize("given, complaint", [
    ({"CPU": -100.0}, "negative"),
    ({"CPU": math.nan}, "finite"),
    ({"CPU": math.inf}, "finite"),
    ({"CPU": -math.inf}, "finite"),
    ({"CPU": "1"}, "number"),
    ({"CPU": None}, "number"),
    ({"CPU": True}, "number"),
    ({1: 1.0}, "string"),
    ({None: 1.0}, "string"),
    ([("CPU", 1.0), ("CPU", 2.0)], "twice"),
    ([("CPU",)], "pair"),
    (42, "mapping"),
])
def test_normalize_rejects_what_no_client_sends(given, complaint):
    with pytest.raises(ValueError, match=complaint):
        normalize_shape(given)


# ------------------------------------------------------------ fits / feasible


@pytest.mark.parametrize("shape, pool, expected", [
    ((("CPU", 1.0),), {"CPU": 1.0}, True),
    ((("CPU", 1.0),), {"CPU": 0.5}, False),
    ((("CPU", 0.3),), {"CPU": 0.1 + 0.2 - 1e-12}, True),  # float noise is tolerated
    ((("CPU", 1.0), ("GPU", 1.0)), {"CPU": 4.0}, False),
    ((("custom", 2.0),), {"custom": 2.0, "CPU": 1.0}, True),
    ((), {}, True),
    ((("node:a", 0.001),), {"node:a": 1.0, "CPU": 1.0}, True),
    ((("node:a", 0.001),), {"node:b": 1.0, "CPU": 1.0}, False),  # a marker counts like any resource
])
def test_fits_and_feasible_compare_every_amount(shape, pool, expected):
    assert fits(shape, pool) is expected
    assert feasible(shape, pool) is expected


def test_pool_feasible_uses_total_and_fits_uses_available():
    pool = ResourcePool({"CPU": 2.0}, 0)
    pool.acquire((("CPU", 2.0),))
    assert not pool.fits((("CPU", 1.0),))
    assert pool.feasible((("CPU", 1.0),))
    assert not pool.feasible((("CPU", 3.0),))
    assert pool.fits((("CPU", 1.0),), pool={"CPU": 1.0})  # a scheduler pass's own spare pool


# ------------------------------------------------------------------- GPUs

# (GPUs on the node, shapes granted in order, GPU ids each gets (None: does not fit), gpu_free after)
GPU_CASES = [
    ("two whole", 2, [1.0, 1.0, 1.0], [(0,), (1,), None], {0: 0.0, 1: 0.0}),
    ("two at once", 3, [2.0, 1.0], [(0, 1), (2,)], {0: 0.0, 1: 0.0, 2: 0.0}),
    ("fractions pack", 2, [0.5, 0.5, 0.5], [(0,), (0,), (1,)], {0: 0.0, 1: 0.5}),
    ("whole after fraction", 2, [0.5, 1.0, 1.0], [(0,), (1,), None], {0: 0.5, 1: 0.0}),
    # the amount fits (0.5 + 0.5 free) but no device is whole
    ("split amount", 2, [0.5, 0.5, 0.5, 1.0], [(0,), (0,), (1,), None], {0: 0.0, 1: 0.5}),
    ("fraction of none", 0, [0.25], [None], {}),
]


@pytest.mark.parametrize("gpus, asks, expected_ids, free_after",
                         [c[1:] for c in GPU_CASES], ids=[c[0] for c in GPU_CASES])
def test_gpu_devices_are_picked_lowest_first(gpus, asks, expected_ids, free_after):
    pool = ResourcePool({"CPU": 8.0, "GPU": float(gpus)}, gpus)
    for ask, ids in zip(asks, expected_ids):
        shape = normalize_shape({"GPU": ask})
        if ids is None:
            assert not pool.fits(shape)
        else:
            assert pool.fits(shape)
            assert pool.acquire(shape) == ids
    assert pool.gpu_free == pytest.approx(free_after)


@pytest.mark.parametrize("ask", [0.25, 1.0, 2.0])
def test_release_gives_devices_back(ask):
    pool = ResourcePool({"CPU": 8.0, "GPU": 2.0}, 2)
    shape = normalize_shape({"GPU": ask, "CPU": 1.0})
    ids = pool.acquire(shape)
    pool.release(shape, ids)
    assert pool.gpu_free == {0: 1.0, 1: 1.0}
    assert pool.available == pool.total


def test_a_bundle_gpu_request_takes_a_device():
    pool = ResourcePool({"CPU": 4.0, "GPU": 1.0}, 1)
    pool.reserve_bundle("pg", 0, {"GPU": 1.0})
    one, _ = bundle_keys("pg", 0, "GPU")
    assert pool.acquire(((one, 1.0),)) == (0,)
    assert not pool.fits(((one, 1.0),))


# ----------------------------------------------------------- lent CPU

# (steps, available CPU after): a 1-CPU lease on a 2-CPU node, its worker blocks and unblocks
LEND_CASES = [
    ("granted", [], 1.0),
    ("blocked", ["lend"], 2.0),
    ("unblocked", ["lend", "reclaim"], 1.0),
    ("returned", ["release"], 2.0),
    ("returned while blocked", ["lend", "release_lent"], 2.0),
    ("returned after unblock", ["lend", "reclaim", "release"], 2.0),
    # unblocked while the lent CPU is used by another grant: below zero for a while
    ("overcommitted", ["lend", "grant_other", "reclaim"], -1.0),
]


@pytest.mark.parametrize("steps, cpu_after", [c[1:] for c in LEND_CASES], ids=[c[0] for c in LEND_CASES])
def test_a_blocked_worker_lends_its_cpu(steps, cpu_after):
    pool = ResourcePool({"CPU": 2.0}, 0)
    shape = (("CPU", 1.0),)
    pool.acquire(shape)
    for step in steps:
        if step == "lend":
            pool.lend_cpu(1.0)
        elif step == "reclaim":
            pool.reclaim_cpu(1.0)
        elif step == "release":
            pool.release(shape, ())
        elif step == "release_lent":
            pool.release(shape, (), lent_cpu=1.0)
        elif step == "grant_other":
            pool.acquire((("CPU", 2.0),))
    assert pool.available["CPU"] == pytest.approx(cpu_after)


# ------------------------------------------------------------------ bundles


def test_reserving_a_bundle_moves_resources_under_its_names():
    pool = ResourcePool({"CPU": 4.0, "node:n": 1.0}, 0)
    pool.reserve_bundle("pg", 0, {"CPU": 2.0})
    one, whole = bundle_keys("pg", 0, "CPU")
    assert pool.available["CPU"] == 2.0 and pool.total["CPU"] == 4.0
    assert pool.total[one] == pool.available[one] == 2.0 and pool.total[whole] == 2.0
    assert pool.public_total() == {"CPU": 4.0}
    assert pool.public_available() == {"CPU": 2.0}
    assert one in pool.largest() and "node:n" not in pool.largest()


@pytest.mark.parametrize("last_here", [True, False])
def test_release_after_the_bundle_is_gone_does_not_bring_it_back(last_here):
    pool = ResourcePool({"CPU": 4.0}, 0)
    pool.reserve_bundle("pg", 0, {"CPU": 2.0})
    pool.reserve_bundle("pg", 1, {"CPU": 1.0})
    one, whole = bundle_keys("pg", 0, "CPU")
    shape = normalize_shape({one: 1.0, whole: 1.0})
    pool.acquire(shape)
    pool.return_bundle("pg", 0, {"CPU": 2.0}, last_here=last_here)
    pool.release(shape, ())
    assert one not in pool.total and one not in pool.available
    assert (whole in pool.available) is not last_here
    if not last_here:  # bundle 1 is left: the group-wide name holds exactly its 1 CPU
        assert pool.available[whole] == pytest.approx(1.0) and pool.total[whole] == pytest.approx(1.0)
    assert pool.available["CPU"] == pytest.approx(3.0)


@pytest.mark.parametrize("amount, left", [(1.0, 1.0), (2.0, None), (2.0 - 1e-12, None), (None, None)])
def test_remove_drops_a_name_once_nothing_is_left(amount, left):
    pool = ResourcePool({"CPU": 1.0}, 0)
    pool.add("x", 2.0)
    pool.remove("x", amount)
    assert pool.total.get("x") == left and pool.available.get("x") == left


def test_public_available_is_never_negative():
    pool = ResourcePool({"CPU": 1.0}, 0)
    pool.reclaim_cpu(2.0)
    assert pool.public_available() == {"CPU": 0.0}
