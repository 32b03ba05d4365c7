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
from ..host.sessions import pid_alive
from ..observe.output import print_output
from ..observe.stats import StatsReporter
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
from .affinity import fail_if_pinned_to, fail_pinned_to
from .control import ControlRequests, gcs_result
from .draining import on_node_draining
from .futures import future_for
from .io_thread import IoThread
from .listing import driver_lane
from .object_ref import ObjectRef
from .objects import READY, Entry, ObjectTable, Waiter
from .records import Task
from .refused import on_lease_refused
from .store_client import StoreClient
from .streams import Stream, Streams
from .tasks import TaskQueues

log = logging.getLogger("meshcompute")

DAEMON_CHECK_S = 1.0
"""How often (s) a driver checks that its node's daemon is alive."""

READ_ATTEMPTS = 5
"""Reads of one object tried before its loss is final: between them the owner is asked
where it is now (it may be rebuilding it, or its node may not be declared dead yet)."""

CHILD_LEASE_DELAY_S = 0.002
"""Seconds a worker waits before asking a lease for a child task it submitted:
long enough for the common ``get(child.remote())`` to take the child inline
with no message at all, short against any task worth a lease."""

__all__ = ["Core", "Task", "READY", "Entry", "gcs_result"]


class Core:
    """The runtime of one driver or worker process (see the module docstring)."""

    def __init__(self, *, session_dir: str, daemon_addr: str, kind: str, node_id: str,
                 host: str | None = None, keys: Any = None, worker_id: str = "",
                 namespace: str | None = None, still_wanted: Any = None) -> None:
        self.kind = kind
        self.worker_id = worker_id or ids.random_id()
        self.session_dir = session_dir
        self.daemon_addr = daemon_addr
        self.node_id = node_id
        self.namespace = namespace or ids.random_id()
        self.pid = os.getpid()
        self.io = io = IoThread(session_dir=session_dir, daemon_addr=daemon_addr, node_id=node_id,
                                name=f"p_{self.worker_id}", host=host, keys=keys)
        self.address = io.address
        self.post = io.post
        self.request = io.request
        self.sent, self.received = io.sent, io.received
        self._blocked_depth = 0
        self.objects = ObjectTable(io, self._dependency_ready, self._entry_freed)
        self._actor_tokens: dict[bytes, bytes] = {}  # token object id -> the unnamed actor it keeps alive
        self.tasks = TaskQueues(io, self.objects)
        self.actors = ActorCalls(io, self.tasks.fail, self.tasks.failed_arg)
        self.tasks.actors = self.actors
        self.actors.alive_node = lambda node: node == self.node_id or node in self.tasks.nodes
        self.streams = Streams(io, self.objects)
        self.control = ControlRequests(io, self.objects, self.request_daemon)
        self.gcs_request, self.gcs_promise = self.control.request, self.control.promise
        self.executor: Any = None  # set in workers, with attach_executor()
        self.worker: Any = None  # a worker's WorkerInbox
        self.log_to_driver = True  # a driver prints the lines its tasks' workers ship
        self.runtime_env: dict = {}  # init(runtime_env=...): the default of this driver's tasks and actors
        self.stats = StatsReporter(io.call_later, self.task_stats, lambda c: self._send_daemon(Msg.TASK_STATS, c))
        self.note_activity = self.stats.note_activity
        self.submitted = 0  # tasks and actor calls submitted here (TASK_STATS)
        self.current_task_id: bytes | None = None
        self.current_actor_id: bytes | None = None
        io.handlers.update(self._handlers())
        # Register with the daemon before the I/O thread exists, on this thread.
        reply = io.register(kind, self.pid, self.worker_id, self.namespace, still_wanted)
        (_, _node_id, store_path, self.store_capacity, _session, self.node_meta) = reply
        self.tasks.nodes.update(self.node_meta.get("nodes", {}))  # alive peers' daemons, kept by NODE_STATE
        self.store = StoreClient(store_path, self.store_capacity, node_id, self.request_daemon,
                                 lambda oids, reason: self._post_daemon(Msg.STORE_UNPIN, oids, reason),
                                 lambda oid, keep: self._post_daemon(Msg.STORE_SEAL, oid, keep),
                                 self.post, self.objects.ref_counts.__contains__)
        self.objects.pins = self.store.pins
        io.after_turn.append(self.store.flush_unpins)

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
        # The daemon stops idle workers beyond its CPU count, but not one that owns
        # objects (they would be lost with it): tell it again when that may change.
        self.objects.on_owned_freed = self.note_activity

    @property
    def job_id(self) -> str:
        """A driver's job (learned after it registers: owner/jobs.py); a worker's is that of its task."""
        return self.tasks.job_id

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
        if self.executor is None and self.node_meta.get("pid"):
            self.post(self._watch_daemon, int(self.node_meta["pid"]))

    def _watch_daemon(self, pid: int) -> None:
        """A driver looks after its node's daemon: if it died, every blocked call fails
        with LocalNodeDiedError instead of waiting for answers that cannot come."""
        if self.io.closed:
            return
        if pid_alive(pid):
            self.io.call_later(DAEMON_CHECK_S, self._watch_daemon, pid)
            return
        err = exc.LocalNodeDiedError(
            f"The daemon of this process's node (pid {pid}) died, so nothing more can run or be read "
            "here. Start the node again (mesh start, or a new init()) and resubmit.")
        log.error("%s", err)
        self.io.node_died(err)
        for t in list(self.tasks.tasks.values()):
            self.tasks.fail(t, err)
        self.objects.fail_pending(err)

    def _post_daemon(self, msg_type: Msg, *fields) -> None:
        """Send to our daemon from any thread (through the I/O thread)."""
        if not self.io.closed:
            self.post(self.io.send, self.daemon_addr, msg_type, *fields)

    def _send_daemon(self, msg_type: Msg, *fields) -> None:
        self.io.send(self.daemon_addr, msg_type, *fields)

    def request_daemon(self, msg_type: Msg, *fields, timeout: float | None = 60.0, on_late: Any = None) -> Any:
        return self.io.request(self.daemon_addr, msg_type, *fields, timeout=timeout, on_late=on_late)

    def _handlers(self) -> dict:
        objects, tasks, actors = self.objects, self.tasks, self.actors
        return {
            Msg.LEASE_GRANTED: tasks.on_lease_granted,
            Msg.LEASE_INFEASIBLE: tasks.on_lease_infeasible,
            Msg.LEASE_REFUSED: lambda sender, msg, frames: on_lease_refused(tasks, sender, msg, frames),
            Msg.NODE_DRAINING: lambda sender, msg, frames: on_node_draining(tasks, sender, msg, frames),
            Msg.LEASE_REVOKE: tasks.on_lease_revoke,
            Msg.LEASE_SPILLBACK: tasks.on_lease_spillback,
            Msg.WORKER_DIED: tasks.on_worker_died,
            Msg.TASKS_DONE: tasks.on_tasks_done,
            Msg.TASKS_BOUNCED: tasks.on_tasks_bounced,
            Msg.STREAM_ITEM: self.streams.on_stream_item,
            Msg.ACTOR_STATE: actors.on_actor_state,
            Msg.GET_OBJECT: objects.on_get_object,
            Msg.OBJECT_VALUE: objects.on_object_value,
            Msg.ADD_BORROWER: objects.on_add_borrower,
            Msg.REMOVE_BORROWER: objects.on_remove_borrower,
            Msg.NODE_STATE: self._on_node_state,
            Msg.PROCESS_GONE: self._on_process_gone,
            Msg.TIMELINE: self._on_timeline,
            Msg.WORKER_OUTPUT: self._on_worker_output,
            Msg.STORE_RELEASE: lambda sender, msg, frames: (
                self.store.on_store_release(msg[1]) if sender == self.daemon_addr else None),
        }

    def _on_node_state(self, sender, msg, frames) -> None:
        """A node joined (its daemon's address, for lease requests) or died or left:
        what ran or waited there fails over."""
        _, node_id, state, address = msg
        self.tasks.on_node_state(node_id, state, address)
        if state == "alive":
            if node_id in self.objects.dead_nodes:  # it was only unreachable: reconcile
                self.tasks.node_back(node_id)
                self.actors.node_back(node_id)
            self.objects.node_alive(node_id)
            return
        reason = f"node {node_id} {'died' if state == 'dead' else 'left'}"
        self.objects.node_died(node_id)  # first: what we borrow from there fails, rebuilds see it dead
        self.tasks.on_node_gone(node_id, reason)
        fail_pinned_to(self.tasks, {node_id})  # waiting for that very node: never (TaskUnschedulableError)
        self.actors.on_node_gone(node_id, reason)
        self.io.forget_node(node_id)

    def _on_process_gone(self, sender, msg, frames) -> None:
        """Processes died somewhere in the mesh (our daemon says so): what we borrow from them is lost."""
        if sender != self.daemon_addr or not isinstance(msg[1], list):
            return
        gone = [a for a in msg[1] if isinstance(a, str)]
        self.objects.owners_died(gone)
        for addr in gone:
            self.io.forget(addr)

    def close(self) -> None:
        # Return every lease first, so the daemon can reuse the workers at once.
        def final() -> None:
            self.tasks.return_all()
            # Pins of values still in use stay, but we answer no STORE_RELEASE from now on.
            self._send_daemon(Msg.STORE_UNPIN, self.store.pins.release_all_idle(), "closing")

        self.io.close(final=final)
        self.store.close()

    # ------------------------------------------------------------- ref counting

    def ref_created(self, ref: ObjectRef, deser_ctx: Any = None) -> None:
        """Count a new local ObjectRef (any thread)."""
        if self.objects.count(ref._id) == 0 and ref._owner != self.address:
            if deser_ctx is not None:
                deser_ctx.new_borrows.append(ref)
            else:
                self.post(self.objects.add_borrow, ref._id, ref._owner)

    def ref_deleted(self, oid: bytes) -> None:
        """Uncount a local ObjectRef (any thread, also from garbage collection)."""
        if self.objects.uncount(oid) and not self._closed:
            self.post(self.objects.release, oid)

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
                waits.append((ref._owner, self.io.expect_reply(req_id)))
                self.post(self.objects.add_borrow, ref._id, ref._owner, req_id)
        for owner, w in waits:  # up to 10 s each, less if the owner is known dead meanwhile
            deadline = time.monotonic() + 10
            while not w.event.wait(0.25) and time.monotonic() < deadline and not self.objects.owner_dead(owner):
                pass

    # ---------------------------------------------------------------- get / wait

    def _barrier(self) -> None:
        """Wait until the I/O thread has run everything posted before this call."""
        done = threading.Event()
        self.post(done.set)
        done.wait()

    def wait_ready(self, refs: list, num: int, timeout: float | None) -> set[bytes]:
        """Block until ``num`` of ``refs`` are ready or the timeout passes."""
        entries, fresh = self.objects.entries, self.objects.fresh
        ready = {r._id for r in refs if ((e := entries.get(r._id)) is not None and e.state == READY) or r._id in fresh}
        if len(ready) >= num:
            return ready
        pending = [r for r in refs if r._id not in ready]
        if self.executor is not None and self.executor.can_inline():
            # Run our own children that are still queued here instead of waiting
            # for a worker to take them (a fork-join pool's "help while waiting").
            stolen = self.io.call(self.tasks.steal, [r._id for r in pending])
            if stolen:
                for spec, frames, shape in stolen:
                    self.executor.run_inline(spec, frames, shape)
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
        entries, fresh = self.objects.entries, self.objects.fresh
        if not all(((e := entries.get(i)) is not None and e.state == READY) or i in fresh for i in ids_):
            unique = list({r._id: r for r in refs}.values())
            ready = self.wait_ready(unique, len(unique), timeout)
            if len(ready) < len(unique):
                raise exc.GetTimeoutError(
                    f"get() timed out after {timeout} s with {len(unique) - len(ready)} of "
                    f"{len(unique)} objects not ready")
        return [self._materialize(ref._id, deadline, timeout) for ref in refs]

    def _materialize(self, oid: bytes, deadline: float | None, timeout: float | None) -> Any:
        e = self.objects.entries.get(oid)
        if (e is None or e.state != READY) and (e := self.objects.fresh_entry(oid)) is None:
            raise exc.ObjectLostError(object_id=oid.hex())  # freed under us: a lost object
        if e.loc is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                value = self.read_store(oid, e.node, e.loc[1], e.owner, left)
            except exc.GetTimeoutError:
                raise exc.GetTimeoutError(f"get() timed out after {timeout} s reading object "
                                          f"{oid.hex()} from node {e.node}") from None
        else:
            v = e.value
            with DeserializeContext() as ctx:
                value = deserialize(v.meta, v.buffers)
            if ctx.new_borrows:
                self.register_borrows(ctx.new_borrows, e.owner)
        if e.is_error:
            try:  # no local may name it then: exception -> traceback -> this frame -> it, a cycle
                raise value.as_instanceof_cause() if isinstance(value, exc.TaskError) else value
            finally:  # that would keep the caller's frames (and the refs in them) until a gc
                del value
        return value

    def read_store(self, oid: bytes, node: str, size: int, owner: str, timeout: float | None = None) -> Any:
        """Read an object from the store (pulled from ``node`` first if it is elsewhere).

        ``timeout`` bounds the whole read, a pull from another node included
        (None: a local read waits up to 60 s, a pull as long as it makes progress).
        A copy that cannot be read (its node died) is asked for again from its
        owner, which rebuilds it if it can (lineage) or answers with the error.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(READ_ATTEMPTS):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._read_store_once(oid, node, size, owner, left)
            except exc.ObjectLostError:
                if attempt == READ_ATTEMPTS - 1 or self.io.local_node_died is not None:
                    raise
            where = self._refetch(oid, owner, node, deadline)
            if where[0] == "v":
                return where[1]
            node, size = where[1], where[2]
        raise AssertionError("unreachable")

    def _read_store_once(self, oid: bytes, node: str, size: int, owner: str, timeout: float | None) -> Any:
        if timeout is None and (not node or node == self.node_id):
            timeout = 60.0
        value, new_borrows = self.store.read(oid, node, size, timeout)
        if new_borrows:
            self.register_borrows(new_borrows, owner)
        return value

    def _refetch(self, oid: bytes, owner: str, lost_on: str, deadline: float | None) -> tuple:
        """Ask the owner where ``oid`` is now (it could not be read from ``lost_on``):
        ("s", node, size) of the current copy, or ("v", value) if it came inline.
        Raises the object's error (rebuild failed, owner died) or GetTimeoutError."""
        w = Waiter(1)
        self.post(self.objects.refetch, oid, owner, lost_on, w)
        self._block()  # a rebuild may need this CPU
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not w.event.wait(left):
                raise exc.GetTimeoutError(f"object {oid.hex()} was lost on node {lost_on} and not rebuilt in time")
        finally:
            self._unblock()
        e = self.objects.entries.get(oid)
        try:
            if e is None or e.state != READY:
                raise exc.ObjectLostError(object_id=oid.hex())
            if e.loc is not None and not e.is_error:
                return ("s", e.node, e.loc[1])
            value = self._materialize(oid, deadline, None)
            return ("v", value)
        finally:
            self.post(self.objects.forget_unreferenced, oid)

    def future_for(self, ref: ObjectRef):
        """A concurrent.futures.Future of ``ref``'s value (futures.py: no thread per ref)."""
        return future_for(self, ref)

    # ------------------------------------------------------------------- put

    def put_serialized(self, ser: Serialized, owner: str | None = None, object_id: bytes | None = None):
        """Store a value; returns ("v", ser) for small values or ("s", offset, size)."""
        # A put keeps its pin (we hold the ref: our gets need no message); a task's result does not.
        return self.store.put(ser, owner or self.address, object_id, keep_pinned=owner is None)

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
        self.objects.put_fresh(oid, where, ser.contained)  # a get of it needs no I/O thread turn
        self.post(self.objects.put_done, oid, where, ser.contained, self.node_id)
        return ref

    def submit(self, t: Task) -> list[ObjectRef]:
        if isinstance(t.num_returns, tuple):  # a generator: its one return is its completion (streams.py)
            t.return_ids = [ids.object_id(t.task_id, 0)]
        else:
            t.return_ids = [ids.object_id(t.task_id, i + 1) for i in range(max(1, t.num_returns))]
        refs = [ObjectRef(oid, self.address) for oid in t.return_ids]
        self.post(self._io_submit, t)
        return refs

    def _io_submit(self, t: Task) -> None:
        self.note_activity()
        self.submitted += 1
        self.tasks.submit(t)
        if isinstance(t.num_returns, tuple):
            self.tasks.lineage.needed.pop(t.task_id, None)  # its items cannot be rebuilt
            self.streams.open(t.task_id, t.num_returns[0] == "dynamic", t.num_returns[1])
        if self.objects.dead_nodes and t.actor_id is None:
            fail_if_pinned_to(self.tasks, t, self.objects.dead_nodes)
        if self.io.local_node_died is not None:
            self.tasks.fail(t, self.io.local_node_died)

    def _dependency_ready(self, t: Any) -> None:
        if isinstance(t, Stream):
            self.streams.completed(t)
        else:
            self.tasks.dependency_ready(t)

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        self.post(self.tasks.cancel, ids.task_of(ref._id), force)

    # ------------------------------------------------------------------ actors

    def actor_daemon(self, actor_id: bytes, hint: str | None) -> str:
        return self.actors.daemon_of(actor_id, hint)

    def kill_actor(self, actor_id: bytes, no_restart: bool, hint: str | None) -> None:
        """Kill an actor; with no_restart, calls made after this fail at once here."""
        self.post(self.actors.kill, actor_id, no_restart, hint)

    def actor_token(self, actor_id: bytes) -> ObjectRef:
        """The token object an unnamed actor's handles hold (user thread): when the last
        ref to it anywhere is gone, the actor is stopped once its calls finish."""
        oid = ids.object_id(actor_id, 0xFFFFFFFF)
        ref = ObjectRef(oid, self.address)
        self.post(self._make_token, oid, actor_id)
        return ref

    def _make_token(self, oid: bytes, actor_id: bytes) -> None:
        self._actor_tokens[oid] = actor_id
        self.objects.put_done(oid, ("v", serialize(None)), [], self.node_id)

    def _entry_freed(self, oid: bytes) -> None:
        actor_id = self._actor_tokens.pop(oid, None)
        if actor_id is not None:
            self.actors.release(actor_id)
        else:
            self.tasks.lineage.entry_freed(oid)

    # ------------------------------------------------------------ worker side

    def send_done(self, owner: str, result: tuple, frames: list, handoff: list | None) -> None:
        """Hand a task result to the I/O thread (executor thread); sent in batches."""
        self.post(self.worker.done, owner, result, frames, handoff)

    def bounce(self, owner_tasks: dict[str, list[bytes]]) -> None:
        self.post(self.worker.bounce, owner_tasks)

    # ---------------------------------------------------------- observability

    def task_stats(self) -> dict:
        """Tasks this process submitted and holds queued (any owner), runs and ran (a worker: by
        function); whether a worker owns objects."""
        ex, queued = self.executor, self.tasks.queued() + self.actors.queued()
        if ex is None:
            return {"running": 0, "queued": queued, "finished": 0, "submitted": self.submitted}
        return {"running": max(0, ex.tasks_started - ex.tasks_finished), "queued": queued + ex.queue.qsize(),
                "finished": ex.tasks_finished, "submitted": self.submitted, "failed": ex.fn_stats.failed,
                "by_fn": ex.fn_stats.snapshot(), "owns_objects": self.objects.owns_any()}

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
        self.io.send(sender, Msg.REPLY, msg[1], driver_lane(self.node_id, self.pid, self.worker_id, self.tasks))

    # ------------------------------------------------------------------- info

    def node_info(self, what: str = "node") -> Any:
        return self.request_daemon(Msg.NODE_INFO, what)
