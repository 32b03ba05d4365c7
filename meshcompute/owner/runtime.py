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

They reach the outside only through :class:`~.io.OwnerIo`, which this class
implements (``send``, ``forget``, ``call_later``, ``next_req_id``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time
import traceback
from typing import Any

import zmq

from .. import exceptions as exc
from ..observe.output import print_output
from ..wire import ids
from ..wire.messages import Msg, decode, describe, encode
from ..wire.serialization import INLINE_THRESHOLD, DeserializeContext, Serialized, deserialize, serialize
from ..wire.transport import Endpoint, node_of
from .actors import ActorCalls
from .object_ref import ObjectRef
from .objects import READY, Entry, ObjectTable, Waiter
from .store_client import StoreClient
from .tasks import Task, TaskQueues

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
                 namespace: str | None = None, job_id: str = "") -> None:
        self.kind = kind
        self.worker_id = worker_id or ids.random_id()
        self.session_dir = session_dir
        self.daemon_addr = daemon_addr
        self.node_id = node_id
        self.namespace = namespace or ids.random_id()
        self.job_id = job_id
        self.pid = os.getpid()
        self._ctx = zmq.Context(io_threads=1)
        self._ctx.setsockopt(zmq.LINGER, 0)
        self._ep = Endpoint(self._ctx, node_id, f"p_{self.worker_id}", session_dir, host=host, keys=keys)
        self.address = self._ep.address
        self._closed = False
        self._cmds: collections.deque = collections.deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sleeping = False
        self._replies: dict[int, Waiter] = {}
        self._reply_fns: dict[int, Any] = {}  # req_id -> callback on the I/O thread
        self._req_ids = itertools.count(1)
        self._timers: list = []
        self._blocked_depth = 0
        # Messages sent and received, by type: a dict increment each, read by tests
        # that hold the task path to its message budget (tests/test_message_counts.py).
        self.sent: collections.Counter = collections.Counter()
        self.received: collections.Counter = collections.Counter()
        self.objects = ObjectTable(self, self._dependency_ready)
        self.tasks = TaskQueues(self, self.objects)
        self.actors = ActorCalls(self, self.tasks.fail)
        self.tasks.actors = self.actors
        self.executor: Any = None  # set in workers, with attach_executor()
        self.worker: Any = None  # a worker's WorkerInbox
        self.log_to_driver = True  # a driver prints the lines its tasks' workers ship
        self._stats_armed = False
        self._stats_sent: Any = None
        self.current_task_id: bytes | None = None
        self.current_actor_id: bytes | None = None
        self._handlers = self._make_handlers()
        self._early: list = []
        # Register with the daemon before the I/O thread exists, on this thread.
        reply = self._register()
        (_, _node_id, store_path, self.store_capacity, _session, self.node_meta) = reply
        self.store = StoreClient(store_path, self.store_capacity, node_id, self.request_daemon,
                                 lambda oid: self._post_daemon(Msg.STORE_UNPIN, oid),
                                 lambda oid: self._post_daemon(Msg.STORE_SEAL, oid))
        self._thread = threading.Thread(target=self._io_main, name="meshcompute-io", daemon=True)

    def attach_executor(self, executor: Any, output: Any) -> None:
        """Make this process a worker: ``executor`` runs what owners push here."""
        from ..worker.inbox import WorkerInbox

        self.executor = executor
        self.worker = WorkerInbox(self, executor,
                                  lambda msg, frames: self.tasks.on_tasks_done(self.address, msg, frames),
                                  lambda: self._blocked_depth > 0, self._note_activity)
        self.worker.output = output
        self._handlers.update(self.worker.handlers())
        # A task's children are first offered to the task itself: if it waits for
        # them at once, it runs them inline (wait_ready), and asking for a lease
        # would only be withdrawn again.
        self.tasks.request_delay = CHILD_LEASE_DELAY_S

    @property
    def output(self) -> Any:
        return self.worker.output if self.worker is not None else None

    def start(self) -> None:
        """Start the I/O thread (workers first attach their executor)."""
        self._thread.start()

    # ------------------------------------------------------------------ OwnerIo

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        self.sent[msg_type] += 1
        self._ep.send(peer, [encode(msg_type, *fields), *frames])

    def forget(self, peer: str) -> None:
        self._ep.forget(peer)

    def call_later(self, delay: float, fn, *args) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, id(fn), fn, args))

    def next_req_id(self) -> int:
        return next(self._req_ids)

    # ------------------------------------------------------------------ plumbing

    def _register(self) -> tuple:
        self._ep.send(self.daemon_addr, [encode(Msg.REGISTER, self.kind, self.pid, self.worker_id, self.namespace)])
        poller = zmq.Poller()
        poller.register(self._ep.inbox, zmq.POLLIN)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if poller.poll(100):
                frames = self._ep.inbox.recv_multipart(copy=False)
                msg = decode(frames[1].bytes)
                if msg[0] == Msg.REGISTERED:
                    return msg
                self._early.append(frames)  # handled once the I/O thread runs
        raise exc.MeshError(f"the node daemon at {self.daemon_addr} did not answer within 30 s")

    def post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread (thread-safe, non-blocking)."""
        self._cmds.append((fn, args))
        if self._sleeping:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def _post_daemon(self, msg_type: Msg, *fields) -> None:
        """Send to our daemon from any thread (through the I/O thread)."""
        if not self._closed:
            self.post(self.send, self.daemon_addr, msg_type, *fields)

    def _send_daemon(self, msg_type: Msg, *fields) -> None:
        self.send(self.daemon_addr, msg_type, *fields)

    def request(self, peer: str, msg_type: Msg, *fields, timeout: float | None = 60.0,
                on_late: Any = None) -> Any:
        """Send a request carrying a fresh req_id as first field; wait for its REPLY.

        ``on_late(value)`` runs on the I/O thread if the answer comes after the timeout.
        """
        req_id = next(self._req_ids)
        w = Waiter(1)
        self._replies[req_id] = w
        self.post(self.send, peer, msg_type, req_id, *fields)
        if not w.event.wait(timeout):
            if on_late is not None:
                self.post(self._expect_late, req_id, w, on_late)
            self._replies.pop(req_id, None)
            raise exc.GetTimeoutError(f"no answer from {peer} to {msg_type.name} within {timeout} s")
        return w.value

    def _expect_late(self, req_id: int, w: Waiter, on_late: Any) -> None:
        if w.event.is_set():  # it came while we were timing out
            on_late(w.value)
        else:
            self._reply_fns[req_id] = on_late

    def request_daemon(self, msg_type: Msg, *fields, timeout: float | None = 60.0, on_late: Any = None) -> Any:
        return self.request(self.daemon_addr, msg_type, *fields, timeout=timeout, on_late=on_late)

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
        req_id = next(self._req_ids)

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

        self._reply_fns[req_id] = finish
        self._send_daemon(Msg.GCS_REQUEST, req_id, op, 1e9 if timeout is None else timeout)

    def _io_main(self) -> None:
        inboxes = self._ep.inboxes
        poller = zmq.Poller()
        for inbox in inboxes:
            poller.register(inbox, zmq.POLLIN)
        poller.register(self._wake_fd, zmq.POLLIN)
        cmds = self._cmds
        handlers = self._handlers
        for frames in self._early:
            self._dispatch(frames, handlers)
        self._early = []
        while not self._closed:
            try:
                while cmds:
                    fn, args = cmds.popleft()
                    fn(*args)
                for inbox in inboxes:
                    for _ in range(2000):
                        try:
                            frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._dispatch(frames, handlers)
                        while cmds:
                            fn, args = cmds.popleft()
                            fn(*args)
                if self.worker is not None and self.worker.done_out:
                    self.worker.flush()
                timeout = 1000
                if self._timers:
                    now = time.monotonic()
                    while self._timers and self._timers[0][0] <= now:
                        _, _, fn, args = heapq.heappop(self._timers)
                        fn(*args)
                    if self._timers:
                        timeout = max(0, int((self._timers[0][0] - now) * 1000) + 1)
                if cmds:
                    continue
                self._sleeping = True
                if cmds:
                    self._sleeping = False
                    continue
                events = dict(poller.poll(timeout))
                self._sleeping = False
                if self._wake_fd in events:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except OSError:
                        pass
            except zmq.ContextTerminated:
                return
            except Exception:  # a bug must not kill the process's I/O
                if self._closed:
                    return
                log.error("meshcompute I/O thread error:\n%s", traceback.format_exc())

    def _dispatch(self, frames: list, handlers: dict) -> None:
        sender = frames[0].bytes.decode()
        try:
            msg = decode(frames[1].bytes)
        except Exception:
            log.warning("dropped a malformed message from %s", sender)
            return
        handler = handlers.get(msg[0])
        if handler is None:
            log.warning("no handler for %s from %s", describe(msg), sender)
            return
        self.received[msg[0]] += 1
        handler(sender, msg, frames[2:])

    def _make_handlers(self) -> dict:
        objects, tasks, actors = self.objects, self.tasks, self.actors
        return {
            Msg.REPLY: self._on_reply,
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

    def _on_reply(self, sender, msg, frames) -> None:
        fn = self._reply_fns.pop(msg[1], None)
        if fn is not None:
            fn(msg[2])
            return
        w = self._replies.pop(msg[1], None)
        if w is not None:
            w.value = msg[2]
            w.event.set()

    def _on_node_state(self, sender, msg, frames) -> None:
        """A node died or left: what ran or waited there fails over."""
        _, node_id, state = msg
        reason = f"node {node_id} {'died' if state == 'dead' else 'left'}"
        self.tasks.on_node_gone(node_id, reason)
        self.actors.on_node_gone(node_id, reason)
        for peer in [p for p in self._ep.out if node_of(p) == node_id]:
            self._ep.forget(peer)

    def close(self) -> None:
        if self._closed:
            return
        done = threading.Event()

        def _final():
            # Return every lease so the daemon can reuse the workers at once.
            self.tasks.return_all()
            done.set()

        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self.post(_final)
            done.wait(2)
        self._closed = True
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(2)
        try:
            self._ep.close(linger=200)
            self._ctx.term()
        except Exception:
            pass
        self.store.close()
        os.close(self._wake_fd)

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
                req_id = next(self._req_ids)
                w = Waiter(1)
                self._replies[req_id] = w
                waits.append(w)
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
            stolen = self._on_io(self.tasks.steal, [r._id for r in pending])
            if stolen:
                for spec, frames in stolen:
                    self.executor.run_inline(spec, frames)
                self._barrier()  # their results are applied on the I/O thread: see them before looking
                return self.wait_ready(refs, num, timeout)
        w = Waiter(num - len(ready))
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

    def _on_io(self, fn, *args) -> Any:
        """Run ``fn(*args)`` on the I/O thread and return its value (user thread)."""
        w = Waiter(1)

        def run() -> None:
            w.value = fn(*args)
            w.event.set()

        self.post(run)
        w.event.wait()
        return w.value

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
        """Turn call arguments into ("r", ref) / ("v", Serialized) items (user thread)."""
        items = [self._prepare_arg(a) for a in args]
        kw_names = tuple(kwargs)
        items.extend(self._prepare_arg(v) for v in kwargs.values())
        return items, kw_names

    def _prepare_arg(self, value: Any) -> tuple:
        if isinstance(value, ObjectRef):
            return ("r", value)
        ser = serialize(value)
        if ser.size <= INLINE_THRESHOLD:
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
        self._note_activity()
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
            req_id = next(self._req_ids)
            spec["req_id"] = req_id
            w = Waiter(1)
            self._replies[req_id] = w
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

    def _note_activity(self) -> None:
        if not self._stats_armed:
            self._stats_armed = True
            self.call_later(STATS_PERIOD_S, self._send_stats)

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
            self._note_activity()  # look once more: the counters are still moving

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
        self.send(sender, Msg.REPLY, msg[1], lane)

    # ------------------------------------------------------------------- info

    def node_info(self, what: str = "node") -> Any:
        return self.request_daemon(Msg.NODE_INFO, what)
