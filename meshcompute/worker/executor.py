"""The worker's main thread: runs pushed tasks, or hosts one actor.

The I/O thread (see core.py) queues work here; results go back through it.  A
worker that blocks in ``get``/``wait`` inside a task tells the daemon (its CPU is
lent to another worker) and hands unstarted tasks back to their owners, so a
task waiting on its children never sits on work those children need.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import exceptions as exc
from ..observe.stats import FunctionStats
from ..owner.listing import MAX_LISTED, pending_tasks
from ..owner.object_ref import ObjectRef
from ..wire import ids
from ..wire.messages import Msg
from ..wire.serialization import DeserializeContext, deserialize, serialize
from . import actor_host, calls
from .actor_host import ActorHost
from .calls import RUNNING, Cancelled, Running, call_with, copy_of, error_of

if TYPE_CHECKING:  # asyncio (and ssl with it) costs 7 MiB a process: imported where used
    import asyncio

_OWN_FILES = frozenset({__file__, actor_host.__file__, calls.__file__})
"""The executor's own files: their frames are left out of remote tracebacks."""

TIMELINE_SPANS = 10000
"""Recent task spans a worker keeps for ``mesh timeline`` and ``list_tasks`` (a ring buffer)."""


class Executor(ActorHost):
    def __init__(self, core) -> None:
        self.core = core
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._fns: dict[bytes, Any] = {}
        # Definitions that came with tasks this worker did not run (handed back, or
        # cancelled): an owner sends a function once per worker, so later tasks of
        # it come without one, and would find none.
        self._fn_bytes: dict[bytes, bytes] = {}
        self._cancelled: set[bytes] = set()  # asked to cancel before they started
        self._cancel_asked: set[bytes] = set()  # asked to cancel while running (is_canceled())
        self._active: dict[bytes, Any] = {}  # actor calls running on a pool thread or loop -> asyncio task
        self._current: bytes | None = None
        self._cancel_target: bytes | None = None
        self._lock = threading.Lock()
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_spec: dict | None = None  # what BECOME_ACTOR said: class, options, creator
        self.actor_restarts = 0  # how many times this actor was restarted before this instance
        self.actor_shape: tuple = ()  # the resources the actor holds
        self.exiting = False  # exit_actor() was called: no call starts any more
        self.exit_code: int | None = None  # what the process exits with once run() returns
        self._calls_cv = threading.Condition()  # counts the calls running on a pool thread or the loop
        self._calls_running = 0
        self.bounce_enabled = True
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._main_ident = threading.get_ident()
        self._base_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._inline_depth = 0
        self._stream_cv = threading.Condition()  # backpressure of generator tasks
        self._consumed: dict[bytes, int] = {}  # stream task id -> items its consumer took
        # Observability, kept off the messages: counters read by the I/O thread's
        # periodic TASK_STATS, spans read on a TIMELINE request.
        self.tasks_started = 0
        self.tasks_finished = 0
        self.fn_stats = FunctionStats()  # by function: finished, failed, durations (metrics)
        # (name, start, duration, task id, (error type, message) or None, job id) per task
        self.timeline: collections.deque = collections.deque(maxlen=TIMELINE_SPANS)
        self.running: dict[bytes, tuple] = {}  # task id -> (name, start, job id) while it runs
        self.actor_job = ""  # the job that created the actor hosted here
        self._wall_offset = time.time() - time.perf_counter()
        self.log_ctx: tuple | None = None  # (owner to ship printed lines to, label)
        self.last_sink: str | None = None
        self.actor_label: str | None = None
        signal.signal(signal.SIGINT, self._on_sigint)

    # ---------------------------------------------------------------- control

    def _on_sigint(self, signum, frame) -> None:
        if self._cancel_target is not None and self._cancel_target == self._current:
            self._cancel_target = None
            raise Cancelled()

    def cancel(self, task_id: bytes) -> None:
        """Called on the I/O thread for CANCEL_TASK.

        A task not started yet never runs. One running on the executor thread is
        interrupted (SIGINT, turned into ``Cancelled``); an async actor's call is
        cancelled as an asyncio task; a threaded actor's call runs on, and can see
        that it was asked to stop with ``get_runtime_context().is_canceled()``."""
        with self._lock:
            if self._current == task_id and self._pool is None and self._loop is None:
                self._cancel_asked.add(task_id)
                self._cancel_target = task_id
                signal.pthread_kill(self._main_ident, signal.SIGINT)
            elif task_id in self._active:
                self._cancel_asked.add(task_id)
                aio_task = self._active[task_id]
                if aio_task is not None:
                    self._loop.call_soon_threadsafe(aio_task.cancel)
            else:
                self._cancelled.add(task_id)

    def is_canceled(self, task_id: bytes) -> bool:
        """Whether ``cancel`` was called for this running task or call."""
        return task_id in self._cancel_asked

    def on_block(self) -> None:
        """The running task waits in get/wait: lend out the CPU, hand back queued tasks."""
        core = self.core
        if self.actor_id is not None:
            return
        core.post(core._send_daemon, Msg.BLOCKED)
        back = self.take_queued_tasks()
        if back:
            core.bounce(back)

    def take_queued_tasks(self) -> dict[str, list[bytes]]:
        """Take the pushed tasks not started yet off the queue: {owner: [task ids]} (any thread)."""
        kept, back = [], {}
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item[0] == "task":
                back.setdefault(item[1], []).append(item[3][0])
                self.keep_fn(item[3])
            else:
                kept.append(item)
        for item in kept:
            self.queue.put(item)
        return back

    def running_task(self) -> bytes | None:
        """The id of the task running now (None between tasks)."""
        return self._current

    def on_unblock(self) -> None:
        if self.actor_id is None:
            self.core.post(self.core._send_daemon, Msg.UNBLOCKED)

    MAX_INLINE_DEPTH = 64
    """Deepest chain of children a blocked task runs itself before it waits."""

    def can_inline(self) -> bool:
        return self.actor_id is None and self._inline_depth < self.MAX_INLINE_DEPTH

    def run_inline(self, spec: tuple, frames: list, shape: tuple) -> None:
        """Run one of this process's own queued child tasks on this thread."""
        core = self.core
        saved = (core.current_task_id, self._current, getattr(core, "gpu_ids", ()))
        self._inline_depth += 1
        try:
            self._run_task(core.address, (), spec, frames, core.tasks.job_id, shape)  # its parent's job
        finally:
            self._inline_depth -= 1
            core.current_task_id, core.gpu_ids = saved[0], saved[2]
            with self._lock:
                self._current = saved[1]

    # ------------------------------------------------------------------- loop

    def run(self) -> None:
        q = self.queue
        while True:
            item = q.get()
            if self.exiting:  # exit_actor(): this item and those behind it fail, then the process ends
                self._exit_actor(item)
                return
            kind = item[0]
            if kind == "task":
                self._run_task(item[1], item[2], item[3], item[4], item[5], item[6])
            elif kind == "call":
                self._run_call(*item[1:])
            elif kind == "actor":
                self._become_actor(item[1], item[2], item[3], item[4], item[5])
            elif kind == "exit":
                return

    # ------------------------------------------------------------------ tasks

    def _resolve_args(self, wire: list, frames: list, carrier: str) -> list:
        core = self.core
        out = []
        pos = 0
        for a in wire:
            kind = a[0]
            if kind == "v":
                n = a[2]
                with DeserializeContext() as ctx:
                    out.append(deserialize(a[1], frames[pos: pos + n]))
                pos += n
                if ctx.new_borrows:
                    core.register_borrows(ctx.new_borrows, carrier)
            elif kind == "s":
                out.append(self._read_arg(a[1], a[3], a[4], a[2]))
            else:  # "r": an actor call's argument, fetched from its owner
                ref = ObjectRef(a[1], a[2])
                out.append(core.get([ref])[0])
        return out

    def _read_arg(self, oid: bytes, owner: str, node: str, size: int) -> Any:
        return self.core.read_store(oid, node, size, owner)

    def keep_fn(self, spec: tuple) -> None:
        """Keep the function definition a task carries, though the task will not run here (any thread)."""
        fn_id, fn_bytes = spec[1], spec[2]
        if fn_bytes is not None and fn_id not in self._fns:
            self._fn_bytes[fn_id] = fn_bytes

    def _load_fn(self, fn_id: bytes, fn_bytes: bytes | None) -> Any:
        fn = self._fns.get(fn_id)
        if fn is None:
            if fn_bytes is None:
                fn_bytes = self._fn_bytes.get(fn_id)
            if fn_bytes is None:
                raise exc.MeshSystemError("function definition missing on worker")
            fn = deserialize(fn_bytes, [])
            self._fns[fn_id] = fn
            self._fn_bytes.pop(fn_id, None)
        return fn

    def _run_task(self, owner: str, gpu_ids: tuple, spec: tuple, frames: list, job: str,
                  shape: tuple = ()) -> None:
        task_id, fn_id, fn_bytes, name, args_wire, kw_names, num_returns, return_ids = spec
        core = self.core
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            self.keep_fn(spec)
            self._send_error(owner, spec, exc.TaskCancelledError(task_id=task_id.hex()))
            return
        core.tasks.job_id = job  # get_job_id(), and the job of the children it submits
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        core.current_task_id = task_id
        core.gpu_ids = gpu_ids
        self._current = task_id
        running = RUNNING.set(Running(task_id, name, shape))
        saved_ctx = self.log_ctx
        sink = owner
        if self.actor_id is None:
            if owner == core.address and saved_ctx is not None:
                sink = saved_ctx[0]  # our own child, run inline: its lines go where ours go
            self.log_ctx = (sink, name)
            self.last_sink = sink
        self.tasks_started += 1
        start = time.perf_counter()
        self.running[task_id] = (name, start, job)
        fn = None
        try:
            fn = self._load_fn(fn_id, fn_bytes)
            args = self._resolve_args(args_wire, frames, owner)
            result = call_with(fn, args, kw_names)
            if isinstance(num_returns, (tuple, list)):
                result = self._stream(owner, task_id, result, num_returns, name)
            error = None
        except Cancelled:
            error = exc.TaskCancelledError(task_id=task_id.hex())
            result = None
        except (exc.TaskCancelledError, exc.RuntimeEnvSetupError) as e:  # not the user's code: as they are
            error, result = e.with_traceback(None), None  # no cycle through this frame (see _wrap)
        except BaseException as e:  # noqa: BLE001 - every user error goes back to the owner
            error = self._wrap(name, e)
            result = None
        finally:
            RUNNING.reset(running)
            with self._lock:
                self._current = None
                self._cancel_target = None
                self._cancel_asked.discard(task_id)
            core.current_task_id = None
            self.running.pop(task_id, None)
            if gpu_ids:
                if self._base_cuda is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = self._base_cuda
        duration = time.perf_counter() - start
        self._record_span(name, start, duration, task_id, error, job)
        if self.actor_id is None:
            self.log_ctx = saved_ctx
            if core.output is not None:
                core.output.end_of_task(sink)
        self._finish(owner, task_id, return_ids, num_returns, result, error, duration)

    def _wrap(self, name: str, e: BaseException) -> exc.TaskError:
        # The traceback goes on as text only.  Kept, it would hold the frame that caught the
        # exception, whose local holds the error in turn: a cycle that keeps the task's
        # arguments (the refs among them borrowed) until a garbage collection, in an idle
        # worker maybe never.
        if isinstance(e, exc.TaskError):
            return e.with_traceback(None)  # a nested failure keeps its original traceback (text)
        # The traceback starts at the user's code: the frames of this module that called it
        # (running the task, calling the function) say nothing to the reader.
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(e), e, tb))
        del tb
        e.__traceback__ = None
        return exc.TaskError(name, text, e, os.getpid(), self.core.node_id)

    def _finish(self, owner, task_id, return_ids, num_returns, result, error, duration) -> None:
        core = self.core
        if error is not None:
            values = [error] * len(return_ids)
            is_error = True
        elif num_returns == 1 or num_returns == 0 or isinstance(num_returns, (tuple, list)):
            values = [result]
            is_error = False
        else:
            try:
                values = list(result)
                if len(values) != num_returns:
                    raise ValueError(f"expected {num_returns} return values, got {len(values)}")
                is_error = False
            except Exception as e:  # noqa: BLE001
                values = [exc.TaskError("return values", str(e), e, os.getpid(), core.node_id)] * num_returns
                is_error = True
        returns, frames, handoff = [], [], []
        for oid, value in zip(return_ids, values):
            fields, bufs, contained = self._store_value(owner, oid, value, is_error)
            returns.append(fields)
            frames.extend(bufs)
            handoff.extend(contained)
        core.send_done(owner, (task_id, returns, duration), frames, handoff or None)

    def _store_value(self, owner: str, oid: bytes, value: Any, is_error: bool) -> tuple[tuple, list, list]:
        """Serialize a result, inline or into the store: (its wire fields, frames, refs inside)."""
        core = self.core
        try:
            ser = serialize(value, is_error)
        except Exception:  # noqa: BLE001 - an unpicklable result is the task's error
            ser = serialize(exc.TaskError("serializing the result", traceback.format_exc(), None,
                                          os.getpid(), core.node_id), True)
        contained = [(r._id, r._owner) for r in ser.contained]
        try:
            where = core.put_serialized(ser, owner=owner, object_id=oid)
        except exc.ObjectStoreFullError as e:
            ser = serialize(e, True)
            where = ("v", ser)
        if where[0] == "v":
            return ("v", ser.meta, len(ser.buffers), ser.is_error, contained), list(ser.buffers), ser.contained
        return ("s", where[1], where[2], ser.is_error, core.node_id, contained), [], ser.contained

    def _send_error(self, owner: str, spec: tuple, error: BaseException) -> None:
        task_id, return_ids, num_returns = spec[0], spec[-1], spec[-2]
        self._finish(owner, task_id, return_ids, num_returns, None, error, 0.0)

    # ------------------------------------------------------------ generators

    def _stream(self, owner: str, task_id: bytes, gen: Any, how: tuple, name: str) -> Any:
        """Send each value ``gen`` yields to its owner as it comes (streams.py); returns the
        completion value (None, or the list of refs for ``num_returns="dynamic"``)."""
        if not inspect.isgenerator(gen) and not hasattr(gen, "__next__"):
            raise TypeError(f'{name} was called with num_returns="{how[0]}" but returned '
                            f"{type(gen).__name__}, not a generator: use yield")
        refs: list = []
        for i in itertools.count():
            self._await_consumer(task_id, i, how[1])
            try:
                value = next(gen)
            except StopIteration:
                break
            except BaseException as e:  # noqa: BLE001 - the consumer gets it as the next item
                self._send_item(owner, task_id, i, self._wrap(name, e), True)
                raise
            self._send_item(owner, task_id, i, value, False, refs if how[0] == "dynamic" else None)
        return self._completion(how, refs)

    async def _astream(self, owner: str, task_id: bytes, gen: Any, how: tuple, name: str) -> Any:
        refs: list = []
        for i in itertools.count():
            if how[1] is not None:
                import asyncio

                await asyncio.get_running_loop().run_in_executor(None, self._await_consumer, task_id, i, how[1])
            try:
                value = await gen.__anext__()
            except StopAsyncIteration:
                break
            except BaseException as e:  # noqa: BLE001
                self._send_item(owner, task_id, i, self._wrap(name, e), True)
                raise
            self._send_item(owner, task_id, i, value, False, refs if how[0] == "dynamic" else None)
        return self._completion(how, refs)

    def _completion(self, how: tuple, refs: list) -> Any:
        if how[0] != "dynamic":
            return None
        from ..owner.generators import DynamicObjectRefGenerator

        return DynamicObjectRefGenerator(refs)

    def _await_consumer(self, task_id: bytes, i: int, window: int | None) -> None:
        """Backpressure: item ``i`` is made only once the consumer took item ``i - window``."""
        if window is None:
            return
        with self._stream_cv:
            while i - self._consumed.get(task_id, 0) >= window:
                self._stream_cv.wait(1.0)

    def stream_consumed(self, task_id: bytes, n: int) -> None:
        """I/O thread: the owner's consumer took ``n`` items of this stream."""
        with self._stream_cv:
            self._consumed[task_id] = max(n, self._consumed.get(task_id, 0))
            self._stream_cv.notify_all()

    def _send_item(self, owner: str, task_id: bytes, i: int, value: Any, is_error: bool,
                   refs: list | None = None) -> None:
        oid = ids.object_id(task_id, i + 1)
        fields, frames, contained = self._store_value(owner, oid, value, is_error)
        self.core.post(self.core.worker.stream_item, owner, task_id, i, fields, frames, contained)
        if refs is not None:
            refs.append(ObjectRef(oid, owner))

    # ---------------------------------------------------------- observability

    def _record_span(self, name: str, start: float, duration: float, task_id: bytes,
                     error: BaseException | None, job: str) -> None:
        """A finished task or call: counted, in the metrics, and in the timeline ring."""
        self.tasks_finished += 1
        self.fn_stats.record(name, duration, error is not None)
        self.timeline.append((name, start, duration, task_id, error_of(error), job))

    def timeline_lane(self) -> dict:
        """This worker's recent task spans, wall-clock seconds (I/O thread), with the tasks
        running here and those it submitted that wait (``list_tasks``)."""
        spans, running = copy_of(self.timeline), copy_of(self.running.items())
        off = self._wall_offset
        core = self.core
        return {
            "kind": "worker", "node_id": core.node_id, "pid": core.pid, "worker_id": core.worker_id,
            "actor": self.actor_label, "actor_id": self.actor_id.hex() if self.actor_id else None,
            "events": [(name, start + off, dur, tid.hex(), err, job) for name, start, dur, tid, err, job in spans],
            "running": [(name, start + off, tid.hex(), job) for tid, (name, start, job) in running[:MAX_LISTED]],
            "pending": pending_tasks(core.tasks),
        }

    def log_sink(self) -> str | None:
        """Where lines this process receives from its own children go next."""
        ctx = self.log_ctx
        return ctx[0] if ctx is not None else self.last_sink

