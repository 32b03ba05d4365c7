"""Handing back a worker's hold on the refs inside a task's results.

A worker that returns refs inside a result keeps them alive until the owner
of the task has registered itself as a borrower of each with that ref's
owner; only then may the worker let go (RELEASE_HANDOFF), or the objects
could be freed in between.
"""

from __future__ import annotations

from typing import Any

from ..wire.messages import Msg
from .io import OwnerIo
from .objects import ObjectTable


def release_handoff(io: OwnerIo, objects: ObjectTable, worker: str, task_id: bytes, borrows: list) -> None:
    """Let ``worker`` drop its hold on the refs inside a task's results, once their owners
    know we borrow them: the worker's own objects at once (our ADD_BORROWER travels the
    same pipe, ahead of RELEASE_HANDOFF), a third process's once it acknowledged."""
    third = [ref for ref in borrows if ref._owner != worker]
    for ref in borrows:
        if ref._owner == worker:
            objects.add_borrow(ref._id, ref._owner)
    if not third:
        io.send(worker, Msg.RELEASE_HANDOFF, task_id)
        return
    left = [len(third)]

    def acknowledged(_value: Any) -> None:
        left[0] -= 1
        if left[0] == 0:
            io.send(worker, Msg.RELEASE_HANDOFF, task_id)

    for ref in third:
        req_id = io.next_req_id()
        io.on_reply(req_id, acknowledged)
        objects.add_borrow(ref._id, ref._owner, req_id)
