"""Ray's actor lifecycle extras: async constructors, exit_actor(), cancelling async calls."""

from __future__ import annotations

import pytest

import meshcompute as mesh

pytestmark = pytest.mark.timeout(60)


def test_a_ref_nested_in_a_constructor_argument_lives_until_the_actor_reads_it(fresh_node):
    # First in this module: a node of its own, whose first worker is still being forked
    # while the driver drops its only ref to the value.
    @mesh.remote
    class Slow:
        def __init__(self, refs):
            self.v = mesh.get(refs[0])

        def value(self):
            return self.v

    a = Slow.remote([mesh.put(41)])  # not inside the assert: pytest would keep the list alive
    assert mesh.get(a.value.remote(), timeout=30) == 41
