"""``Pool``: ``multiprocessing.Pool`` on a mesh, as ``ray.util.multiprocessing.Pool``.

The pool's processes are actors (so ``initializer`` runs once in each, as in
``multiprocessing``); work goes to them in chunks, several chunks to a call once
items are known to be quick (meshcompute/util/_workers.py).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from multiprocessing import TimeoutError
from typing import Any

from ...api.session import init, is_initialized
from .._chunks import CALL, ONE, STAR, Chunk, Failure, Stream, WaitTimeout, split
from .._workers import DEPTH, Engine, check_processes

FEED_BATCH = 1024
"""Chunks read at once from an input that is already in memory."""


class AsyncResult:
    """The result of ``apply_async``, ``map_async`` or ``starmap_async``.

    ``callback`` runs with the result (the list, for a map) once everything
    succeeded; ``error_callback`` runs with the first exception, as soon as it is
    known. Both run on the pool's callback thread, before ``get`` returns.
    """

    def __init__(self, pool: Pool, n_chunks: int, offsets: list[int], n_items: int, single: bool,
                 callback: Callable | None, error_callback: Callable | None) -> None:
        self._pool: Pool | None = pool  # kept alive until the result is in, as multiprocessing does
        self._engine = pool._engine
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._offsets = offsets
        self._values: list = [None] * n_items
        self._left = n_chunks
        self._single = single
        self._error: BaseException | None = None
        self._callback = callback
        self._error_callback = error_callback
        if n_chunks == 0:
            self._engine.call_soon(self._complete)

    # the engine's side (its dispatcher thread)
    def chunk_sent(self, chunk: Chunk) -> None:
        pass

    def chunk_done(self, chunk: Chunk, values: list | None, error: BaseException | None) -> None:
        if error is None:
            failed = next((v for v in values or () if isinstance(v, Failure)), None)
            error = failed.exception() if failed is not None else None
        with self._lock:
            first_error = error is not None and self._error is None
            if first_error:
                self._error = error
            elif error is None and self._error is None:
                start = self._offsets[chunk.index]
                self._values[start:start + len(values)] = values
            self._left -= 1
            finished = self._left == 0
        if first_error and self._error_callback is not None:
            self._engine.call_soon(self._error_callback, error)
        if finished:
            self._engine.call_soon(self._complete)

    def _complete(self) -> None:
        try:
            if self._error is None and self._callback is not None:
                self._callback(self._value())
        finally:
            self._event.set()
            self._pool = None

    def _value(self) -> Any:
        return self._values[0] if self._single else self._values

    # the caller's side
    def ready(self) -> bool:
        """True once every item finished (successfully or not)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """True if no item raised; ValueError if the result is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass (no error on timeout)."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; raises the first exception an item raised, or
        ``multiprocessing.TimeoutError`` if not ready within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value()


ApplyResult = AsyncResult
MapResult = AsyncResult


class IMapIterator:
    """Results of ``imap`` (input order) or ``imap_unordered`` (finishing order).

    The input is read by a thread of its own, only as far ahead as the pool can use:
    an endless generator works. ``next(timeout)`` raises ``multiprocessing.TimeoutError``.
    """

    def __init__(self, pool: Pool, func: Callable, iterable: Iterable, chunksize: int, ordered: bool,
                 mode: str = ONE) -> None:
        self._pool = pool
        engine = pool._engine
        self._stream = Stream(engine, ordered)
        engine.add_feeder()

        def limit() -> int:
            # enough queued that every call can be as full as the measured item cost allows
            return max(chunksize, engine.items_per_call(func)) * engine.processes * DEPTH * 2

        # An input already in memory (a list, a range) is read many chunks at a time; any other
        # is read a chunk at a time, so an item is sent as soon as it is read, however slow
        # the next one is to come.
        batch = FEED_BATCH if isinstance(iterable, Sized) else 1

        def feed() -> None:
            error = None
            index = 0
            try:
                it = iter(iterable)
                while True:
                    self._stream.wait_for_room(limit)
                    room = max(1, (limit() - self._stream.outstanding_items) // chunksize)
                    chunks = []
                    for _ in range(min(batch, room)):
                        items = list(itertools.islice(it, chunksize))
                        if not items:
                            break
                        chunks.append(Chunk(self._stream, index, func, mode, items))
                        index += 1
                    if chunks:
                        self._stream.add(chunks, from_feeder=True)
                    if len(chunks) < min(batch, room):
                        break
            except BaseException as e:  # the input itself raised, or the pool was terminated
                error = e
            finally:
                self._stream.input_done(error)
                engine.remove_feeder()

        threading.Thread(target=feed, name="meshcompute-pool-input", daemon=True).start()

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        try:
            return self._stream.next(timeout)
        except WaitTimeout:
            raise TimeoutError from None

    def __next__(self) -> Any:
        return self.next()


def _check_chunksize(chunksize: Any) -> None:
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


class Pool:
    """A pool of processes on the mesh, a drop-in for ``multiprocessing.Pool``.

    Args:
        processes: how many processes (actors); default: the mesh's CPUs.
        initializer: run as ``initializer(*initargs)`` once in each process.
        initargs: its arguments.
        maxtasksperchild: a process is replaced by a fresh one after this many
            tasks (an ``apply`` or a chunk of a map, as in ``multiprocessing``).
        context: a ``multiprocessing`` start-method context; not supported
            (mesh processes are forked by their node), so anything but None raises.
        ray_address: the mesh to connect to when this process is not connected yet
            (as ``init(address=...)``); ValueError when it already is.
        ray_remote_args: actor options for the processes, e.g. ``{"num_cpus": 1}``
            to reserve a CPU each, or ``{"resources": {...}}``.

    The processes hold no CPU unless ``ray_remote_args`` asks for it, as in Ray, and are
    spread over the mesh's nodes in proportion to their CPUs (unless ``ray_remote_args``
    places them: ``num_cpus``, ``resources``, ``scheduling_strategy``...).
    ``with Pool() as p:`` terminates the pool on exit, as ``multiprocessing`` does.
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None, context: Any = None,
                 ray_address: str | None = None, ray_remote_args: dict[str, Any] | None = None) -> None:
        if context is not None:
            raise ValueError("Pool(context=...) is not supported: the pool's processes are mesh actors, "
                             "forked by their node; leave context out")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if is_initialized():
            if ray_address is not None:
                raise ValueError(f"Pool(ray_address={ray_address!r}): this process is already connected "
                                 "to a mesh; leave ray_address out, or shutdown() first")
        else:
            init(ray_address)
        remote_args = dict(ray_remote_args or {})
        processes = check_processes(processes, remote_args, "processes")
        self._engine = Engine(processes, initializer, tuple(initargs or ()), maxtasksperchild, remote_args)
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    def __repr__(self) -> str:
        return f"<meshcompute Pool state={self._engine.state} processes={self._engine.processes}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def _check_running(self) -> None:
        if self._engine.state != "running":
            raise ValueError("Pool not running")

    # ---------------------------------------------------------------- apply

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` in a pool process; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``func(*args, **kwds)`` in a pool process; returns an ``AsyncResult``."""
        self._check_running()
        result = AsyncResult(self, 1, [0], 1, True, callback, error_callback)
        self._engine.submit([Chunk(result, 0, func, CALL, [(tuple(args or ()), dict(kwds or {}))])])
        return result

    # ------------------------------------------------------------------ map

    def _map_async(self, func: Callable, iterable: Iterable, chunksize: int | None, mode: str,
                   callback: Callable | None, error_callback: Callable | None) -> AsyncResult:
        self._check_running()
        _check_chunksize(chunksize)
        items = iterable if isinstance(iterable, list) else list(iterable)
        if chunksize is None:
            # multiprocessing's default: about four chunks per process
            chunksize, extra = divmod(len(items), self._engine.processes * 4)
            chunksize += 1 if extra else 0
        parts = split(items, max(1, chunksize))
        offsets = list(itertools.accumulate([0] + [len(p) for p in parts[:-1]])) if parts else []
        result = AsyncResult(self, len(parts), offsets, len(items), False, callback, error_callback)
        if parts:
            self._engine.submit([Chunk(result, i, func, mode, p) for i, p in enumerate(parts)])
        return result

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed in the pool; raises the first exception.

        ``chunksize``: items per chunk (default: about four chunks per process).
        Chunks of quick items are sent several to a call.
        """
        return self._map_async(func, iterable, chunksize, ONE, None, None).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable[[list], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``map`` returning an ``AsyncResult``."""
        return self._map_async(func, iterable, chunksize, ONE, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed in the pool."""
        return self._map_async(func, iterable, chunksize, STAR, None, None).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
                      callback: Callable[[list], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        """``starmap`` returning an ``AsyncResult``."""
        return self._map_async(func, iterable, chunksize, STAR, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = 1) -> Iterator:
        """Results of ``func`` over ``iterable`` in order, as they come; the input is read lazily.

        ``chunksize``: items per chunk (None means 1); quick chunks still travel
        several to a call.
        """
        self._check_running()
        _check_chunksize(chunksize)
        return IMapIterator(self, func, iterable, chunksize or 1, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int | None = 1) -> Iterator:
        """Results of ``func`` over ``iterable`` in the order they finish."""
        self._check_running()
        _check_chunksize(chunksize)
        return IMapIterator(self, func, iterable, chunksize or 1, ordered=False)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Accept no more work; the processes exit once the work submitted is done."""
        self._engine.close()

    def terminate(self) -> None:
        """Stop now: the processes are killed and unfinished results raise ``RuntimeError``."""
        self._engine.terminate()

    def join(self) -> None:
        """Wait for the processes to exit; call ``close()`` or ``terminate()`` first."""
        self._engine.join()
