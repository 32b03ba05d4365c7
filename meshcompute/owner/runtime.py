"""The runtime inside every driver and worker process: one I/O thread and its state.

One I/O thread owns every socket of the process and all ownership state; user
threads (the driver's code, a worker's executor) hand it work through a deque
and wait on events.  The state lives in objects with narrow interfaces, each
in its own module, called by this shell and never calling back into it:

* :class:`~.objects.ObjectTable`: values, readiness, reference counts, borrowers;
* :class:`~.tasks.TaskQueues`: owned tasks, queues, leases, results, retries;
* :class:`~.actors.ActorCalls`: the actors this process calls;
* :class:`~.store_client.StoreClient`: puts and zero-copy reads of the node's store;
* in workers, :class:`~..worker.inbox.WorkerInbox`: tasks in, results out.

They reach the outside only through :class:`~.io.OwnerIo`, which the I/O
thread (:class:`~.io_thread.IoThread`: every socket, one loop) implements.
This class is the process's API for the user-facing layer (api/): it turns
calls from user threads into work posted to that thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .. import exceptions as exc
from ..observe.output import print_output
from ..wire import ids
from ..wire.messages import Msg
from ..wire.serialization import (
    INLINE_ARGS_BYTES,
    INLINE_THRESHOLD,
    DeserializeContext,
    Serialized,
    deserialize,
    serialize,
)
from .actors import ActorCalls
from .io_thread import IoThread
from .object_ref import ObjectRef
from .objects import READY, Entry, ObjectTable, Waiter
from .records import Task
from .store_client import StoreClient
from .tasks import TaskQueues

log = logging.getLogger("meshcompute")

STATS_PERIOD_S = 0.5
"""A process reports its task counters (TASK_STATS) at most this often, and only
while they change: a timer armed by task activity, never a message per task."""

CHILD_LEASE_DELAY_S = 0.002
"""Seconds a worker waits before asking a lease for a child task it submitted:
long enough for the common ``get(child.remote())`` to take the child inline
with no message at all, short against any task worth a lease."""

__all__ = ["Core", "Task", "READY", "Entry", "gcs_result"]


def gcs_result(op: tuple, status: str, value: Any) -> Any:
    """The value of a control store answer, or the exception it stands for."""
    if status == "ok":
        return value
    if status == "unavailable":
        raise exc.ControlStoreUnavailableError(value)
    if op[0] == "pg_wait":
        raise exc.PlacementGroupRemovedError(value)
    raise exc.MeshError(f"the control store refused {op[0]}: {value}")


class Core:
    """The runtime of one driver or worker process (see the module docstring)."""

    def __init__(self, *, session_dir: str, daemon_addr: str, kind: str, node_id: str,
                 host: str | None = None, keys: Any = None, worker_id: str = "",
                 namespace: str | None = None, job_id: str = "", still_wanted: Any = None) -> None:
        self.kind = kind
        self.worker_id = worker_id or ids.random_id()
        self.session_dir = session_dir
        self.daemon_addr = daemon_addr
        self.node_id = node_id
        self.namespace = namespace or ids.random_id()
        self.job_id = job_id
        self.pid = os.getpid()
        self.io = io = IoThread(session_dir=session_dir, daemon_addr=daemon_addr, node_id=node_id,
                                name=f"p_{self.worker_id}", host=host, keys=keys)
        self.address = io.address
        self.post = io.post
        self.request = io.request
        self.sent, self.received = io.sent, io.received
        self._blocked_depth = 0
        self.objects = ObjectTable(io, self._dependency_ready)
        self.tasks = TaskQueues(io, self.objects)
        self.actors = ActorCalls(io, self.tasks.fail)
        self.tasks.actors = self.actors
        self.executor: Any = None  # set in workers, with attach_executor()
        self.worker: Any = None  # a worker's WorkerInbox
        self.log_to_driver = True  # a driver prints the lines its tasks' workers ship
        self._stats_armed = False
        self._stats_sent: Any = None
        self.current_task_id: bytes | None = None
        self.current_actor_id: bytes | None = None
        io.handlers.update(self._handlers())
        # Register with the daemon before the I/O thread exists, on this thread.
        reply = io.register(kind, self.pid, self.worker_id, self.namespace, still_wanted)
        (_, _node_id, store_path, self.store_capacity, _session, self.node_meta) = reply
        self.tasks.nodes.update(self.node_meta.get("nodes", {}))  # alive peers' daemons, kept by NODE_STATE
        self.store = StoreClient(store_path, self.store_capacity, node_id, self.request_daemon,
                                 lambda oid: self._post_daemon(Msg.STORE_UNPIN, oid),
                                 lambda oid: self._post_daemon(Msg.STORE_SEAL, oid))

    def attach_worker(self, executor: Any, inbox: Any) -> None:
        """Make this process a worker: ``executor`` runs what owners push to ``inbox``
        (a WorkerInbox, worker/inbox.py), whose handlers join the I/O thread's."""
        self.executor = executor
        self.worker = inbox
        self.io.handlers.update(self.worker.handlers())
        self.io.after_turn.append(self.worker.flush_if_any)
        # A task's children are first offered to the task itself: if it waits for
        # them at once, it runs them inline (wait_ready), and asking for a lease
        # would only be withdrawn again.
        self.tasks.request_delay = CHILD_LEASE_DELAY_S

    @property
    def output(self) -> Any:
        return self.worker.output if self.worker is not None else None

    @property
    def blocked(self) -> bool:
        """Whether the task running here waits in get/wait (its CPU is lent out)."""
        return self._blocked_depth > 0

    @property
    def _closed(self) -> bool:
        return self.io.closed

    def start(self) -> None:
        """Start the I/O thread (workers first attach their executor)."""
        self.io.start()

    def _post_daemon(self, msg_type: Msg, *fields) -> None:
        """Send to our daemon from any thread (through the I/O thread)."""
        if not self.io.closed:
            self.post(self.io.send, self.daemon_addr, msg_type, *fields)

    def _send_daemon(self, msg_type: Msg, *fields) -> None:
        self.io.send(self.daemon_addr, msg_type, *fields)

    def request_daemon(self, msg_type: Msg, *fields, timeout: float | None = 60.0, on_late: Any = None) -> Any:
        return self.io.request(self.daemon_addr, msg_type, *fields, timeout=timeout, on_late=on_late)

    def gcs_request(self, op: tuple, timeout: float | None = None) -> Any:
        """A control store read or write through our daemon; returns its value.

        Raises ControlStoreUnavailableError when the store has had no quorum for
        ``timeout`` seconds (default 10), MeshError when it refused the request.
        """
        t = 10.0 if timeout is None else float(timeout)
        status, value = self.request_daemon(Msg.GCS_REQUEST, op, t, timeout=t + 30.0)
        return gcs_result(op, status, value)

    def gcs_promise(self, op: tuple, timeout: float | None, convert: Any = None) -> ObjectRef:
        """An ObjectRef that becomes the value of a control store request (or its error)."""
        oid = ids.object_id(ids.new_task_id(), 0)
        ref = ObjectRef(oid, self.address)
        self.post(self._io_gcs_promise, oid, op, timeout, convert)
        return ref

    def _io_gcs_promise(self, oid: bytes, op: tuple, timeout: float | None, convert: Any) -> None:
        e = Entry(True, self.address)
        self.objects.entries[oid] = e
        req_id = self.io.next_req_id()

        def finish(answer: Any) -> None:
            try:
                value, is_error = gcs_result(op, *answer), False
                if convert is not None:
                    value = convert(value)
            except Exception as err:
                value, is_error = err, True
            e.value = serialize(value, is_error)
            e.is_error = is_error
            self.objects.resolve(oid, e)

        self.io.on_reply(req_id, finish)
        self._send_daemon(Msg.GCS_REQUEST, req_id, op, 1e9 if timeout is None else timeout)

    def _handlers(self) -> dict:
        objects, tasks, actors = self.objects, self.tasks, self.actors
        return {
            Msg.LEASE_GRANTED: tasks.on_lease_granted,
            Msg.LEASE_INFEASIBLE: tasks.on_lease_infeasible,
            Msg.LEASE_REVOKE: tasks.on_lease_revoke,
            Msg.LEASE_SPILLBACK: tasks.on_lease_spillback,
            Msg.WORKER_DIED: tasks.on_worker_died,
            Msg.TASKS_DONE: tasks.on_tasks_done,
            Msg.TASKS_BOUNCED: tasks.on_tasks_bounced,
            Msg.ACTOR_STATE: actors.on_actor_state,
            Msg.GET_OBJECT: objects.on_get_object,
            Msg.OBJECT_VALUE: objects.on_object_value,
            Msg.ADD_BORROWER: objects.on_add_borrower,
            Msg.REMOVE_BORROWER: objects.on_remove_borrower,
            Msg.NODE_STATE: self._on_node_state,
            Msg.TIMELINE: self._on_timeline,
            Msg.WORKER_OUTPUT: self._on_worker_output,
        }

    def _on_node_state(self, sender, msg, frames) -> None:
        """A node joined (its daemon's address, for lease requests) or died or left:
        what ran or waited there fails over."""
        _, node_id, state, address = msg
        self.tasks.on_node_state(node_id, state, address)
        if state == "alive":
            return
        reason = f"node {node_id} {'died' if state == 'dead' else 'left'}"
        self.tasks.on_node_gone(node_id, reason)
        self.actors.on_node_gone(node_id, reason)
        self.io.forget_node(node_id)

    def close(self) -> None:
        # Return every lease first, so the daemon can reuse the workers at once.
        self.io.close(final=self.tasks.return_all)
        self.store.close()

    # ------------------------------------------------------------- ref counting

    def ref_created(self, ref: ObjectRef, deser_ctx: Any = None) -> None:
        """Count a new local ObjectRef (any thread)."""
        oid = ref._id
        objects = self.objects
        with objects.ref_lock:
            n = objects.ref_counts.get(oid, 0)
            objects.ref_counts[oid] = n + 1
        if n == 0 and ref._owner != self.address:
            if deser_ctx is not None:
                deser_ctx.new_borrows.append(ref)
            else:
                self.post(objects.add_borrow, oid, ref._owner)

    def ref_deleted(self, oid: bytes) -> None:
        """Uncount a local ObjectRef (any thread, also from garbage collection)."""
        objects = self.objects
        with objects.ref_lock:
            n = objects.ref_counts.get(oid, 0) - 1
            if n > 0:
                objects.ref_counts[oid] = n
                return
            objects.ref_counts.pop(oid, None)
        if not self._closed:
            self.post(objects.release, oid)

    def register_borrows(self, new_borrows: list, carrier_owner: str) -> None:
        """Tell owners about refs this process just received (user thread).

        When the owner is not the process that keeps the carrier alive, wait for
        the owner's acknowledgement, so that the carrier cannot be released (and
        the object freed) before the owner knows about us.
        """
        waits = []
        for ref in new_borrows:
            if ref._owner == carrier_owner:
                self.post(self.objects.add_borrow, ref._id, ref._owner)
            else:
                req_id = self.io.next_req_id()
                waits.append(self.io.expect_reply(req_id))
                self.post(self.objects.add_borrow, ref._id, ref._owner, req_id)
        for w in waits:
            w.event.wait(10)

    # ---------------------------------------------------------------- get / wait

    def _barrier(self) -> None:
        """Wait until the I/O thread has run everything posted before this call."""
        done = threading.Event()
        self.post(done.set)
        done.wait()

    def wait_ready(self, refs: list, num: int, timeout: float | None) -> set[bytes]:
        """Block until ``num`` of ``refs`` are ready or the timeout passes."""
        entries = self.objects.entries
        ready = {r._id for r in refs if (e := entries.get(r._id)) is not None and e.state == READY}
        if len(ready) >= num:
            return ready
        pending = [r for r in refs if r._id not in ready]
        if self.executor is not None and self.executor.can_inline():
            # Run our own children that are still queued here instead of waiting
            # for a worker to take them (a fork-join pool's "help while waiting").
            stolen = self.io.call(self.tasks.steal, [r._id for r in pending])
            if stolen:
                for spec, frames in stolen:
                    self.executor.run_inline(spec, frames)
                self._barrier()  # their results are applied on the I/O thread: see them before looking
                return self.wait_ready(refs, num, timeout)
        w = Waiter(num - len(ready))
        pending = [(r._id, r._owner) for r in pending]
        self.post(self.objects.watch, pending, w)
        if not w.event.is_set():
            self._block()
            try:
                w.event.wait(timeout)
            finally:
                self._unblock()
        self.post(self.objects.unwatch, pending, w)
        ready.update(w.done_ids)
        return ready

    def wait_all_reporting(self, refs: list, timeout: float | None, tick: float, report) -> bool:
        """Wait until every ref is ready, calling ``report(n_ready)`` every ``tick`` s
        (a driver's get(progress=True)); False if the timeout passed first."""
        entries = self.objects.entries
        ready = sum(1 for r in refs if (e := entries.get(r._id)) is not None and e.state == READY)
        pending = [r for r in refs if (e := entries.get(r._id)) is None or e.state != READY]
        report(ready)
        if not pending:
            return True
        w = Waiter(len(pending))
        pending = [(r._id, r._owner) for r in pending]
        self.post(self.objects.watch, pending, w)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step = tick if left is None else max(0.0, min(tick, left))
                done = w.event.wait(step)
                report(ready + len(w.done_ids))
                if done:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        finally:
            self.post(self.objects.unwatch, pending, w)

    def _block(self) -> None:
        if self.executor is not None:
            self._blocked_depth += 1
            if self._blocked_depth == 1:
                self.executor.on_block()

    def _unblock(self) -> None:
        if self.executor is not None:
            self._blocked_depth -= 1
            if self._blocked_depth == 0:
                self.executor.on_unblock()

    def get(self, refs: list, timeout: float | None = None) -> list:
        ids_ = [r._id for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        entries = self.objects.entries
        if not all((e := entries.get(i)) is not None and e.state == READY for i in ids_):
            unique = list({r._id: r for r in refs}.values())
            ready = self.wait_ready(unique, len(unique), timeout)
            if len(ready) < len(unique):
                raise exc.GetTimeoutError(
                    f"get() timed out after {timeout} s with {len(unique) - len(ready)} of "
                    f"{len(unique)} objects not ready")
        return [self._materialize(ref, deadline, timeout) for ref in refs]

    def _materialize(self, ref: ObjectRef, deadline: float | None, timeout: float | None) -> Any:
        e = self.objects.entries.get(ref._id)
        if e is None or e.state != READY:  # freed under us: can only happen for lost objects
            raise exc.ObjectLostError(object_id=ref.hex())
        if e.loc is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                value = self.read_store(ref._id, e.node, e.loc[1], e.owner, left)
            except exc.GetTimeoutError:
                raise exc.GetTimeoutError(f"get() timed out after {timeout} s reading object "
                                          f"{ref.hex()} from node {e.node}") from None
        else:
            v = e.value
            with DeserializeContext() as ctx:
                value = deserialize(v.meta, v.buffers)
            if ctx.new_borrows:
                self.register_borrows(ctx.new_borrows, e.owner)
        if e.is_error:
            if isinstance(value, exc.TaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def read_store(self, oid: bytes, node: str, size: int, owner: str, timeout: float | None = None) -> Any:
        """Read an object from the store (pulled from ``node`` first if it is elsewhere).

        ``timeout`` bounds the whole read, a pull from another node included
        (None: a local read waits up to 60 s, a pull as long as it makes progress).
        """
        if timeout is None and (not node or node == self.node_id):
            timeout = 60.0
        unpin = self.store._unpin
        value, new_borrows = self.store.read(
            oid, node, size, timeout,
            on_late=lambda answer: unpin(oid) if isinstance(answer, tuple) and not isinstance(answer[0], str)
            else None)
        if new_borrows:
            self.register_borrows(new_borrows, owner)
        return value

    def future_for(self, ref: ObjectRef):
        import concurrent.futures

        fut: concurrent.futures.Future = concurrent.futures.Future()

        def _wait():
            try:
                fut.set_result(self.get([ref])[0])
            except BaseException as err:  # delivered to the awaiting code
                fut.set_exception(err)

        threading.Thread(target=_wait, daemon=True, name="meshcompute-future").start()
        return fut

    # ------------------------------------------------------------------- put

    def put_serialized(self, ser: Serialized, owner: str | None = None, object_id: bytes | None = None):
        """Store a value; returns ("v", ser) for small values or ("s", offset, size)."""
        return self.store.put(ser, owner or self.address, object_id)

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself instead")
        return self._put_serialized(serialize(value))

    # ------------------------------------------------------------------ submit

    def prepare_args(self, args: tuple, kwargs: dict) -> tuple[list, tuple]:
        """Turn call arguments into ("r", ref) / ("v", Serialized) items (user thread).

        Small arguments travel inline until they add up to INLINE_ARGS_BYTES."""
        items = []
        room = INLINE_ARGS_BYTES
        for value in (*args, *kwargs.values()):
            item = self._prepare_arg(value, room)
            if item[0] == "v":
                room -= item[1].size
            items.append(item)
        return items, tuple(kwargs)

    def _prepare_arg(self, value: Any, room: int) -> tuple:
        if isinstance(value, ObjectRef):
            return ("r", value)
        ser = serialize(value)
        if ser.size <= min(INLINE_THRESHOLD, room):
            return ("v", ser)
        return ("r", self._put_serialized(ser))  # large arguments go through the store once, like a put

    def _put_serialized(self, ser: Serialized) -> ObjectRef:
        oid = ids.object_id(ids.new_task_id(), 0)
        where = self.put_serialized(ser, object_id=oid)
        ref = ObjectRef(oid, self.address)
        self.post(self.objects.put_done, oid, where, ser.contained, self.node_id)
        return ref

    def submit(self, t: Task) -> list[ObjectRef]:
        t.return_ids = [ids.object_id(t.task_id, i + 1) for i in range(max(1, t.num_returns))]
        refs = [ObjectRef(oid, self.address) for oid in t.return_ids]
        self.post(self._io_submit, t)
        return refs

    def _io_submit(self, t: Task) -> None:
        self.note_activity()
        self.tasks.submit(t)

    def _dependency_ready(self, t: Task) -> None:
        self.tasks.task_ready(t)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        self.post(self.tasks.cancel, ids.task_of(ref._id), force)

    # ------------------------------------------------------------------ actors

    def actor_daemon(self, actor_id: bytes, hint: str | None) -> str:
        return self.actors.daemon_of(actor_id, hint)

    def request_actor_create(self, actor_id: bytes, spec: dict, frames: list) -> tuple:
        """Create an actor through our daemon, or the peer it sends us to."""
        daemon = self.daemon_addr
        for _ in range(3):
            req_id = self.io.next_req_id()
            spec["req_id"] = req_id
            w = self.io.expect_reply(req_id)
            self.post(self.actors.create, actor_id, spec, frames, daemon)
            if not w.event.wait(60):
                raise exc.MeshError("the node daemon did not answer the actor creation within 60 s")
            if w.value[0] != "spill":
                return w.value
            daemon = w.value[1]
            spec["spilled"] = True
        return w.value

    def kill_actor(self, actor_id: bytes, no_restart: bool, hint: str | None) -> None:
        """Kill an actor; with no_restart, calls made after this fail at once here."""
        self.post(self.actors.kill, actor_id, no_restart, hint)

    def release_actor(self, actor_id: bytes) -> None:
        """The creator's last handle is gone: stop the actor once its calls finish."""
        self.post(self.actors.release, actor_id)

    # ------------------------------------------------------------ worker side

    def send_done(self, owner: str, result: tuple, frames: list, handoff: list | None) -> None:
        """Hand a task result to the I/O thread (executor thread); sent in batches."""
        self.post(self.worker.done, owner, result, frames, handoff)

    def bounce(self, owner_tasks: dict[str, list[bytes]]) -> None:
        self.post(self.worker.bounce, owner_tasks)

    def _arm_output(self) -> None:
        self.worker.arm_output()

    # ---------------------------------------------------------- observability

    def note_activity(self) -> None:
        if not self._stats_armed:
            self._stats_armed = True
            self.io.call_later(STATS_PERIOD_S, self._send_stats)

    def task_stats(self) -> dict:
        """Tasks this process runs (a worker) and holds queued (any owner)."""
        ex = self.executor
        queued = self.tasks.queued() + self.actors.queued()
        if ex is None:
            return {"running": 0, "queued": queued, "finished": 0}
        finished = ex.tasks_finished
        return {"running": max(0, ex.tasks_started - finished), "queued": queued + ex.queue.qsize(),
                "finished": finished}

    def _send_stats(self) -> None:
        self._stats_armed = False
        stats = self.task_stats()
        if stats != self._stats_sent:
            self._stats_sent = stats
            self._send_daemon(Msg.TASK_STATS, stats)
            self.note_activity()  # look once more: the counters are still moving

    def _on_worker_output(self, sender, msg, frames) -> None:
        lines = msg[1]
        if not isinstance(lines, list):
            return
        if self.worker is None:
            if self.log_to_driver:
                print_output(lines)
            return
        self.worker.forward_output(lines)

    def _on_timeline(self, sender, msg, frames) -> None:
        if self.worker is not None:
            self.worker.on_timeline(sender, msg, frames)
            return
        lane = {"node_id": self.node_id, "pid": self.pid, "worker_id": self.worker_id, "events": []}
        self.io.send(sender, Msg.REPLY, msg[1], lane)

    # ------------------------------------------------------------------- info

    def node_info(self, what: str = "node") -> Any:
        return self.request_daemon(Msg.NODE_INFO, what)
