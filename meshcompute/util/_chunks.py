"""Chunks of pool work and the ways their results come back (shared by ``Pool``,
``MeshExecutor`` and the joblib backend; the engine that runs them is ``_workers.py``)."""

from __future__ import annotations

import collections
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

QUEUED, SENT, DONE = 0, 1, 2

ONE, STAR, CALL = "one", "star", "call"
"""How an item is passed: ``func(item)``, ``func(*item)``, or ``func(*args, **kwargs)`` for
``item == (args, kwargs)``."""


class Chunk:
    """Some items of one job; ``sink.chunk_done(chunk, values, error)`` receives the outcome."""

    __slots__ = ("sink", "index", "func", "mode", "items", "state")

    def __init__(self, sink: Any, index: int, func: Callable, mode: str, items: list) -> None:
        self.sink = sink
        self.index = index
        self.func = func
        self.mode = mode
        self.items = items
        self.state = QUEUED


class WaitTimeout(Exception):
    """``Stream.next`` waited its whole timeout (each caller turns it into its own
    ``TimeoutError``, never confused with a ``TimeoutError`` an item raised)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a pool process (set as its ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class Failure:
    """An item that raised: the exception and its traceback text, as they travel back."""

    __slots__ = ("error", "tb")

    def __init__(self, error: BaseException, tb: str) -> None:
        self.error = error
        self.tb = tb

    @classmethod
    def capture(cls, error: BaseException) -> Failure:
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            import cloudpickle

            cloudpickle.dumps(error)
        except Exception:  # an exception that cannot travel must not cost the whole call
            error = RuntimeError(f"{type(error).__name__}: {error} (the exception could not be pickled)")
        error.__traceback__ = None
        return cls(error, tb)

    def exception(self) -> BaseException:
        """The exception to raise here, with the remote traceback (if any) as its cause."""
        if self.tb:
            self.error.__cause__ = RemoteTraceback(self.tb)
        return self.error


def outcomes(chunk: Chunk, values: list | None, error: BaseException | None) -> list:
    """One value or ``Failure`` per item of a finished chunk (a chunk that failed as a
    whole -- its actor died, its function could not be pickled -- fails every item)."""
    if error is not None:
        return [Failure(error, "")] * len(chunk.items)
    return values if values is not None else []


class Stream:
    """The items of one job as they finish: in input order or as completed.

    The sink of its chunks; ``next(timeout)`` hands out one item (raising the item's
    exception if it failed). Used by ``Pool.imap``/``imap_unordered`` and ``MeshExecutor.map``.
    """

    def __init__(self, engine: Any, ordered: bool) -> None:
        self._engine = engine
        self._ordered = ordered
        self._cond = threading.Condition()
        self._chunks: list[Chunk] = []
        self._finished: dict[int, list] = {}  # ordered: chunk index -> outcomes not yet handed out
        self._buffer: collections.deque = collections.deque()
        self._next_chunk = 0
        self._handed_chunks = 0
        self._input_done = False
        self._input_error: BaseException | None = None
        self.outstanding_items = 0  # submitted, not finished

    def add(self, chunks: list[Chunk], from_feeder: bool = False) -> None:
        self._engine.submit(chunks, from_feeder)
        with self._cond:
            self._chunks.extend(chunks)
            self.outstanding_items += sum(len(c.items) for c in chunks)

    def input_done(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._input_done = True
            self._input_error = error
            self._cond.notify_all()

    def chunk_sent(self, chunk: Chunk) -> None:
        pass

    def chunk_done(self, chunk: Chunk, values: list | None, error: BaseException | None) -> None:
        got = outcomes(chunk, values, error)
        with self._cond:
            self.outstanding_items -= len(chunk.items)
            if not self._ordered:
                self._buffer.extend(got)
                self._handed_chunks += 1
            else:
                self._finished[chunk.index] = got
                while self._next_chunk in self._finished:
                    self._buffer.extend(self._finished.pop(self._next_chunk))
                    self._next_chunk += 1
                    self._handed_chunks += 1
            self._cond.notify_all()

    def wait_for_room(self, limit: Callable[[], int]) -> None:
        """Block the input reader while more than ``limit()`` items are in flight."""
        if self.outstanding_items < limit():  # the common case, without the lock
            return
        with self._cond:
            while self.outstanding_items >= limit():
                self._cond.wait(0.5)

    def next(self, timeout: float | None = None) -> Any:
        """The next item; ``WaitTimeout`` after ``timeout`` s, ``StopIteration`` at the end."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._buffer or (self._input_done and self._handed_chunks == len(self._chunks)),
                timeout)
            if not ok:
                raise WaitTimeout
            if self._buffer:
                item = self._buffer.popleft()
            elif self._input_error is not None:
                error, self._input_error = self._input_error, None
                raise error
            else:
                raise StopIteration
        if isinstance(item, Failure):
            raise item.exception()
        return item

    def cancel(self) -> None:
        """Take back the chunks not sent yet (the iterator was dropped)."""
        with self._cond:
            chunks = list(self._chunks)
        for c in chunks:
            if self._engine.cancel(c):
                self.chunk_done(c, None, CancelledError())


def split(items: list, chunksize: int) -> list[list]:
    return [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
