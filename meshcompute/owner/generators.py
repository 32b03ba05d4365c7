"""What generator tasks return: ``ObjectRefGenerator`` (``num_returns="streaming"``) and
``DynamicObjectRefGenerator`` (the value of a ``num_returns="dynamic"`` call).

The items arrive as the task yields them (owner/streams.py); these are the
consumer's side, usable from any user thread, and from asyncio code.
"""

from __future__ import annotations

from typing import Any

from .. import exceptions as exc
from . import context
from .object_ref import ObjectRef
from .objects import Waiter
from .streams import END, FAILED


class ObjectRefGenerator:
    """The refs of a generator task's values, in order, each as soon as it is yielded.

    ``for ref in gen``, ``next(gen)``, ``async for ref in gen``. ``get(ref)`` of an
    item raises if the task raised there (and the stream ends after it).
    ``completed()`` is a ref that is ready once the task has finished.
    """

    def __init__(self, task_id: bytes, completion: ObjectRef) -> None:
        self._task_id = task_id
        self._completion = completion
        self._taken = 0

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        """The next item's ref; StopIteration at the end, GetTimeoutError after ``timeout_s``."""
        core = context.core
        if core is None:
            raise exc.MeshError("meshcompute is not initialized")
        while True:
            w = Waiter(1)
            answer = core.io.call(core.streams.next, self._task_id, self._taken, w)
            if answer == FAILED:
                core.get([self._completion])  # raises the task's error
                raise StopIteration
            if answer == END:
                raise StopIteration
            if answer is not None:
                self._taken += 1
                return ObjectRef(answer, core.address, _count=False)  # takes over the stream's hold
            core._block()
            try:
                if not w.event.wait(timeout_s):
                    raise exc.GetTimeoutError(f"no item of the generator within {timeout_s} s")
            finally:
                core._unblock()

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_or_none)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self) -> ObjectRef | None:
        # StopIteration cannot travel through a Future: the end is None here.
        try:
            return self._next_sync(None)
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        """A ref ready when the task has finished (its value None, or the task's error)."""
        return self._completion

    def is_finished(self) -> bool:
        core = context.core
        e = core.objects.entries.get(self._completion._id) if core is not None else None
        return e is None or e.state == 1

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"

    def __del__(self) -> None:
        core = context.core
        if core is not None and not core._closed:
            try:
                core.post(core.streams.drop, self._task_id)
            except Exception:  # interpreter shutdown
                pass


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` call: the refs of what the task yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DynamicObjectRefGenerator, (self._refs,))
