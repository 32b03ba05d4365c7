"""ObjectRef: a future for a value that lives somewhere in the mesh."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from ..wire.serialization import current_deserialize_context, note_contained
from . import context


class ObjectRef:
    """A reference to a value computed by a task or stored with ``put``.

    Pass it to ``get``/``wait``, or to other tasks: a ref passed as a top-level
    argument is replaced by its value before the task runs; a ref nested inside a
    list, dict or object stays a ref.  The value is freed when no ref to it remains
    anywhere in the mesh.  ``await ref`` works inside asyncio code.
    """

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id: bytes, owner: str, _count: bool = True) -> None:
        self._id = object_id
        self._owner = owner
        if _count:
            core = context.core
            if core is not None:
                core.ref_created(self)

    def __del__(self) -> None:
        core = context.core
        if core is not None:
            try:
                core.ref_deleted(self._id)
            except Exception:  # interpreter shutdown
                pass

    def hex(self) -> str:
        return self._id.hex()

    def binary(self) -> bytes:
        return self._id

    @property
    def owner_address(self) -> str:
        return self._owner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        note_contained(self)
        return (rebuild_ref, (self._id, self._owner))

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` that completes with the value."""
        return context.core.future_for(self)

    def __await__(self):
        return asyncio.wrap_future(self.future()).__await__()


def rebuild_ref(object_id: bytes, owner: str) -> ObjectRef:
    """A ref that arrived from elsewhere: counted, and noted in the current DeserializeContext
    (if any) as a borrow to register, instead of registering it in the background."""
    ref = ObjectRef(object_id, owner, _count=False)
    core = context.core
    if core is not None:
        core.ref_created(ref, current_deserialize_context())
    return ref


def make_ref(object_id: bytes, owner: str) -> Any:
    return ObjectRef(object_id, owner)
