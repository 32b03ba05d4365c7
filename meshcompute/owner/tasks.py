"""The owner's tasks: dependencies, queues, leases, pushes, results and retries.

Ray's owner model: to run tasks the owner leases a worker from a daemon for one
*scheduling key* (resource shape, strategy, preferred node), pushes tasks
straight to it (several in flight when they are known to be short, one waiting
behind another when known to run under 15 ms), and returns the lease when its
queue runs dry.  The daemon is off the per-task path.

Invariants (all state lives on the I/O thread):

* a task is in ``tasks`` from submission until its results are set or it failed;
* a task is in exactly one of: waiting for arguments (``deps > 0``), a queue,
  a lease's ``inflight``, an actor's queue or inflight (actors.py);
* the policy (scheduling keys, which task goes onto which lease, how many
  leases to ask for) is sched/'s; this module carries it out;
* the owner never keeps an idle lease at a daemon where it waits for another
  one itself (the daemon revokes idle leases only for other owners);
* outstanding lease requests of a key never exceed what its queue still needs
  (sched.pipeline.lease_requests_delta): surplus requests are withdrawn with
  CANCEL_LEASE_REQUEST as soon as the queue shrinks, so no stale grant arrives
  for work that is already done.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from typing import Any

from .. import exceptions as exc
from ..sched.keys import lease_target, scheduling_key
from ..sched.pipeline import MAX_LEASE_REQUESTS, RunTimes, depth_limit, lease_requests_delta, plan_pushes
from ..wire import ids
from ..wire.messages import Msg
from ..wire.serialization import DeserializeContext, deserialize, serialize
from ..wire.transport import node_of
from .handoff import release_handoff
from .io import OwnerIo
from .lineage import Lineage
from .object_ref import rebuild_ref
from .objects import READY, Entry, ObjectTable, fill
from .reconstruct import rebuild
from .records import PIP_ENV_VAR, Lease, LeaseRequest, Task

log = logging.getLogger("meshcompute")

LEASE_IDLE_S = 0.5
"""An idle lease is kept this long (s), so a loop of ``get(f.remote())`` with work
between the calls reuses its worker without asking the daemon each time; it is
returned at once when the daemon says others wait for the CPU (LEASE_REVOKE)."""


MAX_PREFETCH = 64
"""Arguments of one lease request the granting daemon pulls before it grants (the rest
are pulled by the worker when it reads them)."""


class TaskQueues:
    """Owned tasks from submission to results (actor calls hand off to ActorCalls)."""

    def __init__(self, io: OwnerIo, objects: ObjectTable) -> None:
        self.io = io
        self.objects = objects
        self.actors: Any = None  # ActorCalls, set by the runtime
        self.tasks: dict[bytes, Task] = {}
        self.queues: dict[tuple, collections.deque[Task]] = {}
        self.leases: dict[tuple, list[Lease]] = {}
        self.lease_by_id: dict[bytes, Lease] = {}
        self.requests: dict[int, LeaseRequest] = {}
        self.requests_out: dict[tuple, int] = collections.defaultdict(int)
        self.warned_shapes: set[tuple] = set()
        self.fn_sent: dict[str, set[bytes]] = collections.defaultdict(set)
        self.run_times = RunTimes()
        self._plain_keys: dict[tuple, tuple] = {}  # (shape, strategy) -> key, for tasks with no stored args
        self.revoke_until = 0.0
        self.stale_grants = 0  # grants that crossed our withdrawal (returned at once); tests read it
        self.request_delay = 0.0  # s before new lease requests go out (a worker's children: runtime.py)
        self.job_id = ""  # the job pushed tasks belong to: a driver's own, or that of the task a worker runs
        self._deferred: set[tuple] = set()
        self.nodes: dict[str, str] = {}  # alive peer node id -> its daemon's address (NODE_STATE)
        self.abandoned: dict[str, list[tuple]] = {}  # node taken for dead -> what to hand back if it returns
        self.lineage = Lineage()
        self.lineage.owned_by = io.address

    # ----------------------------------------------------------- submission

    def submit(self, t: Task) -> None:
        self.tasks[t.task_id] = t
        owner = self.io.address
        for oid in t.return_ids:
            self.objects.entries[oid] = Entry(True, owner)
        if t.actor_id is None:
            self.lineage.submitted(t)
        self._count_deps(t)
        if t.actor_id is not None:
            self.actors.enqueue(t)  # sent once its arguments are ready, in submission order
        elif t.deps == 0:
            self.task_ready(t)

    def _count_deps(self, t: Task) -> None:
        for item in t.args:
            if item[0] != "r":
                continue
            ref = item[1]
            e = self.objects.entry(ref._id, ref._owner)
            if e.state != READY:
                t.deps += 1
                e.add_dependent(t)
                if not e.owned:
                    self.objects.request_value(ref._id, e)

    def _requeue(self, key: tuple, ts: list[Task]) -> None:
        """Put tasks back at the head of their queue, except those with an argument being
        rebuilt meanwhile (its node died): they wait for it again."""
        entries, ready = self.objects.entries, []
        for t in ts:
            if all(item[0] != "r" or entries[item[1]._id].state == READY for item in t.args):
                ready.append(t)
            else:
                self._count_deps(t)
        self.queues.setdefault(key, collections.deque()).extendleft(reversed(ready))

    def dependency_ready(self, t: Task) -> None:
        """The last pending argument of ``t`` became ready."""
        if t.actor_id is not None:
            self.actors.dependency_ready(t)
        else:
            self.task_ready(t)

    def failed_arg(self, t: Task) -> bool:
        """Complete ``t`` with the error of its first argument that is one; True if it had one
        (an argument that is an error fails the task without running it)."""
        for item in t.args:
            if item[0] == "r":
                e = self.objects.entries.get(item[1]._id)
                if e is not None and e.is_error:
                    self.complete_with_error_of(t, e)
                    return True
        return False

    def task_ready(self, t: Task) -> None:
        if t.cancelled or t.task_id not in self.tasks or self.failed_arg(t):
            return
        locality = self.locality(t)
        if t.pip_env is not None:  # only its environment's workers run it: leases of its own
            t.key = scheduling_key(t.shape, t.strategy, locality) + (t.pip_env[0],)
        elif locality:
            t.key = scheduling_key(t.shape, t.strategy, locality)
        else:  # most tasks: the key of a (shape, strategy) pair, computed once
            t.key = self._plain_keys.get((t.shape, t.strategy))
            if t.key is None:
                t.key = self._plain_keys[(t.shape, t.strategy)] = scheduling_key(t.shape, t.strategy, {})
        self.queues.setdefault(t.key, collections.deque()).append(t)
        self.dispatch(t.key)

    def complete_with_error_of(self, t: Task, src: Entry) -> None:
        self.tasks.pop(t.task_id, None)
        for oid in t.return_ids:
            e = self.objects.entries.get(oid)
            if e is None:
                continue
            e.value, e.loc, e.is_error = src.value, src.loc, True
            if src.loc is not None:  # share the error value inline instead of the store slot
                e.loc = None
                e.value = serialize(exc.ObjectLostError("an argument of this task failed"), True)
            self.objects.resolve(oid, e)
        t.args = []

    def fail(self, t: Task, error: BaseException) -> None:
        """Complete a task with a system error (it never produced a value)."""
        self.tasks.pop(t.task_id, None)
        self.objects.fail(t.return_ids, error)
        t.args = []
        t.holds = []

    # ----------------------------------------------------------- dispatch

    def dispatch(self, key: tuple) -> None:
        """Push queued tasks of ``key`` to its leases (sched.pipeline.plan_pushes decides
        which, so nothing waits behind a long task); size its lease requests to what is left."""
        q = self.queues.get(key)
        while q and q[0].cancelled:
            q.popleft()
        leases = self.leases.get(key, ())
        if q and leases:
            # Only the head of the queue can go now: at most the room the leases have (in a
            # burst, usually none: this runs for every task submitted, so it stays cheap).
            room = 0
            for ls in leases:
                free = depth_limit(ls.depth, ls.blocked) - len(ls.inflight)
                if free > 0:
                    room += free
            if room:
                slots = [(len(ls.inflight), depth_limit(ls.depth, ls.blocked)) for ls in leases]
                depth = self.run_times.depth
                plan = plan_pushes([depth(t.fn_id) for t in itertools.islice(q, room)], slots)
                batches = [(leases[i], [q.popleft() for _ in range(n)]) for i, n in plan]
                for lease, batch in batches:
                    self._push(lease, batch)
        self._size_requests(key, q, leases)

    def _size_requests(self, key: tuple, q: collections.deque | None, leases=(), defer: bool = True) -> None:
        queued = len(q) if q else 0
        if self.requests_out[key] >= MAX_LEASE_REQUESTS and queued >= MAX_LEASE_REQUESTS + len(leases):
            return  # a burst: as many requests out as allowed, and the queue needs them all
        idle = sum(1 for ls in leases if not ls.inflight and not ls.blocked)
        want = lease_requests_delta(queued, self.requests_out[key], idle)
        if want > 0 and self.request_delay and defer:
            if key not in self._deferred:
                self._deferred.add(key)
                self.io.call_later(self.request_delay, self._deferred_requests, key)
            return
        self._send_requests(key, q, want)

    def _deferred_requests(self, key: tuple) -> None:
        self._deferred.discard(key)
        self._size_requests(key, self.queues.get(key), self.leases.get(key, ()), defer=False)

    def _send_requests(self, key: tuple, q: collections.deque | None, want: int) -> None:
        if want > 0:
            head = q[0]
            daemon = self.daemon_for(key)
            # A request sent past our own daemon counts as placed: that daemon grants or waits.
            hints = {"locality": self.locality(head), "spilled": daemon != self.io.daemon_addr,
                     "args": self.stored_args(head), "pip": head.pip_env}
            for _ in range(want):
                req_id = self.io.next_req_id()
                self.requests[req_id] = LeaseRequest(key, daemon, head.shape, head.strategy)
                self.requests_out[key] += 1
                self._send(daemon, Msg.REQUEST_LEASE, req_id, head.shape, head.strategy, hints)
            for lease in [ls for ls in self.lease_by_id.values() if not ls.inflight and ls.key != key
                          and ls.daemon == daemon]:
                self.return_lease(lease)  # an idle lease of ours must not hold up our own request
        elif want < 0:
            self.withdraw(key, -want)

    def daemon_for(self, key: tuple) -> str:
        """The daemon to ask for a lease of ``key``: the owner chooses from what it knows
        (sched.keys.lease_target), so affinity and locality cost no spillback."""
        node = lease_target(key, self.io.node_id, self.nodes)
        return self.nodes.get(node, self.io.daemon_addr)

    def on_node_state(self, node_id: str, state: str, address: str | None) -> None:
        if state == "alive" and address:
            self.nodes[node_id] = address
        else:
            self.nodes.pop(node_id, None)

    def withdraw(self, key: tuple, n: int) -> None:
        """Cancel ``n`` of the key's outstanding lease requests, newest first."""
        for req_id in sorted((r for r, req in self.requests.items() if req.key == key), reverse=True)[:n]:
            req = self.requests.pop(req_id)
            self.requests_out[key] -= 1
            self._send(req.daemon, Msg.CANCEL_LEASE_REQUEST, req_id)

    def _stored(self, t: Task):
        """``(object id, size, node)`` of each of the task's arguments held in a node's store."""
        for item in t.args:
            if item[0] == "r":
                e = self.objects.entries.get(item[1]._id)
                if e is not None and e.loc is not None and e.node:
                    yield item[1]._id, e.loc[1], e.node

    def locality(self, t: Task) -> dict:
        """Bytes of the task's arguments held by each node's store."""
        where: dict[str, int] = {}
        if t.args:
            for _, size, node in self._stored(t):
                where[node] = where.get(node, 0) + size
        return where

    def stored_args(self, t: Task) -> list[tuple[bytes, int, str]]:
        """The stored arguments (``_stored``) named in a lease request: the daemon that grants
        it pulls those it lacks first, so the task never waits for them."""
        return list(itertools.islice(self._stored(t), MAX_PREFETCH))

    def _send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        self.io.send(peer, msg_type, *fields, frames=frames)

    def arg_wire(self, item: tuple, frames: list) -> tuple:
        if item[0] == "v":
            ser = item[1]
            frames.extend(ser.buffers)
            return ("v", ser.meta, len(ser.buffers))
        ref = item[1]
        e = self.objects.entries[ref._id]
        if e.loc is not None:
            return ("s", ref._id, e.loc[1], e.owner, e.node)  # the reader's pin says where it is now
        v = e.value
        frames.extend(v.buffers)
        return ("v", v.meta, len(v.buffers))

    def spec_of(self, t: Task, fn_bytes: bytes | None, frames: list) -> tuple:
        args = [self.arg_wire(item, frames) for item in t.args]
        return (t.task_id, t.fn_id, fn_bytes, t.name, args, t.kw_names, t.num_returns, t.return_ids)

    def _push(self, lease: Lease, batch: list[Task]) -> None:
        frames: list = []
        specs = []
        sent = self.fn_sent[lease.worker_addr]
        if not lease.inflight:
            lease.depth = self.run_times.depth(batch[0].fn_id)
        for t in batch:
            fn_bytes = None
            if t.fn_id not in sent:
                sent.add(t.fn_id)
                fn_bytes = t.fn_bytes
            specs.append(self.spec_of(t, fn_bytes, frames))
            t.lease = lease
            t.dispatched = True
            lease.inflight[t.task_id] = t
        self._send(lease.worker_addr, Msg.PUSH_TASKS, lease.lease_id, lease.gpu_ids, specs, self.job_id,
                   lease.key[0], frames=frames)

    def steal(self, oids: list[bytes]) -> list:
        """Take our own queued children of these objects to run inline (a blocked parent's help)."""
        out, keys = [], set()
        for oid in oids:
            t = self.tasks.get(ids.task_of(oid))
            if (t is None or t.dispatched or t.deps or t.actor_id is not None or t.cancelled
                    or type(t.num_returns) is not int or any(k != "CPU" or v > 1 for k, v in t.shape)
                    or (t.pip_env[0] if t.pip_env else "") != os.environ.get(PIP_ENV_VAR, "")):
                continue
            q = self.queues.get(t.key)
            if not q or t not in q:
                continue
            q.remove(t)
            keys.add(t.key)
            frames: list = []
            t.dispatched = True
            out.append((self.spec_of(t, t.fn_bytes, frames), frames, t.shape))
        for key in keys:
            self._size_requests(key, self.queues.get(key), self.leases.get(key, ()))  # not needed now
        return out

    # ----------------------------------------------------------- leases

    def on_lease_granted(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, lease_id, worker_addr, worker_id, gpu_ids = msg
        req = self.requests.pop(req_id, None)
        if req is None:  # withdrawn meanwhile: the grant crossed our cancel
            self.stale_grants += 1
            self._send(sender, Msg.RETURN_LEASE, lease_id)
            return
        self.requests_out[req.key] -= 1
        lease = Lease(lease_id, req.key, worker_addr, worker_id, tuple(gpu_ids), sender)
        self.lease_by_id[lease_id] = lease
        self.leases.setdefault(req.key, []).append(lease)
        if self.queues.get(req.key):
            self.dispatch(req.key)
        else:
            self.lease_idle(lease)

    def lease_idle(self, lease: Lease) -> None:
        if lease not in self.leases.get(lease.key, ()):  # its node drains (draining.py): back now
            self.return_lease(lease)
            return
        if self.revoke_until > self.io.now() or any(r.daemon == lease.daemon for r in self.requests.values()):
            # We wait for another lease there ourselves: this worker is what it needs.
            self.return_lease(lease)
            return
        lease.idle_since = self.io.now()
        self.io.call_later(LEASE_IDLE_S, self._maybe_return_lease, lease, lease.idle_since)

    def _maybe_return_lease(self, lease: Lease, since: float) -> None:
        if lease.idle_since == since and not lease.inflight and lease.lease_id in self.lease_by_id:
            self.return_lease(lease)

    def return_lease(self, lease: Lease) -> None:
        self._drop_lease(lease)
        self._send(lease.daemon, Msg.RETURN_LEASE, lease.lease_id)

    def _drop_lease(self, lease: Lease) -> None:
        self.lease_by_id.pop(lease.lease_id, None)
        leases = self.leases.get(lease.key)
        if leases and lease in leases:
            leases.remove(lease)

    def return_all(self) -> None:
        for lease in list(self.lease_by_id.values()):
            self.return_lease(lease)

    def on_lease_revoke(self, sender: str, msg: tuple, frames: list) -> None:
        # Others wait for resources: hand back idle leases now, and busy ones as
        # soon as they go idle during the next moment.
        self.revoke_until = self.io.now() + 0.05
        for lease in list(self.lease_by_id.values()):
            if not lease.inflight:
                self.return_lease(lease)

    def on_lease_spillback(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, daemon_addr, node_id = msg
        req = self.requests.get(req_id)
        if req is None:
            return
        req.daemon = daemon_addr
        q = self.queues.get(req.key)
        # Sent back to our own daemon (a peer had no room after all): it waits and is placed there.
        hints = {"spilled": daemon_addr != self.io.daemon_addr, "locality": self.locality(q[0]) if q else {},
                 "pip": q[0].pip_env if q else None}
        self._send(daemon_addr, Msg.REQUEST_LEASE, req_id, req.shape, req.strategy, hints)

    def on_lease_infeasible(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, shape, largest = msg
        if shape in self.warned_shapes:
            return
        self.warned_shapes.add(shape)
        names = sorted({t.name for q in self.queues.values() for t in q if t.shape == shape})
        log.warning(
            "A task (%s) needs %s, but no node of this mesh has that much (the largest offers %s). "
            "It stays pending until a node that can run it joins; lower its resource request "
            "or add such a node.", ", ".join(names) or "?", dict(shape), largest)

    def on_worker_died(self, sender: str, msg: tuple, frames: list) -> None:
        _, lease_id, worker_id, reason = msg
        lease = self.lease_by_id.get(lease_id)
        if lease is None:
            return
        self._drop_lease(lease)
        self.fn_sent.pop(lease.worker_addr, None)
        self.io.forget(lease.worker_addr)
        retry = []
        for t in lease.inflight.values():
            if t.cancelled:
                self.fail(t, exc.TaskCancelledError(task_id=t.task_id.hex()))
            elif t.retries_left != 0:
                t.retries_left -= 1
                t.lease = None
                t.dispatched = False
                retry.append(t)
            else:
                self.fail(t, exc.WorkerCrashedError(
                    f"The worker running {t.name} died ({reason}) and max_retries is used up."))
        lease.inflight.clear()
        if retry:
            self._requeue(lease.key, retry)
        self.dispatch(lease.key)

    def on_node_gone(self, node_id: str, reason: str) -> None:
        """What ran or waited on a dead node fails over.  Its leases are remembered: if the
        node was only unreachable, they go back when it returns (node_back)."""
        for lease in list(self.lease_by_id.values()):
            if node_of(lease.worker_addr) == node_id:
                # A busy worker still runs tasks that now run elsewhere: it is stopped.
                self.abandoned.setdefault(node_id, []).append(
                    (lease.daemon, Msg.KILL_WORKER, lease.worker_id) if lease.inflight
                    else (lease.daemon, Msg.RETURN_LEASE, lease.lease_id))
                self.on_worker_died(self.io.daemon_addr, (Msg.WORKER_DIED, lease.lease_id, lease.worker_id,
                                                          reason), [])
        for req_id, req in list(self.requests.items()):
            if node_of(req.daemon) == node_id:
                req.daemon = self.io.daemon_addr
                self._send(self.io.daemon_addr, Msg.REQUEST_LEASE, req_id, req.shape, req.strategy, {})
        # Our results stored there are gone: run their tasks again (lineage).
        # (Were they only unreachable, the rebuilt copies replace them: nothing reads the old ones.)
        rebuild(self, [oid for oid, e in self.objects.entries.items()
                       if e.owned and e.state == READY and e.loc is not None and e.node == node_id])

    def node_back(self, node_id: str) -> None:
        """A node we took for dead is alive: hand back the leases we dropped there."""
        for daemon, msg_type, field in self.abandoned.pop(node_id, ()):
            self._send(daemon, msg_type, field)

    def on_tasks_bounced(self, sender: str, msg: tuple, frames: list) -> None:
        """A worker blocked in get() hands back tasks it has not started."""
        back: dict[tuple, list] = {}
        for tid in msg[1]:
            t = self.tasks.get(tid)
            if t is None or t.lease is None:
                continue
            t.lease.inflight.pop(tid, None)
            t.lease.blocked = True
            t.lease = None
            t.dispatched = False
            back.setdefault(t.key, []).append(t)
        for key, ts in back.items():
            self._requeue(key, ts)
            self.dispatch(key)

    # ----------------------------------------------------------- results

    def on_tasks_done(self, sender: str, msg: tuple, frames: list) -> None:
        pos = 0
        touched = set()
        for task_id, returns, duration in msg[1]:
            t = self.tasks.pop(task_id, None)
            if t is None:  # cancelled or already failed: only frames to skip
                for r in returns:
                    if r[0] == "v":
                        pos += r[2]
                if any(r[-1] for r in returns) and sender != self.io.address:
                    self._send(sender, Msg.RELEASE_HANDOFF, task_id)
                continue
            lease = t.lease
            if lease is not None:
                lease.inflight.pop(task_id, None)
                lease.blocked = False
                touched.add(lease)
                self.run_times.record(t.fn_id, duration)
            elif t.actor_id is not None:
                self.actors.call_done(t)
            if (t.retry_exceptions and t.retries_left != 0 and returns and returns[0][3]
                    and self._retryable(t, returns[0], frames[pos:])):
                t.retries_left -= 1
                for r in returns:
                    if r[0] == "v":
                        pos += r[2]
                self.tasks[task_id] = t
                t.lease = None
                t.dispatched = False
                if t.actor_id is not None:
                    self.actors.enqueue(t, front=True)
                else:
                    self._requeue(t.key, [t])
                    self.dispatch(t.key)
                continue
            borrows: list = []  # refs inside the results that this process holds for the first time
            for oid, r in zip(t.return_ids, returns):
                e = self.objects.entries.get(oid)
                if e is None or e.state == READY:  # freed already, or a rebuild's result that was not lost
                    if r[0] == "v":
                        pos += r[2]
                    if r[0] == "s" and (e is None or e.node != r[4]):
                        self._send(self.io.daemon_addr, Msg.STORE_FREE, (oid,), r[4], ())
                    continue
                pos += fill(e, r, frames, pos)
                contained = r[-1]
                if contained:
                    with DeserializeContext() as ctx:
                        e.contained = [rebuild_ref(cid, cowner) for cid, cowner in contained]
                    borrows.extend(ctx.new_borrows)
                self.objects.resolve(oid, e)
            if any(r[-1] for r in returns) and sender != self.io.address:
                release_handoff(self.io, self.objects, sender, task_id, borrows)
            if t.actor_id is None:
                self.lineage.finished(t)
            t.args = []
            t.holds = []
        for lease in touched:
            if lease.lease_id not in self.lease_by_id:
                continue
            self.dispatch(lease.key)
            if not lease.inflight:
                self.lease_idle(lease)

    def _retryable(self, t: Task, r: tuple, frames: list) -> bool:
        """Does this user exception qualify for a retry under retry_exceptions?"""
        if r[0] != "v":
            return False
        try:
            err = deserialize(r[1], frames[: r[2]])
        except Exception:
            return False
        cause = getattr(err, "cause", None)
        if not isinstance(err, exc.TaskError) or cause is None:
            return False
        allowed = t.retry_exceptions
        return allowed is True or (isinstance(allowed, (list, tuple)) and isinstance(cause, tuple(allowed)))

    # ----------------------------------------------------------- cancel

    def cancel(self, task_id: bytes, force: bool) -> None:
        t = self.tasks.get(task_id)
        if t is None or t.cancelled:
            return
        t.cancelled = True
        if t.actor_id is not None:
            self.actors.cancel(t)
            return
        if not t.dispatched:
            q = self.queues.get(t.key)
            if q is not None and t in q:
                q.remove(t)
            self.fail(t, exc.TaskCancelledError(task_id=task_id.hex()))
            self._size_requests(t.key, q, self.leases.get(t.key, ()))
            return
        lease = t.lease
        if lease is None:  # running inline in this process
            return
        if force:
            self._send(lease.daemon, Msg.KILL_WORKER, lease.worker_id)
        else:
            self._send(lease.worker_addr, Msg.CANCEL_TASK, task_id, False)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())
