"""The runtime inside every driver and worker process.

One I/O thread owns every socket of the process and all ownership state; user
threads (the driver's code, a worker's executor) hand it work through a deque and
wait on events.  The design follows Ray's owner model:

* **Ownership.**  The process that submits a task (or calls ``put``) owns the
  results.  Results come straight back to the owner; the owner alone decides
  when a value is freed.
* **Leases.**  To run tasks the owner leases a worker from its node's daemon for
  one resource shape, then pushes tasks *directly* to that worker, several in
  flight, and returns the lease when its queue runs dry.  The daemon is off the
  per-task path.
* **Reference counting.**  A value lives while any ``ObjectRef`` to it exists in
  the owner, while a pending task holds it as an argument, or while another
  process (a *borrower*) holds a ref.  Borrowers register with the owner on their
  first ref and deregister when their last ref dies.  A value in transit keeps its
  refs alive through its *carrier*: a task keeps its arguments' refs until it
  finishes; a worker keeps the refs inside a result until the owner has taken its
  own hold (``RELEASE_HANDOFF``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import mmap
import os
import threading
import time
import traceback
import weakref
from typing import Any

import zmq

from .. import exceptions as exc
from ..observe.output import OUTPUT_FLUSH_S, print_output
from ..store.layout import encoded_size, pwrite_object, read_object, write_object
from ..store.shm import Prefaulter, Ranges, mapping_address
from ..wire import ids
from ..wire.messages import Msg, decode, describe, encode
from ..wire.serialization import (
    INLINE_THRESHOLD,
    DeserializeContext,
    Serialized,
    deserialize,
    serialize,
)
from ..wire.transport import Endpoint, node_of
from .object_ref import ObjectRef

log = logging.getLogger("meshcompute")

PENDING, READY = 0, 1

LEASE_IDLE_S = 0.01
"""An idle lease is kept this long (s) so back-to-back tasks skip the daemon; it
is returned at once when the daemon says others are waiting (LEASE_REVOKE)."""
MAX_PIPELINE = 16
"""Most tasks in flight on one leased worker, for tasks known to be short."""
SHORT_TASK_S = 0.002
"""Tasks whose mean run time is under this (s) are pipelined; longer ones go one
at a time per worker so a second worker can take the next one."""
MAX_LEASE_REQUESTS = 16
"""Most lease requests one owner keeps outstanding per resource shape."""
STATS_PERIOD_S = 0.5
"""A process reports its task counters (TASK_STATS) at most this often, and only
while they change: a timer armed by task activity, never a message per task."""


class Entry:
    """What this process knows about one object."""

    __slots__ = (
        "owned", "owner", "state", "value", "loc", "node", "is_error", "borrowers",
        "waiters", "dependents", "getters", "contained", "requested",
    )

    def __init__(self, owned: bool, owner: str) -> None:
        self.owned = owned
        self.owner = owner
        self.state = PENDING
        self.value: Serialized | None = None  # inline value
        self.loc: tuple[int, int] | None = None  # (offset, size) in the store of `node`
        self.node = ""  # node whose store holds the primary copy (when loc is set)
        self.is_error = False
        self.borrowers: set[str] = set()
        self.waiters: list[_Waiter] = []
        self.dependents: list[Task] = []
        self.getters: list[str] = []  # processes waiting for OBJECT_VALUE
        self.contained: list[ObjectRef] = []  # refs kept alive by this value
        self.requested = False


class Task:
    """An owned task or actor call, from submission to completion."""

    __slots__ = (
        "task_id", "fn_id", "fn_bytes", "name", "args", "kw_names", "num_returns",
        "return_ids", "shape", "retries_left", "retry_exceptions", "deps", "lease",
        "cancelled", "actor_id", "method", "dispatched", "holds", "strategy",
    )

    def __init__(self) -> None:
        self.deps = 0
        self.lease: Lease | None = None
        self.cancelled = False
        self.actor_id: bytes | None = None
        self.dispatched = False
        self.holds: list = []


class Lease:
    __slots__ = ("lease_id", "shape", "worker_addr", "worker_id", "gpu_ids", "inflight", "idle_since", "blocked",
                 "daemon")

    def __init__(self, lease_id, shape, worker_addr, worker_id, gpu_ids, daemon) -> None:
        self.daemon = daemon  # the daemon that granted it: returns and kills go there
        self.lease_id = lease_id
        self.shape = shape
        self.worker_addr = worker_addr
        self.worker_id = worker_id
        self.gpu_ids = gpu_ids
        self.inflight: dict[bytes, Task] = {}
        self.idle_since = 0.0
        self.blocked = False


class ActorClient:
    """A caller's view of one actor: where it is and the calls in flight."""

    __slots__ = ("actor_id", "addr", "state", "queue", "inflight", "reason", "subscribed", "release_when_idle",
                 "daemon")

    def __init__(self, actor_id: bytes) -> None:
        self.actor_id = actor_id
        self.addr: str | None = None
        self.state = "PENDING"
        self.queue: collections.deque[Task] = collections.deque()
        self.inflight: dict[bytes, Task] = {}
        self.reason = ""
        self.subscribed = False
        self.release_when_idle = False
        self.daemon = ""  # the daemon of the node hosting the actor


class _Waiter:
    __slots__ = ("remaining", "event", "value", "done_ids")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = threading.Event()
        self.value: Any = None
        self.done_ids: list[bytes] = []


