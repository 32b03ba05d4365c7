"""``Queue``: a first-in first-out queue shared by processes of a mesh, as ``ray.util.queue``.

The items live in one async actor holding an ``asyncio.Queue``: a blocked ``get`` (or a
``put`` on a full queue) is a coroutine waiting on that queue, woken by the call that
changes it, so nothing polls. A ``Queue`` can be passed to tasks and actors; the
actor lives while any process holds the queue (or until ``shutdown()``).
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from .. import exceptions as exc
from ..api.remote import make_remote
from ..api.session import get, kill, wait


class Empty(_stdlib_queue.Empty):
    """Raised by ``get``/``get_nowait``/``get_nowait_batch`` when no item is there (in time)."""


class Full(_stdlib_queue.Full):
    """Raised by ``put``/``put_nowait``/``put_nowait_batch`` when there is no room (in time)."""


CONCURRENCY = 100_000
"""Calls the queue's actor serves at once: each blocked get or put holds one, so this many
waiting consumers still leave room for the put that wakes them."""


class _QueueActor:
    """The items. Answers are (ok, value) pairs: the caller raises ``Empty``/``Full`` itself."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    def put_nowait(self, item: Any) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def put_nowait_batch(self, items: list) -> bool:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False
        for item in items:
            self.queue.put_nowait(item)
        return True

    def get_nowait(self) -> tuple[bool, Any]:
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    def get_nowait_batch(self, num_items: int) -> tuple[bool, Any]:
        if num_items > self.queue.qsize():
            return False, self.queue.qsize()
        return True, [self.queue.get_nowait() for _ in range(num_items)]


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A FIFO queue on the mesh, usable from any task, actor or driver that holds it.

    Args:
        maxsize: the most items it holds; 0 (the default) means no limit.
        actor_options: options for the actor holding the items, as for
            ``.options()`` (e.g. ``{"num_cpus": 1}`` or a ``scheduling_strategy``).

    Several producers putting to a full queue, or consumers getting from an empty
    one, are served in the order their calls reach it.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative int, got {maxsize!r}")
        options = {"max_concurrency": CONCURRENCY, **(actor_options or {})}
        self.maxsize = maxsize
        self.actor = make_remote(_QueueActor, options).remote(maxsize)
        self._shut = False

    def __reduce__(self):
        return (_rebuild, (self.maxsize, self.actor))

    def _get(self, ref: Any) -> Any:
        try:
            return get(ref)
        except exc.ActorDiedError as e:
            raise RuntimeError(f"the queue was shut down (its actor is gone: {e})") from None

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except exc.ActorDiedError as e:
            raise RuntimeError(f"the queue was shut down (its actor is gone: {e})") from None

    def _actor(self) -> Any:
        if self._shut:
            raise RuntimeError("the queue was shut down")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds."""
        return self._get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """How many items the queue holds."""
        return self.size()

    def empty(self) -> bool:
        """True if the queue holds no item."""
        return self._get(self._actor().empty.remote())

    def full(self) -> bool:
        """True if the queue holds ``maxsize`` items."""
        return self._get(self._actor().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; when the queue is full, wait for room (up to ``timeout`` s).

        Raises ``Full`` if there is no room (``block=False``) or none came in time,
        ValueError if ``timeout`` is negative.
        """
        if not block:
            return self.put_nowait(item)
        _check_timeout(timeout)
        if not self._get(self._actor().put.remote(item, timeout)):
            raise Full
        return None

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the thread."""
        if not block:
            ok = await self._await(self._actor().put_nowait.remote(item))
        else:
            _check_timeout(timeout)
            ok = await self._await(self._actor().put.remote(item, timeout))
        if not ok:
            raise Full

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; when the queue is empty, wait for one
        (up to ``timeout`` s).

        Raises ``Empty`` if there is none (``block=False``) or none came in time,
        ValueError if ``timeout`` is negative.
        """
        if not block:
            return self.get_nowait()
        _check_timeout(timeout)
        ok, item = self._get(self._actor().get.remote(timeout))
        if not ok:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code: awaits instead of blocking the thread."""
        if not block:
            ok, item = await self._await(self._actor().get_nowait.remote())
        else:
            _check_timeout(timeout)
            ok, item = await self._await(self._actor().get.remote(timeout))
        if not ok:
            raise Empty
        return item

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: raises ``Full`` if there is no room."""
        if not self._get(self._actor().put_nowait.remote(item)):
            raise Full

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all ``items`` in order, or none: raises ``Full`` if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        items = list(items)
        if not self._get(self._actor().put_nowait_batch.remote(items)):
            raise Full(f"Cannot add {len(items)} items to a queue of maxsize {self.maxsize}: not enough room")

    def get_nowait(self) -> Any:
        """``get(block=False)``: raises ``Empty`` if the queue is empty."""
        ok, item = self._get(self._actor().get_nowait.remote())
        if not ok:
            raise Empty
        return item

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return the ``num_items`` oldest items, or none: raises ``Empty``
        if the queue holds fewer."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        ok, items = self._get(self._actor().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"Cannot get {num_items} items from a queue of size {items}")
        return items

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the queue's actor; its items are lost, and every process's calls on it
        then raise RuntimeError (blocked ones included).

        Unless ``force``, first wait up to ``grace_period_s`` seconds for the calls this
        process already made to be served.
        """
        if self._shut:
            return
        self._shut = True
        if not force:
            wait([self.actor.qsize.remote()], timeout=grace_period_s)
        kill(self.actor)


def _rebuild(maxsize: int, actor: Any) -> Queue:
    q = Queue.__new__(Queue)
    q.maxsize = maxsize
    q.actor = actor
    q._shut = False
    return q


__all__ = ["Empty", "Full", "Queue"]
