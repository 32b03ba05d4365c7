"""``MeshExecutor``: a ``concurrent.futures.Executor`` whose workers are mesh processes.

A drop-in for ``ProcessPoolExecutor``: ``submit`` returns a standard
``concurrent.futures.Future`` (so ``as_completed``, ``wait`` and done-callbacks
work), ``map`` takes ``timeout`` and ``chunksize``. The workers are actors run by
the same engine as ``util.multiprocessing.Pool`` (meshcompute/util/_workers.py):
work waits in this process until a worker is free, so a future not started yet
can still be cancelled, and quick calls are sent several to a message.

For a single task, ``ObjectRef.future()`` (and ``await ref``) remains the way to
turn a ref into a future.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..api.session import init, is_initialized
from ._chunks import CALL, STAR, Chunk, Failure, Stream, WaitTimeout, split
from ._workers import Engine, check_processes


class MeshFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` takes back work not sent to a worker yet."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine
        self._chunk: Chunk | None = None

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self._chunk is not None and self._engine.cancel(self._chunk):
            return self._cancel_now()
        return False

    def _cancel_now(self) -> bool:
        # the executor's part of a cancel, as concurrent.futures' executors do it: without
        # set_running_or_notify_cancel() as_completed() and wait() never count it as done
        cancelled = super().cancel()
        if cancelled:
            self.set_running_or_notify_cancel()
        return cancelled

    # the engine's side
    def chunk_sent(self, chunk: Chunk) -> None:
        self.set_running_or_notify_cancel()

    def chunk_done(self, chunk: Chunk, values: list | None, error: BaseException | None) -> None:
        if isinstance(error, concurrent.futures.CancelledError):  # shutdown(cancel_futures=True), at once
            self._cancel_now()
            return
        # on the engine's callback thread: done-callbacks must not hold up the dispatcher
        self._engine.call_soon(self._settle, values, error)

    def _settle(self, values: list | None, error: BaseException | None) -> None:
        if self.done():
            return
        if error is not None:
            self.set_exception(error)
        elif isinstance(values[0], Failure):
            self.set_exception(values[0].exception())
        else:
            self.set_result(values[0])


class MeshExecutor(concurrent.futures.Executor):
    """Run calls on a fixed set of mesh processes, as ``ProcessPoolExecutor`` does locally.

    Args:
        max_workers: how many worker processes (actors); default: the mesh's CPUs.
        mp_context: a ``multiprocessing`` context; not supported (workers are forked by
            their node), so anything but None raises.
        initializer: run as ``initializer(*initargs)`` once in each worker when it starts;
            if it raises, the constructor raises.
        initargs: its arguments.
        max_tasks_per_child: a worker is replaced by a fresh one after this many calls
            (or chunks of a ``map``).
        address: the mesh to connect to when this process is not connected yet (as
            ``init(address=...)``); ValueError when it already is.
        remote_args: actor options for the workers, e.g. ``{"num_cpus": 1}``.

    A worker process that dies fails the calls it held (``ActorDiedError``) and is
    replaced; the executor stays usable.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable | None = None, initargs: Iterable = (), *,
                 max_tasks_per_child: int | None = None, address: str | None = None,
                 remote_args: dict[str, Any] | None = None) -> None:
        if mp_context is not None:
            raise ValueError("MeshExecutor(mp_context=...) is not supported: workers are mesh actors, "
                             "forked by their node; leave mp_context out")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None and (not isinstance(max_tasks_per_child, int)
                                                or max_tasks_per_child < 1):
            raise ValueError("max_tasks_per_child must be >= 1 or None")
        if is_initialized():
            if address is not None:
                raise ValueError(f"MeshExecutor(address={address!r}): this process is already connected "
                                 "to a mesh; leave address out, or shutdown() first")
        else:
            init(address)
        remote_args = dict(remote_args or {})
        workers = check_processes(max_workers, remote_args, "max_workers")
        self._engine = Engine(workers, initializer, tuple(initargs or ()), max_tasks_per_child, remote_args)
        self._shutdown = False
        self._lock = threading.Lock()
        # dropped without shutdown(): the workers stop once the work submitted is done
        weakref.finalize(self, self._engine.close)

    @property
    def max_workers(self) -> int:
        return self._engine.processes

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)`` on a worker; returns its future."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = MeshFuture(self._engine)
            future._chunk = Chunk(future, 0, fn, CALL, [(args, kwargs)])
            self._engine.submit([future._chunk])
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """``fn`` over the zipped iterables, results in order.

        The iterables are read at once, as ``Executor.map`` does. ``timeout`` counts
        from this call: ``TimeoutError`` if a result is not in by then. ``chunksize``
        calls go to a worker as one unit; quick chunks are also packed several to a
        message. Closing the iterator early cancels the chunks not started.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        args = list(zip(*iterables))
        stream = Stream(self._engine, ordered=True)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            parts = split(args, chunksize)
            if parts:
                stream.add([Chunk(stream, i, fn, STAR, p) for i, p in enumerate(parts)])
        stream.input_done()

        def results() -> Iterator:
            try:
                for _ in range(len(args)):
                    left = None if end is None else max(0.0, end - time.monotonic())
                    try:
                        yield stream.next(left)
                    except WaitTimeout:
                        raise concurrent.futures.TimeoutError from None
            finally:
                stream.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; the workers stop once the work submitted is done.

        ``wait``: return only then. ``cancel_futures``: cancel the futures not
        started yet first.
        """
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._engine.cancel_queued()
        self._engine.close()
        if wait:
            self._engine.join()


__all__ = ["MeshExecutor", "MeshFuture"]
