"""Bundle resource names, back to what a request asked for (get_assigned_resources)."""

from __future__ import annotations

import pytest

from meshcompute.sched.bundles import as_requested, in_bundle


@pytest.mark.parametrize("shape, expected", [
    ((), {}),
    ((("CPU", 1.0),), {"CPU": 1.0}),
    ((("CPU", 0.5), ("GPU", 1.0), ("memory", 100.0)), {"CPU": 0.5, "GPU": 1.0, "memory": 100.0}),
    ((("CPU", 1.0), ("node:abc", 0.001)), {"CPU": 1.0}),
    (tuple(sorted(in_bundle({"CPU": 2.0, "custom": 1.0}, "pg1", 0).items())), {"CPU": 2.0, "custom": 1.0}),
    (tuple(sorted(in_bundle({"CPU": 1.0}, "pg1", -1).items())), {"CPU": 1.0}),
    (tuple(sorted(in_bundle({}, "pg1", 1).items())), {}),
])
def test_as_requested(shape, expected):
    assert as_requested(shape) == expected