class _Unpinner:
    """Sends STORE_UNPIN when the read-only mapping of an object is unmapped."""

    __slots__ = ("core", "object_id")

    def __init__(self, core: Core, object_id: bytes) -> None:
        self.core = core
        self.object_id = object_id

    def __call__(self) -> None:
        core = self.core
        if not core._closed:
            core.post(core._send_daemon, Msg.STORE_UNPIN, self.object_id)


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
        self._ref_lock = threading.Lock()
        self._ref_counts: dict[bytes, int] = {}
        self._objects: dict[bytes, Entry] = {}
        self._tasks: dict[bytes, Task] = {}
        self._queues: dict[tuple, collections.deque[Task]] = {}
        self._leases: dict[tuple, list[Lease]] = {}
        self._lease_by_id: dict[bytes, Lease] = {}
        self._lease_reqs: dict[int, tuple] = {}
        self._lease_reqs_out: dict[tuple, int] = collections.defaultdict(int)
        self._warned_shapes: set[tuple] = set()
        self._fn_sent: dict[str, set[bytes]] = collections.defaultdict(set)
        self._fn_time: dict[bytes, float] = {}
        self._actors: dict[bytes, ActorClient] = {}
        self._replies: dict[int, _Waiter] = {}
        self._reply_fns: dict[int, Any] = {}  # req_id -> callback on the I/O thread
        self._req_ids = itertools.count(1)
        self._timers: list = []
        self._done_out: dict[str, list] = {}  # owner -> [(result, frames)] to flush
        self._handoff: dict[bytes, list] = {}  # task id -> refs kept until the owner holds them
        self._blocked_depth = 0
        self._revoke_until = 0.0
        self.executor: Any = None  # set in workers
        self.output: Any = None  # a worker's OutputShipper (log_stream.py)
        self.log_to_driver = True  # a driver prints the lines its tasks' workers ship
        self._out_last = 0.0
        self._stats_armed = False
        self._stats_sent: Any = None
        self.current_task_id: bytes | None = None
        self.current_actor_id: bytes | None = None
        self._handlers = self._make_handlers()
        self._early: list = []
        # Register with the daemon before the I/O thread exists, on this thread.
        reply = self._register()
        (_, _node_id, self.store_path, self.store_capacity, _session, self.node_meta) = reply
        self._arena_fd = os.open(self.store_path, os.O_RDWR)
        self._arena = mmap.mmap(self._arena_fd, self.store_capacity)
        self._arena_mv = memoryview(self._arena)
        # Pages of our mapping that are populated: puts there are a plain memcpy.
        self._touched = Ranges()
        self._prefaulter = Prefaulter(mapping_address(self._arena), self._touched)
        self._thread = threading.Thread(target=self._io_main, name="meshcompute-io", daemon=True)

    def start(self) -> None:
        """Start the I/O thread (workers first attach their executor)."""
        self._thread.start()

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

    def request(self, peer: str, msg_type: Msg, *fields, timeout: float | None = 60.0) -> Any:
        """Send a request carrying a fresh req_id as first field; wait for its REPLY."""
        req_id = next(self._req_ids)
        w = _Waiter(1)
        self._replies[req_id] = w
        self.post(self._send, peer, [encode(msg_type, req_id, *fields)])
        if not w.event.wait(timeout):
            self._replies.pop(req_id, None)
            raise exc.GetTimeoutError(f"no answer from {peer} to {msg_type.name} within {timeout} s")
        return w.value

    def request_daemon(self, msg_type: Msg, *fields, timeout: float | None = 60.0) -> Any:
        return self.request(self.daemon_addr, msg_type, *fields, timeout=timeout)

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
        self._objects[oid] = e
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
            self._set_ready(oid, e)
            self._maybe_free(oid, e)

        self._reply_fns[req_id] = finish
        self._ep.send(self.daemon_addr, [encode(Msg.GCS_REQUEST, req_id, op, 1e9 if timeout is None else timeout)])

    def _send(self, peer: str, frames: list) -> None:
        self._ep.send(peer, frames)

    def _send_daemon(self, msg_type: Msg, *fields) -> None:
        self._ep.send(self.daemon_addr, [encode(msg_type, *fields)])

    def _call_later(self, delay: float, fn, *args) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, id(fn), fn, args))

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
                if self._done_out:
                    self._flush_done()
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
        handler(sender, msg, frames[2:])

    def _make_handlers(self) -> dict:
        return {
            Msg.REPLY: self._on_reply,
            Msg.LEASE_GRANTED: self._on_lease_granted,
            Msg.LEASE_INFEASIBLE: self._on_lease_infeasible,
            Msg.LEASE_REVOKE: self._on_lease_revoke,
            Msg.WORKER_DIED: self._on_worker_died,
            Msg.ACTOR_STATE: self._on_actor_state,
            Msg.TASKS_DONE: self._on_tasks_done,
            Msg.TASKS_BOUNCED: self._on_tasks_bounced,
            Msg.GET_OBJECT: self._on_get_object,
            Msg.OBJECT_VALUE: self._on_object_value,
            Msg.ADD_BORROWER: self._on_add_borrower,
            Msg.REMOVE_BORROWER: self._on_remove_borrower,
            Msg.RELEASE_HANDOFF: self._on_release_handoff,
            Msg.PUSH_TASKS: self._on_push_tasks,
            Msg.ACTOR_CALL: self._on_actor_call,
            Msg.CANCEL_TASK: self._on_cancel_task,
            Msg.BECOME_ACTOR: self._on_become_actor,
            Msg.SHUTDOWN: self._on_shutdown,
            Msg.LEASE_SPILLBACK: self._on_lease_spillback,
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

    def close(self) -> None:
        if self._closed:
            return
        done = threading.Event()

        def _final():
            # Return every lease so the daemon can reuse the workers at once.
            for lease in list(self._lease_by_id.values()):
                self._ep.send(lease.daemon, [encode(Msg.RETURN_LEASE, lease.lease_id)])
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
        self._prefaulter.close()
        try:
            self._arena_mv.release()
            self._arena.close()
        except Exception:  # views handed to the user are still alive; the OS unmaps at exit
            pass
        os.close(self._wake_fd)

    # ------------------------------------------------------------- ref counting

    def ref_created(self, ref: ObjectRef, deser_ctx: Any = None) -> None:
        """Count a new local ObjectRef (any thread)."""
        oid = ref._id
        with self._ref_lock:
            n = self._ref_counts.get(oid, 0)
            self._ref_counts[oid] = n + 1
        if n == 0 and ref._owner != self.address:
            if deser_ctx is not None:
                deser_ctx.new_borrows.append(ref)
            else:
                self.post(self._io_add_borrow, oid, ref._owner)

    def ref_deleted(self, oid: bytes) -> None:
        """Uncount a local ObjectRef (any thread, also from garbage collection)."""
        with self._ref_lock:
            n = self._ref_counts.get(oid, 0) - 1
            if n > 0:
                self._ref_counts[oid] = n
                return
            self._ref_counts.pop(oid, None)
        if not self._closed:
            self.post(self._io_release, oid)

    def _io_add_borrow(self, oid: bytes, owner: str, req_id: int | None = None) -> None:
        e = self._objects.get(oid)
        if e is None:
            self._objects[oid] = Entry(False, owner)
        self._ep.send(owner, [encode(Msg.ADD_BORROWER, (oid,), req_id)])

    def _io_release(self, oid: bytes) -> None:
        if oid in self._ref_counts:  # a new ref appeared meanwhile
            return
        e = self._objects.get(oid)
        if e is None:
            return
        if e.owned:
            self._maybe_free(oid, e)
        else:
            # Our read mappings of it unpin themselves when they are unmapped.
            del self._objects[oid]
            self._ep.send(e.owner, [encode(Msg.REMOVE_BORROWER, (oid,))])

    def _maybe_free(self, oid: bytes, e: Entry) -> None:
        if e.state == PENDING or e.borrowers or oid in self._ref_counts or e.getters:
            return
        del self._objects[oid]
        if e.loc is not None:
            self._send_daemon(Msg.STORE_FREE, (oid,), e.node)
        e.contained = []  # drops our holds on refs inside the value
        e.value = None

    def register_borrows(self, new_borrows: list, carrier_owner: str) -> None:
        """Tell owners about refs this process just received (user thread).

        When the owner is not the process that keeps the carrier alive, wait for
        the owner's acknowledgement, so that the carrier cannot be released (and
        the object freed) before the owner knows about us.
        """
        waits = []
        for ref in new_borrows:
            if ref._owner == carrier_owner:
                self.post(self._io_add_borrow, ref._id, ref._owner)
            else:
                req_id = next(self._req_ids)
                w = _Waiter(1)
                self._replies[req_id] = w
                waits.append(w)
                self.post(self._io_add_borrow, ref._id, ref._owner, req_id)
        for w in waits:
            w.event.wait(10)

    def _on_add_borrower(self, sender, msg, frames) -> None:
        _, oids, req_id = msg
        for oid in oids:
            e = self._objects.get(oid)
            if e is not None and e.owned:
                e.borrowers.add(sender)
        if req_id is not None:
            self._ep.send(sender, [encode(Msg.REPLY, req_id, True)])

    def _on_remove_borrower(self, sender, msg, frames) -> None:
        for oid in msg[1]:
            e = self._objects.get(oid)
            if e is not None and e.owned:
                e.borrowers.discard(sender)
                self._maybe_free(oid, e)

    def _on_release_handoff(self, sender, msg, frames) -> None:
        self._handoff.pop(msg[1], None)

    # ------------------------------------------------------------- object values

    def _set_ready(self, oid: bytes, e: Entry) -> None:
        e.state = READY
        if e.waiters:
            waiters, e.waiters = e.waiters, []
            for w in waiters:
                w.done_ids.append(oid)
                w.remaining -= 1
                if w.remaining <= 0:
                    w.event.set()
        if e.dependents:
            deps, e.dependents = e.dependents, []
            for t in deps:
                t.deps -= 1
                if t.deps == 0:
                    self._task_ready(t)
        if e.getters:
            getters, e.getters = e.getters, []
            for g in getters:
                self._send_value(g, oid, e)
            if e.owned:
                self._maybe_free(oid, e)

    def _value_fields(self, e: Entry) -> tuple[tuple, list]:
        if e.loc is not None:
            return ("s", e.loc[0], e.loc[1], e.is_error, e.node), []
        v = e.value
        return ("v", v.meta, len(v.buffers), e.is_error), list(v.buffers)

    def _send_value(self, peer: str, oid: bytes, e: Entry) -> None:
        fields, bufs = self._value_fields(e)
        self._ep.send(peer, [encode(Msg.OBJECT_VALUE, oid, fields), *bufs])

    def _on_get_object(self, sender, msg, frames) -> None:
        oid = msg[1]
        e = self._objects.get(oid)
        if e is None or not e.owned:
            self._ep.send(sender, [encode(Msg.OBJECT_VALUE, oid, ("lost",))])
        elif e.state == READY:
            self._send_value(sender, oid, e)
        else:
            e.getters.append(sender)

    def _on_object_value(self, sender, msg, frames) -> None:
        _, oid, fields = msg
        e = self._objects.get(oid)
        if e is None or e.state == READY:
            return
        self._fill(e, fields, frames)
        self._set_ready(oid, e)

    def _fill(self, e: Entry, fields: tuple, frames: list) -> int:
        """Store a value description (from a result or OBJECT_VALUE); returns frames used."""
        kind = fields[0]
        if kind == "v":
            _, meta, nbuf, is_error = fields[:4]
            e.value = Serialized(meta, [memoryview(f) for f in frames[:nbuf]], [], is_error)
            e.is_error = is_error
            return nbuf
        if kind == "s":
            _, offset, size, is_error, node = fields[:5]
            e.loc = (offset, size)
            e.node = node
            e.is_error = is_error
            return 0
        # "lost": the owner no longer has it
        e.is_error = True
        e.value = serialize(exc.ObjectLostError("the object was freed or its owner lost it"), True)
        return 0

    def _request_value(self, oid: bytes, e: Entry) -> None:
        if not e.requested:
            e.requested = True
            self._ep.send(e.owner, [encode(Msg.GET_OBJECT, oid)])

    # ---------------------------------------------------------------- get / wait

    def _io_watch(self, refs: list, w: _Waiter) -> None:
        for ref in refs:
            oid = ref._id
            e = self._objects.get(oid)
            if e is None:
                e = Entry(False, ref._owner)
                self._objects[oid] = e
            if e.state == READY:
                w.done_ids.append(oid)
                w.remaining -= 1
                continue
            e.waiters.append(w)
            if not e.owned:
                self._request_value(oid, e)
        if w.remaining <= 0:
            w.event.set()

    def _io_unwatch(self, refs: list, w: _Waiter) -> None:
        for ref in refs:
            e = self._objects.get(ref._id)
            if e is not None and w in e.waiters:
                e.waiters.remove(w)

    def wait_ready(self, refs: list, num: int, timeout: float | None) -> set[bytes]:
        """Block until ``num`` of ``refs`` are ready or the timeout passes."""
        objects = self._objects
        ready = {r._id for r in refs if (e := objects.get(r._id)) is not None and e.state == READY}
        if len(ready) >= num:
            return ready
        pending = [r for r in refs if r._id not in ready]
        if self.kind == "worker" and self.executor is not None and self.executor.can_inline():
            # Run our own children that are still queued here instead of waiting
            # for a worker to take them (a fork-join pool's "help while waiting").
            stolen = self._steal([r._id for r in pending])
            if stolen:
                for spec, frames in stolen:
                    self.executor.run_inline(spec, frames)
                return self.wait_ready(refs, num, timeout)
        w = _Waiter(num - len(ready))
        self.post(self._io_watch, pending, w)
        if not w.event.is_set():
            self._block()
            try:
                w.event.wait(timeout)
            finally:
                self._unblock()
        self.post(self._io_unwatch, pending, w)
        ready.update(w.done_ids)
        return ready

    def wait_all_reporting(self, refs: list, timeout: float | None, tick: float, report) -> bool:
        """Wait until every ref is ready, calling ``report(n_ready)`` every ``tick`` s
        (a driver's get(progress=True)); False if the timeout passed first."""
        objects = self._objects
        ready = sum(1 for r in refs if (e := objects.get(r._id)) is not None and e.state == READY)
        pending = [r for r in refs if (e := objects.get(r._id)) is None or e.state != READY]
        report(ready)
        if not pending:
            return True
        w = _Waiter(len(pending))
        self.post(self._io_watch, pending, w)
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
            self.post(self._io_unwatch, pending, w)

    def _steal(self, oids: list[bytes]) -> list:
        w = _Waiter(1)
        self.post(self._io_steal, oids, w)
        w.event.wait()
        return w.value

    def _io_steal(self, oids: list[bytes], w: _Waiter) -> None:
        out = []
        for oid in oids:
            t = self._tasks.get(ids.task_of(oid))
            if (t is None or t.dispatched or t.deps or t.actor_id is not None or t.cancelled
                    or any(k != "CPU" or v > 1 for k, v in t.shape)):
                continue
            q = self._queues.get(t.shape)
            if not q or t not in q:
                continue
            q.remove(t)
            frames: list = []
            args = [self._arg_wire(item, frames) for item in t.args]
            t.dispatched = True
            out.append(((t.task_id, t.fn_id, t.fn_bytes, t.name, args, t.kw_names, t.num_returns,
                         t.return_ids), frames))
        w.value = out
        w.event.set()

    def _block(self) -> None:
        if self.kind == "worker" and self.executor is not None:
            self._blocked_depth += 1
            if self._blocked_depth == 1:
                self.executor.on_block()

    def _unblock(self) -> None:
        if self.kind == "worker" and self.executor is not None:
            self._blocked_depth -= 1
            if self._blocked_depth == 0:
                self.executor.on_unblock()

    def get(self, refs: list, timeout: float | None = None) -> list:
        ids_ = [r._id for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        objects = self._objects
        if not all((e := objects.get(i)) is not None and e.state == READY for i in ids_):
            unique = list({r._id: r for r in refs}.values())
            ready = self.wait_ready(unique, len(unique), timeout)
            if len(ready) < len(unique):
                raise exc.GetTimeoutError(
                    f"get() timed out after {timeout} s with {len(unique) - len(ready)} of "
                    f"{len(unique)} objects not ready")
        out = []
        for ref in refs:
            out.append(self._materialize(ref, deadline))
        return out

    def _materialize(self, ref: ObjectRef, deadline: float | None) -> Any:
        e = self._objects.get(ref._id)
        if e is None or e.state != READY:  # freed under us: can only happen for lost objects
            raise exc.ObjectLostError(object_id=ref.hex())
        if e.loc is not None:
            value = self._read_store(ref._id, e)
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

    def _read_store(self, oid: bytes, e: Entry) -> Any:
        # The pin answers where the object is now (it may have moved through a
        # spill and restore) and keeps that block from reuse while mapped.
        # A copy on another node is pulled into ours first (the daemon does it).
        source = (e.node, e.loc[1]) if e.node and e.node != self.node_id else None
        answer = self.request_daemon(Msg.STORE_PIN, oid, source, timeout=None if source else 60.0)
        if answer is None:
            raise exc.ObjectLostError(object_id=oid.hex())
        if isinstance(answer[0], str):  # ("full", why): spilled, and no room to read it back
            raise exc.ObjectStoreFullError(answer[1])
        offset, size = answer
        mm = mmap.mmap(self._arena_fd, size, access=mmap.ACCESS_READ, offset=offset)
        weakref.finalize(mm, _Unpinner(self, oid))
        meta, bufs, _ = read_object(memoryview(mm))
        with DeserializeContext() as ctx:
            value = deserialize(meta, bufs)
        del meta, bufs
        if ctx.new_borrows:
            self.register_borrows(ctx.new_borrows, e.owner)
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
        if ser.size <= INLINE_THRESHOLD:
            return ("v", ser)
        oid = object_id
        lens = [memoryview(b).nbytes for b in ser.buffers]
        size = encoded_size(len(ser.meta), lens)
        answer = self.request_daemon(Msg.STORE_CREATE, oid, size, owner or self.address)
        if answer[0] != "ok":
            raise exc.ObjectStoreFullError(answer[1])
        offset = answer[1]
        if self._touched.covers(offset, offset + size) or not self._prefaulter.supported:
            # Pages already in our page table: one memcpy per buffer.
            write_object(self._arena_mv[offset: offset + size], ser.meta, ser.buffers, ser.is_error)
            self._touched.add(offset, offset + size)
        else:
            # Pages we never mapped: faulting them in one by one costs several
            # times the copy; pwritev fills them without faults (docs/store.md).
            # Map them in the background so the next put reusing them is a memcpy.
            pwrite_object(self._arena_fd, offset, ser.meta, ser.buffers, ser.is_error)
            self._prefaulter.request(offset, size)
        self.post(self._send_daemon, Msg.STORE_SEAL, oid)
        return ("s", offset, size)

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself instead")
        oid = ids.object_id(ids.new_task_id(), 0)
        ser = serialize(value)
        where = self.put_serialized(ser, object_id=oid)
        ref = ObjectRef(oid, self.address)
        self.post(self._io_put_done, oid, where, ser.contained)
        return ref

    def _io_put_done(self, oid: bytes, where: tuple, contained: list) -> None:
        e = Entry(True, self.address)
        if where[0] == "v":
            e.value = where[1]
        else:
            e.loc = (where[1], where[2])
            e.node = self.node_id
        e.contained = contained
        self._objects[oid] = e
        self._set_ready(oid, e)
        self._maybe_free(oid, e)

    # ------------------------------------------------------------------ submit

    def prepare_args(self, args: tuple, kwargs: dict) -> tuple[list, tuple]:
        """Turn call arguments into ("r", ref) / ("v", Serialized) items (user thread)."""
        items = []
        for a in args:
            items.append(self._prepare_arg(a))
        kw_names = tuple(kwargs)
        for v in kwargs.values():
            items.append(self._prepare_arg(v))
        return items, kw_names

    def _prepare_arg(self, value: Any) -> tuple:
        if isinstance(value, ObjectRef):
            return ("r", value)
        ser = serialize(value)
        if ser.size <= INLINE_THRESHOLD:
            return ("v", ser)
        # Large arguments go through the store once, like a put.
        oid = ids.object_id(ids.new_task_id(), 0)
        where = self.put_serialized(ser, object_id=oid)
        ref = ObjectRef(oid, self.address)
        self.post(self._io_put_done, oid, where, ser.contained)
        return ("r", ref)

    def submit(self, t: Task) -> list[ObjectRef]:
        t.return_ids = [ids.object_id(t.task_id, i + 1) for i in range(max(1, t.num_returns))]
        refs = [ObjectRef(oid, self.address) for oid in t.return_ids]
        self.post(self._io_submit, t)
        return refs

    def _io_submit(self, t: Task) -> None:
        if not self._stats_armed:
            self._arm_stats()
        self._tasks[t.task_id] = t
        owner = self.address
        for oid in t.return_ids:
            self._objects[oid] = Entry(True, owner)
        if t.actor_id is not None:
            self._actor_enqueue(t)
            return
        for item in t.args:
            if item[0] != "r":
                continue
            ref = item[1]
            e = self._objects.get(ref._id)
            if e is None:
                e = Entry(False, ref._owner)
                self._objects[ref._id] = e
            if e.state != READY:
                t.deps += 1
                e.dependents.append(t)
                if not e.owned:
                    self._request_value(ref._id, e)
        if t.deps == 0:
            self._task_ready(t)

    def _task_ready(self, t: Task) -> None:
        if t.cancelled or t.task_id not in self._tasks:
            return
        # An argument that is an error fails the task without running it.
        for item in t.args:
            if item[0] == "r":
                e = self._objects.get(item[1]._id)
                if e is not None and e.is_error:
                    self._complete_with(t, e)
                    return
        q = self._queues.get(t.shape)
        if q is None:
            q = self._queues[t.shape] = collections.deque()
        q.append(t)
        self._dispatch_shape(t.shape)

    def _complete_with(self, t: Task, src: Entry) -> None:
        self._tasks.pop(t.task_id, None)
        for oid in t.return_ids:
            e = self._objects.get(oid)
            if e is None:
                continue
            e.value, e.loc, e.is_error = src.value, src.loc, True
            if src.loc is not None:  # share the error value inline instead of the store slot
                e.loc = None
                e.value = serialize(exc.ObjectLostError("an argument of this task failed"), True)
            self._set_ready(oid, e)
            self._maybe_free(oid, e)
        t.args = []

    def _fail_task(self, t: Task, error: BaseException) -> None:
        """Complete a task with a system error (it never produced a value)."""
        self._tasks.pop(t.task_id, None)
        ser = serialize(error, True)
        for oid in t.return_ids:
            e = self._objects.get(oid)
            if e is None or e.state == READY:
                continue
            e.value, e.is_error = ser, True
            self._set_ready(oid, e)
            self._maybe_free(oid, e)
        t.args = []
        t.holds = []

    def _pipeline_depth(self, t: Task) -> int:
        mean = self._fn_time.get(t.fn_id)
        return MAX_PIPELINE if mean is not None and mean < SHORT_TASK_S else 1

    def _dispatch_shape(self, shape: tuple) -> None:
        q = self._queues.get(shape)
        if not q:
            return
        leases = self._leases.get(shape, ())
        for lease in leases:
            if not q:
                break
            if lease.blocked:
                continue
            depth = self._pipeline_depth(q[0])
            n = depth - len(lease.inflight)
            if n <= 0:
                continue
            batch = []
            while q and n > 0:
                t = q.popleft()
                if t.cancelled:
                    continue
                batch.append(t)
                n -= 1
            if batch:
                self._push(lease, batch)
        if q:
            want = min(len(q), MAX_LEASE_REQUESTS) - self._lease_reqs_out[shape]
            if want > 0:
                hints = {"locality": self._locality(q[0])}
            for _ in range(want):
                req_id = next(self._req_ids)
                self._lease_reqs[req_id] = (shape, self.daemon_addr, q[0].strategy)
                self._lease_reqs_out[shape] += 1
                self._send_daemon(Msg.REQUEST_LEASE, req_id, shape, q[0].strategy, hints)

    def _locality(self, t: Task) -> dict:
        """Bytes of the task's arguments held by each node's store."""
        where: dict[str, int] = {}
        for item in t.args:
            if item[0] == "r":
                e = self._objects.get(item[1]._id)
                if e is not None and e.loc is not None:
                    where[e.node] = where.get(e.node, 0) + e.loc[1]
        return where

    def _on_lease_spillback(self, sender, msg, frames) -> None:
        _, req_id, daemon_addr, node_id = msg
        rec = self._lease_reqs.get(req_id)
        if rec is None:
            return
        shape, _, strategy = rec
        self._lease_reqs[req_id] = (shape, daemon_addr, strategy)
        q = self._queues.get(shape)
        hints = {"spilled": True, "locality": self._locality(q[0]) if q else {}}
        self._ep.send(daemon_addr, [encode(Msg.REQUEST_LEASE, req_id, shape, strategy, hints)])

    def _on_node_state(self, sender, msg, frames) -> None:
        """A node died or left: what ran or waited there fails over."""
        _, node_id, state = msg
        reason = f"node {node_id} {'died' if state == 'dead' else 'left'}"
        for lease in list(self._lease_by_id.values()):
            if node_of(lease.worker_addr) == node_id:
                self._on_worker_died(sender, (Msg.WORKER_DIED, lease.lease_id, lease.worker_id, reason), [])
        for req_id, (shape, daemon, strategy) in list(self._lease_reqs.items()):
            if node_of(daemon) == node_id:
                self._lease_reqs[req_id] = (shape, self.daemon_addr, strategy)
                self._send_daemon(Msg.REQUEST_LEASE, req_id, shape, strategy, {})
        for a in self._actors.values():
            if a.addr and node_of(a.addr) == node_id:
                self._on_actor_state(sender, (Msg.ACTOR_STATE, a.actor_id, "DEAD", None, 0, reason), [])
        for peer in [p for p in self._ep.out if node_of(p) == node_id]:
            self._ep.forget(peer)

    def _arg_wire(self, item: tuple, frames: list) -> tuple:
        if item[0] == "v":
            ser = item[1]
            frames.extend(ser.buffers)
            return ("v", ser.meta, len(ser.buffers))
        ref = item[1]
        e = self._objects[ref._id]
        if e.loc is not None:
            return ("s", ref._id, e.loc[0], e.loc[1], e.owner, e.node)
        v = e.value
        frames.extend(v.buffers)
        return ("v", v.meta, len(v.buffers))

    def _push(self, lease: Lease, batch: list[Task]) -> None:
        frames: list = []
        specs = []
        sent = self._fn_sent[lease.worker_addr]
        for t in batch:
            fn_bytes = None
            if t.fn_id not in sent:
                sent.add(t.fn_id)
                fn_bytes = t.fn_bytes
            args = [self._arg_wire(item, frames) for item in t.args]
            specs.append((t.task_id, t.fn_id, fn_bytes, t.name, args, t.kw_names, t.num_returns, t.return_ids))
            t.lease = lease
            t.dispatched = True
            lease.inflight[t.task_id] = t
        self._ep.send(lease.worker_addr, [encode(Msg.PUSH_TASKS, lease.lease_id, lease.gpu_ids, specs), *frames])

    def _on_lease_granted(self, sender, msg, frames) -> None:
        _, req_id, lease_id, worker_addr, worker_id, gpu_ids = msg
        rec = self._lease_reqs.pop(req_id, None)
        if rec is None:
            self._ep.send(sender, [encode(Msg.RETURN_LEASE, lease_id)])
            return
        shape = rec[0]
        self._lease_reqs_out[shape] -= 1
        lease = Lease(lease_id, shape, worker_addr, worker_id, tuple(gpu_ids), sender)
        self._lease_by_id[lease_id] = lease
        self._leases.setdefault(shape, []).append(lease)
        if self._queues.get(shape):
            self._dispatch_shape(shape)
        else:
            self._lease_idle(lease)

    def _lease_idle(self, lease: Lease) -> None:
        if self._revoke_until > time.monotonic():
            self._return_lease(lease)
            return
        lease.idle_since = time.monotonic()
        self._call_later(LEASE_IDLE_S, self._maybe_return_lease, lease, lease.idle_since)

    def _maybe_return_lease(self, lease: Lease, since: float) -> None:
        if lease.idle_since == since and not lease.inflight and lease.lease_id in self._lease_by_id:
            self._return_lease(lease)

    def _return_lease(self, lease: Lease) -> None:
        self._lease_by_id.pop(lease.lease_id, None)
        leases = self._leases.get(lease.shape)
        if leases and lease in leases:
            leases.remove(lease)
        self._ep.send(lease.daemon, [encode(Msg.RETURN_LEASE, lease.lease_id)])

    def _on_lease_revoke(self, sender, msg, frames) -> None:
        # Others wait for resources: hand back idle leases now, and busy ones as
        # soon as they go idle during the next moment.
        self._revoke_until = time.monotonic() + 0.05
        for lease in list(self._lease_by_id.values()):
            if not lease.inflight:
                self._return_lease(lease)

    def _on_lease_infeasible(self, sender, msg, frames) -> None:
        _, req_id, shape, largest = msg
        if shape in self._warned_shapes:
            return
        self._warned_shapes.add(shape)
        names = sorted({t.name for t in self._queues.get(shape, ())})
        log.warning(
            "A task (%s) needs %s, but no node of this mesh has that much (the largest offers %s). "
            "It stays pending until a node that can run it joins; lower its resource request "
            "or add such a node.", ", ".join(names) or "?", dict(shape), largest)

    def _on_worker_died(self, sender, msg, frames) -> None:
        _, lease_id, worker_id, reason = msg
        lease = self._lease_by_id.pop(lease_id, None)
        if lease is None:
            return
        leases = self._leases.get(lease.shape)
        if leases and lease in leases:
            leases.remove(lease)
        self._fn_sent.pop(lease.worker_addr, None)
        self._ep.forget(lease.worker_addr)
        retry = []
        for t in lease.inflight.values():
            if t.cancelled:
                self._fail_task(t, exc.TaskCancelledError(task_id=t.task_id.hex()))
            elif t.retries_left != 0:
                t.retries_left -= 1
                t.lease = None
                t.dispatched = False
                retry.append(t)
            else:
                self._fail_task(t, exc.WorkerCrashedError(
                    f"The worker running {t.name} died ({reason}) and max_retries is used up."))
        lease.inflight.clear()
        if retry:
            q = self._queues.setdefault(lease.shape, collections.deque())
            q.extendleft(reversed(retry))
        self._dispatch_shape(lease.shape)

    def _on_tasks_bounced(self, sender, msg, frames) -> None:
        """A worker blocked in get() hands back tasks it has not started."""
        back: dict[tuple, list] = {}
        for tid in msg[1]:
            t = self._tasks.get(tid)
            if t is None or t.lease is None:
                continue
            t.lease.inflight.pop(tid, None)
            t.lease.blocked = True
            t.lease = None
            t.dispatched = False
            back.setdefault(t.shape, []).append(t)
        for shape, ts in back.items():
            q = self._queues.setdefault(shape, collections.deque())
            q.extendleft(reversed(ts))
            self._dispatch_shape(shape)

    def _on_tasks_done(self, sender, msg, frames) -> None:
        pos = 0
        touched = set()
        for task_id, returns, duration, status in msg[1]:
            t = self._tasks.pop(task_id, None)
            if t is None:  # cancelled or already failed: only frames to skip
                for r in returns:
                    if r[0] == "v":
                        pos += r[2]
                if any(r[-1] for r in returns):
                    self._ep.send(sender, [encode(Msg.RELEASE_HANDOFF, task_id)])
                continue
            lease = t.lease
            if lease is not None:
                lease.inflight.pop(task_id, None)
                lease.blocked = False
                touched.add(lease)
                mean = self._fn_time.get(t.fn_id)
                self._fn_time[t.fn_id] = duration if mean is None else 0.8 * mean + 0.2 * duration
            elif t.actor_id is not None:
                a = self._actors.get(t.actor_id)
                if a is not None:
                    a.inflight.pop(task_id, None)
                    if a.release_when_idle and not a.inflight and not a.queue:
                        a.release_when_idle = False
                        self._ep.send(a.daemon, [encode(Msg.KILL_ACTOR, a.actor_id, True)])
            if t.retry_exceptions and t.retries_left != 0 and returns and returns[0][3]:
                status = self._retryable(t, returns[0], frames[pos:])
            if status == "retry" and t.retries_left != 0:
                t.retries_left -= 1
                for r in returns:
                    if r[0] == "v":
                        pos += r[2]
                self._tasks[task_id] = t
                t.lease = None
                t.dispatched = False
                if t.actor_id is not None:
                    self._actor_enqueue(t, front=True)
                else:
                    self._queues.setdefault(t.shape, collections.deque()).appendleft(t)
                    self._dispatch_shape(t.shape)
                continue
            handoff = False
            for oid, r in zip(t.return_ids, returns):
                e = self._objects.get(oid)
                if e is None:  # the owner dropped every ref already; still account frames
                    if r[0] == "v":
                        pos += r[2]
                    if r[0] == "s":
                        self._send_daemon(Msg.STORE_FREE, (oid,), r[4])
                    continue
                pos += self._fill(e, r, frames[pos:])
                contained = r[-1]
                if contained:
                    handoff = True
                    e.contained = [ObjectRef(cid, cowner) for cid, cowner in contained]
                self._set_ready(oid, e)
                self._maybe_free(oid, e)
            if handoff:
                self._ep.send(sender, [encode(Msg.RELEASE_HANDOFF, task_id)])
            t.args = []
            t.holds = []
        for lease in touched:
            if lease.lease_id not in self._lease_by_id:
                continue
            if self._queues.get(lease.shape):
                self._dispatch_shape(lease.shape)
            if not lease.inflight:
                self._lease_idle(lease)

    def _retryable(self, t: Task, r: tuple, frames: list) -> str:
        """Does this user exception qualify for a retry under retry_exceptions?"""
        if r[0] != "v":
            return "ok"
        try:
            err = deserialize(r[1], frames[: r[2]])
        except Exception:
            return "ok"
        cause = getattr(err, "cause", None)
        if not isinstance(err, exc.TaskError) or cause is None:
            return "ok"
        allowed = t.retry_exceptions
        if allowed is True or (isinstance(allowed, (list, tuple)) and isinstance(cause, tuple(allowed))):
            return "retry"
        return "ok"

    # ------------------------------------------------------------------ cancel

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        self.post(self._io_cancel, ids.task_of(ref._id), force)

    def _io_cancel(self, task_id: bytes, force: bool) -> None:
        t = self._tasks.get(task_id)
        if t is None or t.cancelled:
            return
        t.cancelled = True
        if t.actor_id is not None:
            a = self._actors.get(t.actor_id)
            if a is not None and t in a.queue:
                a.queue.remove(t)
                self._fail_task(t, exc.TaskCancelledError(task_id=task_id.hex()))
            elif a is not None and a.addr:
                self._ep.send(a.addr, [encode(Msg.CANCEL_TASK, task_id, False)])
            return
        if not t.dispatched:
            q = self._queues.get(t.shape)
            if q is not None and t in q:
                q.remove(t)
            self._fail_task(t, exc.TaskCancelledError(task_id=task_id.hex()))
            return
        lease = t.lease
        if force:
            self._ep.send(lease.daemon, [encode(Msg.KILL_WORKER, lease.worker_id)])
        else:
            self._ep.send(lease.worker_addr, [encode(Msg.CANCEL_TASK, task_id, False)])

    # ------------------------------------------------------------------ actors

    def _actor_client(self, actor_id: bytes, daemon: str | None = None) -> ActorClient:
        a = self._actors.get(actor_id)
        if a is None:
            a = self._actors[actor_id] = ActorClient(actor_id)
            a.daemon = daemon or self.daemon_addr
        if not a.subscribed:
            a.subscribed = True
            self._ep.send(a.daemon, [encode(Msg.SUBSCRIBE_ACTOR, actor_id)])
        return a

    def actor_daemon(self, actor_id: bytes, hint: str | None) -> str:
        a = self._actors.get(actor_id)
        return a.daemon if a is not None else (hint or self.daemon_addr)

    def _actor_enqueue(self, t: Task, front: bool = False) -> None:
        a = self._actor_client(t.actor_id, t.strategy)
        if a.state == "DEAD":
            self._fail_task(t, exc.ActorDiedError(a.reason or "The actor is dead.", t.actor_id.hex()))
            return
        if a.state == "ALIVE" and not a.queue:
            self._actor_send(a, t)
        elif front:
            a.queue.appendleft(t)
        else:
            a.queue.append(t)

    def _actor_send(self, a: ActorClient, t: Task) -> None:
        frames: list = []
        args = []
        for item in t.args:
            if item[0] == "v":
                ser = item[1]
                frames.extend(ser.buffers)
                args.append(("v", ser.meta, len(ser.buffers)))
            else:
                ref = item[1]
                args.append(("r", ref._id, ref._owner))
        call = (t.task_id, t.method, args, t.kw_names, t.num_returns, t.return_ids)
        t.dispatched = True
        a.inflight[t.task_id] = t
        self._ep.send(a.addr, [encode(Msg.ACTOR_CALL, call), *frames])

    def _on_actor_state(self, sender, msg, frames) -> None:
        _, actor_id, state, addr, restarts, reason = msg
        a = self._actors.get(actor_id)
        if a is None:
            a = self._actors[actor_id] = ActorClient(actor_id)
            a.subscribed = True
        if state == "PENDING" and reason:
            log.warning("%s", reason)
        old_addr = a.addr
        a.state, a.reason = state, reason or a.reason
        if state in ("RESTARTING", "DEAD") or (state == "ALIVE" and old_addr and addr != old_addr):
            if old_addr:
                self._ep.forget(old_addr)
            retry = []
            for t in a.inflight.values():
                if t.retries_left != 0 and state != "DEAD":
                    t.retries_left -= 1
                    retry.append(t)
                else:
                    self._fail_task(t, exc.ActorDiedError(
                        f"The actor died while running {t.name}: {reason or state}", actor_id.hex()))
            a.inflight.clear()
            a.queue.extendleft(reversed(retry))
        if state == "ALIVE":
            a.addr = addr
            while a.queue:
                self._actor_send(a, a.queue.popleft())
        elif state == "DEAD":
            while a.queue:
                t = a.queue.popleft()
                self._fail_task(t, exc.ActorDiedError(
                    f"The actor is dead: {reason or 'killed'}", actor_id.hex()))

    def request_actor_create(self, actor_id: bytes, spec: dict, frames: list) -> tuple:
        """Create an actor through our daemon, or the peer it sends us to."""
        daemon = self.daemon_addr
        for _ in range(3):
            req_id = next(self._req_ids)
            spec["req_id"] = req_id
            w = _Waiter(1)
            self._replies[req_id] = w
            self.post(self._io_create_actor, actor_id, spec, frames, daemon)
            if not w.event.wait(60):
                raise exc.MeshError("the node daemon did not answer the actor creation within 60 s")
            if w.value[0] != "spill":
                return w.value
            daemon = w.value[1]
            spec["spilled"] = True
        return w.value

    def _io_create_actor(self, actor_id: bytes, spec: dict, frames: list, daemon: str) -> None:
        a = self._actors.get(actor_id)
        if a is None:
            a = self._actors[actor_id] = ActorClient(actor_id)
        a.subscribed = True  # the daemon subscribes the creator
        a.daemon = daemon
        self._ep.send(daemon, [encode(Msg.CREATE_ACTOR, actor_id, spec), *frames])

    def kill_actor(self, actor_id: bytes, no_restart: bool, hint: str | None) -> None:
        """Kill an actor; with no_restart, calls made after this fail at once here."""
        self.post(self._io_kill_actor, actor_id, no_restart, hint)

    def _io_kill_actor(self, actor_id: bytes, no_restart: bool, hint: str | None) -> None:
        self._ep.send(self.actor_daemon(actor_id, hint), [encode(Msg.KILL_ACTOR, actor_id, no_restart)])
        a = self._actors.get(actor_id)
        if no_restart and a is not None and a.state != "DEAD":
            self._on_actor_state(self.daemon_addr, (Msg.ACTOR_STATE, actor_id, "DEAD", None, 0,
                                                    "it was killed with kill()"), [])

    def release_actor(self, actor_id: bytes) -> None:
        """The creator's last handle is gone: stop the actor once its calls finish."""
        self.post(self._io_release_actor, actor_id)

    def _io_release_actor(self, actor_id: bytes) -> None:
        a = self._actors.get(actor_id)
        if a is not None and (a.inflight or a.queue):
            a.release_when_idle = True
            return
        self._ep.send(a.daemon if a is not None else self.daemon_addr, [encode(Msg.KILL_ACTOR, actor_id, True)])

    # ------------------------------------------------------------ worker side

    def _on_push_tasks(self, sender, msg, frames) -> None:
        _, lease_id, gpu_ids, specs = msg
        ex = self.executor
        if ex is None:
            return
        if not self._stats_armed:
            self._arm_stats()
        if self._blocked_depth and ex.bounce_enabled:
            self._ep.send(sender, [encode(Msg.TASKS_BOUNCED, [s[0] for s in specs])])
            return
        pos = 0
        for spec in specs:
            n = sum(a[2] for a in spec[4] if a[0] == "v")
            ex.queue.put(("task", sender, gpu_ids, spec, frames[pos: pos + n]))
            pos += n

    def _on_actor_call(self, sender, msg, frames) -> None:
        if not self._stats_armed:
            self._arm_stats()
        if self.executor is not None:
            self.executor.submit_call(sender, msg[1], frames)

    def _on_cancel_task(self, sender, msg, frames) -> None:
        if self.executor is not None:
            self.executor.cancel(msg[1])

    def _on_become_actor(self, sender, msg, frames) -> None:
        if self.executor is not None:
            self.executor.queue.put(("actor", msg[1], msg[2], msg[3], frames))

    def _on_shutdown(self, sender, msg, frames) -> None:
        if self.executor is not None:
            self.executor.queue.put(("exit",))

    def send_done(self, owner: str, result: tuple, frames: list, handoff: list | None) -> None:
        """Queue a task result for its owner (executor thread); sent in batches."""
        self.post(self._io_done, owner, result, frames, handoff)

    def _io_done(self, owner, result, frames, handoff) -> None:
        if handoff:
            self._handoff[result[0]] = handoff
        batch = self._done_out.get(owner)
        if batch is None:
            self._done_out[owner] = [(result, frames)]
        else:
            batch.append((result, frames))

    def _flush_done(self) -> None:
        output = self.output
        if output is not None and output.ready and time.monotonic() - self._out_last >= OUTPUT_FLUSH_S:
            self._flush_output()  # what the tasks printed arrives before their results
        if not self._stats_armed:
            self._arm_stats()
        out, self._done_out = self._done_out, {}
        for owner, items in out.items():
            results = [r for r, _ in items]
            frames = [f for _, fs in items for f in fs]
            self._ep.send(owner, [encode(Msg.TASKS_DONE, results), *frames])

    def bounce(self, owner_tasks: dict[str, list[bytes]]) -> None:
        for owner, tids in owner_tasks.items():
            self.post(self._send, owner, [encode(Msg.TASKS_BOUNCED, tids)])

    # ---------------------------------------------------------- observability

    def _arm_stats(self) -> None:
        self._stats_armed = True
        self._call_later(STATS_PERIOD_S, self._send_stats)

    def task_stats(self) -> dict:
        """Tasks this process runs (a worker) and holds queued (any owner)."""
        ex = self.executor
        queued = sum(len(q) for q in self._queues.values()) + sum(len(a.queue) for a in self._actors.values())
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
            self._arm_stats()  # look once more: the counters are still moving

    def _arm_output(self) -> None:
        """The first line of a batch is waiting: ship it within OUTPUT_FLUSH_S."""
        delay = max(0.0, self._out_last + OUTPUT_FLUSH_S - time.monotonic())
        self._call_later(delay, self._flush_output)

    def _flush_output(self) -> None:
        if self.output is None:
            return
        self._out_last = time.monotonic()
        for sink, lines in self.output.take().items():
            if sink == self.address:
                self._on_worker_output(sink, (Msg.WORKER_OUTPUT, lines), [])
            else:
                self._ep.send(sink, [encode(Msg.WORKER_OUTPUT, lines)])

    def _on_worker_output(self, sender, msg, frames) -> None:
        lines = msg[1]
        if not isinstance(lines, list):
            return
        if self.kind == "driver":
            if self.log_to_driver:
                print_output(lines)
            return
        sink = self.executor.log_sink() if self.executor is not None else None
        if sink and sink != self.address:
            self._ep.send(sink, [encode(Msg.WORKER_OUTPUT, lines)])

    def _on_timeline(self, sender, msg, frames) -> None:
        ex = self.executor
        lane = ex.timeline_lane() if ex is not None else {"node_id": self.node_id, "pid": self.pid,
                                                          "worker_id": self.worker_id, "events": []}
        self._ep.send(sender, [encode(Msg.REPLY, msg[1], lane)])

    # ------------------------------------------------------------------- info

    def node_info(self, what: str = "node") -> Any:
        return self.request_daemon(Msg.NODE_INFO, what)

