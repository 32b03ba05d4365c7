"""Hosting one actor in a worker: construction, then its method calls in arrival order.

A worker becomes an actor when its daemon sends BECOME_ACTOR; from then on the
executor thread (``ActorHost``, mixed into ``executor.Executor``) runs the calls
callers push to it: one at a time, on a thread pool when ``max_concurrency > 1``,
or as coroutines on an asyncio loop of its own when the class has ``async def``
methods.
"""

from __future__ import annotations

import atexit
import contextvars
import inspect
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import exceptions as exc
from ..host.proctitle import set_title
from ..host.sessions import ACTOR_EXIT_CODE
from ..wire.messages import Msg
from ..wire.serialization import deserialize
from .calls import RUNNING, ActorExit, Cancelled, Running, call_with


class ActorHost:
    """The actor side of the executor (a mixin: ``Executor`` holds the state it uses)."""

    def _become_actor(self, actor_id: bytes, spec: dict, restarts: int, frames: list, gpu_ids: tuple) -> None:
        core = self.core
        core.gpu_ids = gpu_ids
        if gpu_ids:  # the devices it holds, for its life (its runtime_env's env_vars may still say otherwise)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        self.actor_id = actor_id
        core.current_actor_id = actor_id
        self.bounce_enabled = False
        self.actor_label = spec.get("class_name", "actor")
        self.actor_job = core.tasks.job_id = str(spec.get("job_id") or "")  # the creator's job, as in Ray
        self.actor_spec, self.actor_restarts = spec, restarts
        self.actor_shape = tuple(tuple(pair) for pair in spec.get("shape", ()))
        set_title("mesh-actor", f"{self.actor_label} {core.node_id[:8]}")
        self.log_ctx = (spec["owner"], self.actor_label)
        self.last_sink = spec["owner"]
        error = None
        try:
            if spec.get("runtime_env"):  # first: the class may live in its working_dir
                from .runtime_env import apply_for_life

                apply_for_life(spec["runtime_env"])
            cls = deserialize(spec["class_bytes"], [])
            args = self._resolve_args(spec["args"], frames, spec["owner"])
            is_async = any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
                           for _, m in inspect.getmembers(cls, inspect.isfunction))
            concurrency = spec.get("max_concurrency") or (1000 if is_async else 1)
            if is_async:
                self._start_async_loop(concurrency)
            if inspect.iscoroutinefunction(cls.__init__):
                # ``async def __init__``: the instance is made here and initialized on the
                # actor's loop, before any call runs (calls wait for ACTOR_READY).
                instance = cls.__new__(cls)
                init = call_with(instance.__init__, args, spec["kw_names"])
                import asyncio

                asyncio.run_coroutine_threadsafe(init, self._loop).result()
                self.actor = instance
            else:
                self.actor = call_with(cls, args, spec["kw_names"])
            if not is_async and concurrency > 1:
                self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="actor")
        except ActorExit:
            core.post(core._send_daemon, Msg.ACTOR_READY, actor_id, "it called exit_actor() in __init__")
            return
        except BaseException as e:  # noqa: BLE001
            error = self._wrap(f"{spec.get('class_name', 'actor')}.__init__", e)
            core.post(core._send_daemon, Msg.ACTOR_READY, actor_id, str(error))
            return
        core.post(core._send_daemon, Msg.ACTOR_READY, actor_id, None)

    def _start_async_loop(self, concurrency: int) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def _run():
            asyncio.set_event_loop(loop)
            self._sem = asyncio.Semaphore(concurrency)
            started.set()
            loop.run_forever()

        threading.Thread(target=_run, name="actor-asyncio", daemon=True).start()
        started.wait()

    def submit_call(self, caller: str, call: tuple, frames: list) -> None:
        """I/O thread: queue an actor method call (in arrival order)."""
        self.queue.put(("call", caller, call, frames))

    def _run_call(self, caller: str, call: tuple, frames: list) -> None:
        task_id = call[0]
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            self._finish(caller, task_id, call[5], call[4], None,
                         exc.TaskCancelledError(task_id=task_id.hex()), 0.0)
            return
        if self._loop is None and self._pool is None:
            self._call_sync(caller, call, frames)
            return
        with self._calls_cv:  # counted until its result is out: exit_actor() waits for it
            self._calls_running += 1
        if self._loop is not None:
            import asyncio

            asyncio.run_coroutine_threadsafe(self._call_async(caller, call, frames), self._loop)
        else:
            self._pool.submit(self._call_sync, caller, call, frames)

    def _call_ended(self) -> None:
        with self._calls_cv:
            self._calls_running -= 1
            self._calls_cv.notify_all()

    # ------------------------------------------------------------------ exit

    def request_exit(self) -> None:
        """exit_actor() was called (any thread): no call starts any more, and the executor
        thread ends the process once the calls running now are done (``_exit_actor``)."""
        self.exiting = True
        self.queue.put(("exit_actor",))  # wakes the executor thread

    def _exit_error(self) -> exc.ActorDiedError:
        return exc.ActorDiedError("The actor exited: it called exit_actor().", self.actor_id.hex())

    def _exit_actor(self, first: tuple) -> None:
        """End this actor (executor thread): the calls not started fail with ActorDiedError, those
        running finish, atexit handlers run, and the process exits with ACTOR_EXIT_CODE, which
        tells its daemon not to restart it."""
        items = [first]
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item[0] == "call":
                call = item[2]
                self._finish(item[1], call[0], call[5], call[4], None, self._exit_error(), 0.0)
        with self._calls_cv:
            while self._calls_running > 0:
                self._calls_cv.wait(1.0)
        atexit._run_exitfuncs()
        self.exit_code = ACTOR_EXIT_CODE

    def _call_sync(self, caller: str, call: tuple, frames: list) -> None:
        try:
            self._call_sync_once(caller, call, frames)
        finally:
            if self._pool is not None:
                self._call_ended()

    def _call_sync_once(self, caller: str, call: tuple, frames: list) -> None:
        task_id, method, args_wire, kw_names, num_returns, return_ids = call
        core = self.core
        if self.exiting:
            self._finish(caller, task_id, return_ids, num_returns, None, self._exit_error(), 0.0)
            return
        with self._lock:
            if self._pool is None:
                self._current = task_id
            else:
                self._active[task_id] = None
        if self._pool is None:
            core.current_task_id = task_id
        label = f"{self.actor_label}.{method}"
        running = RUNNING.set(Running(task_id, label, self.actor_shape))
        self.tasks_started += 1
        start = time.perf_counter()
        self.running[task_id] = (label, start, self.actor_job)
        result = error = None
        try:
            if self.actor is None:
                raise exc.ActorDiedError("the actor's constructor failed")
            args = self._resolve_args(args_wire, frames, caller)
            fn = getattr(self.actor, method)
            result = call_with(fn, args, kw_names)
            if inspect.iscoroutine(result):
                import asyncio

                result = asyncio.run(result)
            if isinstance(num_returns, (tuple, list)):
                result = self._stream(caller, task_id, result, num_returns, f"{type(self.actor).__name__}.{method}")
        except Cancelled:
            error = exc.TaskCancelledError(task_id=task_id.hex())
        except ActorExit:
            error = self._exit_error()
        except BaseException as e:  # noqa: BLE001
            error = self._wrap(f"{type(self.actor).__name__}.{method}", e)
        finally:
            RUNNING.reset(running)
            with self._lock:
                if self._pool is None:
                    self._current = None
                    self._cancel_target = None
                self._active.pop(task_id, None)
                if task_id in self._cancel_asked:  # it saw is_canceled() and stopped, as Ray: cancelled
                    self._cancel_asked.discard(task_id)
                    result, error = None, exc.TaskCancelledError(task_id=task_id.hex())
            if self._pool is None:
                core.current_task_id = None
            self.running.pop(task_id, None)
        duration = time.perf_counter() - start
        self._record_span(label, start, duration, task_id, error, self.actor_job)
        self._finish(caller, task_id, return_ids, num_returns, result, error, duration)

    async def _call_async(self, caller: str, call: tuple, frames: list) -> None:
        try:
            await self._call_async_once(caller, call, frames)
        finally:
            self._call_ended()

    async def _call_async_once(self, caller: str, call: tuple, frames: list) -> None:
        import asyncio

        task_id, method, args_wire, kw_names, num_returns, return_ids = call
        result = error = None
        label = f"{self.actor_label}.{method}"
        RUNNING.set(Running(task_id, label, self.actor_shape))  # this asyncio task's own
        with self._lock:
            cancelled = task_id in self._cancelled  # cancelled on its way to the loop
            self._cancelled.discard(task_id)
            if not cancelled:
                self._active[task_id] = asyncio.current_task()  # cancel() cancels this asyncio task
        started, start = False, time.perf_counter()
        try:
            if cancelled:
                raise asyncio.CancelledError()
            async with self._sem:
                if self.exiting:
                    raise ActorExit()
                started, start = True, time.perf_counter()
                self.tasks_started += 1
                self.running[task_id] = (label, start, self.actor_job)
                result = await self._run_async(caller, task_id, method, args_wire, kw_names, num_returns, frames)
        except asyncio.CancelledError:
            error = exc.TaskCancelledError(task_id=task_id.hex())
        except ActorExit:
            error = self._exit_error()
        except BaseException as e:  # noqa: BLE001
            error = self._wrap(f"{type(self.actor).__name__}.{method}", e)
        finally:
            self.running.pop(task_id, None)
            with self._lock:
                self._active.pop(task_id, None)
                if task_id in self._cancel_asked:  # it caught the CancelledError and went on: cancelled all the same
                    self._cancel_asked.discard(task_id)
                    result, error = None, exc.TaskCancelledError(task_id=task_id.hex())
        duration = time.perf_counter() - start
        if started:
            self._record_span(label, start, duration, task_id, error, self.actor_job)
        self._finish(caller, task_id, return_ids, num_returns, result, error, duration)

    async def _run_async(self, caller: str, task_id: bytes, method: str, args_wire: list, kw_names: tuple,
                         num_returns: Any, frames: list) -> Any:
        import asyncio

        if any(a[0] == "r" for a in args_wire):
            args = await asyncio.get_running_loop().run_in_executor(
                None, self._resolve_args, args_wire, frames, caller)
        else:
            args = self._resolve_args(args_wire, frames, caller)
        result = call_with(getattr(self.actor, method), args, kw_names)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(num_returns, (tuple, list)):
            name = f"{type(self.actor).__name__}.{method}"
            if inspect.isasyncgen(result):
                return await self._astream(caller, task_id, result, num_returns, name)
            # a plain generator: off the loop, it may block
            return await asyncio.get_running_loop().run_in_executor(
                None, contextvars.copy_context().run, self._stream, caller, task_id, result, num_returns, name)
        return result
