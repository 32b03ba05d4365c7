"""ObjectRef: a future for a value that lives somewhere in the mesh."""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any

from ..wire import ids
from ..wire.serialization import current_deserialize_context, note_contained
from . import context

if TYPE_CHECKING:  # asyncio (and ssl with it) costs 7 MiB a process: imported where used
    import asyncio


class ObjectRef:
    """A reference to a value computed by a task or stored with ``put``.

    Pass it to ``get``/``wait``, or to other tasks: a ref passed as a top-level
    argument is replaced by its value before the task runs; a ref nested inside a
    list, dict or object stays a ref.  The value is freed when no ref to it remains
    anywhere in the mesh.  ``await ref`` works inside asyncio code, so does
    ``asyncio.gather(*refs)``; ``asyncio.wait`` takes futures (since Python 3.11, for
    Ray's refs too): ``asyncio.wait([ref.as_future() for ref in refs])``.

    ``ObjectRef(ref.binary())``, ``ObjectRef.from_binary`` and ``ObjectRef.from_hex``
    rebuild a ref from its id in a process that knows the object (it holds or held
    a ref to it, as in Ray): the id alone does not say which process owns the value.
    """

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id: bytes, owner: str | None = None, _count: bool = True) -> None:
        self._id = object_id
        self._owner = owner if owner is not None else _known_owner(object_id)
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

    @classmethod
    def from_binary(cls, object_id: bytes) -> ObjectRef:
        """The ref of the object with this id (``ref.binary()``); see the class docstring."""
        return cls(object_id)

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        """The ref of the object with this hex id (``ref.hex()``); see the class docstring."""
        return cls(bytes.fromhex(hex_id))

    def task_id(self) -> str:
        """The hex id of the task that makes this object (or of the ``put``)."""
        return ids.task_of(self._id).hex()

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

    def as_future(self) -> asyncio.Future:
        """An asyncio future of the value, in the running event loop."""
        import asyncio

        return asyncio.wrap_future(self.future())

    def __await__(self):
        return self.as_future().__await__()


def _known_owner(object_id: bytes) -> str:
    """The owner of an object this process knows, for a ref rebuilt from its id."""
    if not isinstance(object_id, bytes):
        raise TypeError(f"ObjectRef takes an object's id as bytes (ref.binary()), got {type(object_id).__name__}")
    core = context.core
    if core is None:
        raise ValueError("ObjectRef(object id): not initialized, so no object is known here")
    entry = core.objects.entries.get(object_id)
    if entry is None:
        core._barrier()  # a ref made a moment ago is recorded by the I/O thread: let it catch up
        entry = core.objects.entries.get(object_id)
    if entry is None:
        raise ValueError(f"ObjectRef({object_id.hex()}): this process knows no object with this id, so it "
                         f"cannot tell which process owns it. Rebuild a ref from its id only where a ref to "
                         f"it is (or was) held, or pass the ref itself.")
    return entry.owner


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
