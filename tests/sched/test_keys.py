"""scheduling_key: which tasks may share a queue and leases."""

from __future__ import annotations

import pytest

from meshcompute.sched.keys import LOCALITY_MIN_BYTES, lease_target, preferred_node, scheduling_key

MiB = 1 << 20
CPU1 = (("CPU", 1.0),)
BIG = LOCALITY_MIN_BYTES

# (case, locality, preferred node)
PREFERRED = [
    ("no arguments", {}, None),
    ("small arguments", {"a": BIG - 1, "b": 10}, None),
    ("one big", {"a": BIG}, "a"),
    ("the most", {"a": BIG, "b": 3 * BIG, "c": 2 * BIG}, "b"),
    ("tie: smallest id", {"c": 2 * BIG, "b": 2 * BIG}, "b"),
]


@pytest.mark.parametrize("locality, expected", [c[1:] for c in PREFERRED], ids=[c[0] for c in PREFERRED])
def test_preferred_node(locality, expected):
    assert preferred_node(locality) == expected


# (case, first task (shape, strategy, locality), second task, same key)
KEYS = [
    ("same everything", (CPU1, None, {}), (CPU1, None, {}), True),
    ("DEFAULT is the default", (CPU1, None, {}), (CPU1, "DEFAULT", {}), True),
    ("other shape", (CPU1, None, {}), ((("CPU", 2.0),), None, {}), False),
    ("SPREAD apart", (CPU1, None, {}), (CPU1, "SPREAD", {}), False),
    ("affinity apart", (CPU1, None, {}), (CPU1, ("node", "b", True), {}), False),
    ("soft and hard apart", (CPU1, ("node", "b", False), {}), (CPU1, ("node", "b", True), {}), False),
    ("affinity to other nodes", (CPU1, ("node", "b", True), {}), (CPU1, ("node", "c", True), {}), False),
    ("wire list equals tuple", (CPU1, ["node", "b", True], {}), (CPU1, ("node", "b", True), {}), True),
    ("arguments on another node", (CPU1, None, {"a": 8 * MiB}), (CPU1, None, {"b": 8 * MiB}), False),
    ("arguments on the same node", (CPU1, None, {"a": 8 * MiB}), (CPU1, None, {"a": 2 * MiB, "b": MiB}), True),
    ("small arguments do not split", (CPU1, None, {"a": 1000}), (CPU1, None, {"b": 1000}), True),
    ("locality against none", (CPU1, None, {"a": 8 * MiB}), (CPU1, None, {}), False),
    ("SPREAD ignores locality", (CPU1, "SPREAD", {"a": 8 * MiB}), (CPU1, "SPREAD", {"b": 8 * MiB}), True),
    ("affinity ignores locality", (CPU1, ("node", "b", True), {"a": 8 * MiB}),
     (CPU1, ("node", "b", True), {}), True),
]


@pytest.mark.parametrize("one, two, same", [c[1:] for c in KEYS], ids=[c[0] for c in KEYS])
def test_scheduling_key(one, two, same):
    k1, k2 = scheduling_key(*one), scheduling_key(*two)
    assert (k1 == k2) is same
    assert len({k1, k2}) == (1 if same else 2)  # keys are hashable dictionary keys


LT_HERE, LT_B, LT_C = "here", "nodeB", "nodeC"


@pytest.mark.parametrize("key, alive, expected", [
    # affinity names the node: ask its daemon directly (no spillback round trip)
    (((("CPU", 1.0), ("node:nodeB", 0.001)), None, None), {LT_B}, LT_B),
    (((("CPU", 1.0),), ("node", LT_B, False), None), {LT_B}, LT_B),
    (((("CPU", 1.0),), ("node", LT_B, True), None), {LT_B}, LT_B),
    # the named node is not alive: our own daemon decides (waits, or soft falls back)
    (((("CPU", 1.0), ("node:nodeB", 0.001)), None, None), {LT_C}, LT_HERE),
    (((("CPU", 1.0),), ("node", LT_B, True), None), set(), LT_HERE),
    # locality: the node holding the arguments
    (((("CPU", 1.0),), None, LT_C), {LT_B, LT_C}, LT_C),
    (((("CPU", 1.0),), None, LT_C), {LT_B}, LT_HERE),
    # SPREAD and plain tasks: our daemon places them
    (((("CPU", 1.0),), "SPREAD", None), {LT_B, LT_C}, LT_HERE),
    (((("CPU", 1.0),), None, None), {LT_B, LT_C}, LT_HERE),
])
def test_lease_target(key, alive, expected):
    assert lease_target(key, LT_HERE, alive) == expected
