"""ActorPool: spread work over a fixed set of actors, as ``ray.util.ActorPool``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..api.session import get, wait


class ActorPool:
    """Run ``fn(actor, value)`` over values on a pool of actors.

    ``fn`` must submit one call and return its ref, e.g.
    ``pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])``.
    """

    def __init__(self, actors: list) -> None:
        self._idle = list(actors)
        self._future_to_actor: dict = {}
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: list[tuple[Callable, Any]] = []

    def submit(self, fn: Callable, value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor (or when one frees up)."""
        if self._idle:
            actor = self._idle.pop()
            future = fn(actor, value)
            self._future_to_actor[future] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._pending

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.pop(0))

    def get_next(self, timeout: float | None = None) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        future = self._index_to_future[self._next_return_index]
        if timeout is not None:
            ready, _ = wait([future], timeout=timeout)
            if not ready:
                raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(future)
        self._return_actor(actor)
        return get(future)

    def get_next_unordered(self, timeout: float | None = None) -> Any:
        """The next result to finish, whatever its submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        future = ready[0]
        index, actor = self._future_to_actor.pop(future)
        del self._index_to_future[index]
        self._return_actor(actor)
        return get(future)

    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """Results in the order of ``values``."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """Results as they finish."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def push(self, actor: Any) -> None:
        """Add an actor to the pool."""
        self._return_actor(actor)

    def pop_idle(self) -> Any | None:
        """Remove and return an idle actor, or None."""
        return self._idle.pop() if self.has_free() else None
