"""What a node knows about whether a worker owns objects (no process here).

A worker that owns objects (its tasks' puts and child tasks) is neither stopped when
idle nor made an actor's process: either would lose the objects.  It says whether
it owns any in TASK_STATS, within half a second of its last task; until then a
worker that ran tasks counts as owning some.
"""

from __future__ import annotations

from meshcompute.node.processes import OWNERSHIP_KNOWN_S, Processes
from meshcompute.wire.messages import Msg

W = "n1/p_worker@"


def test_a_worker_counts_as_owning_objects_until_its_word_on_it_is_in():
    p = Processes()
    p.register(W, 1234, driver=False)
    assert p.may_own_objects(W, 0.1) and not p.owns_objects(W)  # it just ran a task: no word yet
    assert not p.may_own_objects(W, OWNERSHIP_KNOWN_S + 0.1)  # its word would be here by now
    p.on_task_stats(W, (Msg.TASK_STATS, {"running": 0, "queued": 0, "finished": 1, "owns_objects": True}), [])
    assert p.owns_objects(W) and p.may_own_objects(W, 60.0)
    p.on_task_stats(W, (Msg.TASK_STATS, {"running": 0, "queued": 0, "finished": 1, "owns_objects": False}), [])
    assert not p.owns_objects(W) and not p.may_own_objects(W, OWNERSHIP_KNOWN_S + 0.1)
