"""Leases: pending requests, grants, returns, CPU lent by blocked workers, revocation.

An owner asks for a worker of a resource shape (REQUEST_LEASE), gets one
(LEASE_GRANTED) and pushes tasks to it directly until it returns the lease
(RETURN_LEASE).  See docs/protocol.md for the messages.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..sched.bundles import group_of
from ..sched.resources import ResourcePool, normalize_shape
from ..wire.messages import Msg
from ..wire.transport import node_of
from ..worker.pip_env import checked, failure
from .placement import Placement
from .workers import Worker, WorkerPool

REVOKE_EVERY_S = 0.005
"""At most one round of LEASE_REVOKE per this long (s) while requests are stuck."""


@dataclass
class Lease:
    lease_id: bytes
    owner: str
    worker_id: str
    shape: tuple
    gpu_ids: tuple
    released_cpu: float = 0.0  # CPU lent out while the worker is blocked


@dataclass
class LeaseRequest:
    owner: str
    req_id: int
    shape: tuple
    strategy: Any = None
    hints: dict = field(default_factory=dict)
    warned: bool = False
    revoked: bool = False
    fetching: int = 0  # arguments still being pulled here: granted only once they are local
    env: str = ""  # its pip runtime_env (worker/pip_env.py): only a worker of it may take the lease


class LeaseTable:
    """Owns the lease requests waiting here and the leases granted here.

    Invariants:
      * every Lease holds its shape (and GPU ids) acquired from the resource
        pool, minus ``released_cpu`` while its worker is blocked; returning or
        losing the lease releases exactly that;
      * a leased worker's ``lease_id`` names its Lease, and only a worker in
        state "leased" is handed back to "idle" by a return;
      * ``pending`` keeps arrival order; a request leaves it when granted,
        spilled back, cancelled, or when its owner is gone;
      * a request is granted only once the arguments it named (``hints["args"]``)
        are in this node's store, as in Ray: the pull happens before a CPU is
        held, and the number of pulls in flight is bounded by the store's room,
        not by how many workers wait.
    """

    def __init__(self, resources: ResourcePool, workers: WorkerPool, placement: Placement,
                 send: Callable[..., None], schedule: Callable[[], None],
                 prefetch: Callable[[Any, Callable[[], None]], int]) -> None:
        self.resources = resources
        self.workers = workers
        self.placement = placement
        self.send = send
        self.schedule = schedule  # the node's scheduling pass, after anything freed resources
        # prefetch(args, done): start pulling the arguments this node lacks; returns how many
        # (``done`` is called once for each as it lands or fails).
        self.prefetch = prefetch
        self.leases: dict[bytes, Lease] = {}
        self.pending: collections.deque[LeaseRequest] = collections.deque()
        self.draining = False  # the node is leaving: it grants nothing more (begin_drain)
        self.drain_until = 0.0  # ... and leaves once every lease is back, or at this time
        self._last_revoke = 0.0

    # ---------------------------------------------------------------- messages

    def on_request_lease(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, shape, strategy, hints = msg
        # Any peer may send this: a malformed shape (negative, NaN, not numbers) is refused
        # here, before it can reach the resource arithmetic (ValueError: the message is dropped).
        shape = normalize_shape(shape)
        if not isinstance(hints, dict):
            hints = {}
        req = LeaseRequest(sender, req_id, shape, strategy=strategy, hints=hints)
        if hints.get("pip") is not None:
            try:
                req.env = self._pip_env(hints["pip"])  # ValueError: a malformed one drops the message
            except OSError as e:
                self.send(sender, Msg.LEASE_REFUSED, req_id, "runtime_env", f"cannot write its requirements: {e}")
                return
        target = self.placement.choose(req.shape, req.strategy, req.hints)
        if target is not None:
            self.spillback(req, target)
            return
        if req.hints.get("args"):
            req.fetching = self.prefetch(req.hints["args"], lambda: self._fetched(req))
        if (group_of(req.shape) is None and not self.resources.feasible(req.shape)
                and not self.placement.feasible_somewhere(req.shape)):
            req.warned = True
            self.send(sender, Msg.LEASE_INFEASIBLE, req_id, req.shape, self.resources.largest())
        self.pending.append(req)
        self.schedule()

    def _pip_env(self, pip: Any) -> str:
        env, requirements, options = checked(pip)
        self.workers.know_env(env, requirements, options)
        self.workers.write_requirements(env)
        return env

    def env_failed(self, w: Worker, reason: str) -> None:
        """A worker of a pip environment exited before it served: its installation failed
        (its reason is in the environment's ``.failed`` file), so the requests waiting for
        that environment are refused; a later request tries the installation again."""
        why = failure(self.workers.session_dir, w.env, reason)
        refused = [r for r in self.pending if r.env == w.env]
        self.pending = collections.deque(r for r in self.pending if r.env != w.env)
        for req in refused:
            self.send(req.owner, Msg.LEASE_REFUSED, req.req_id, "runtime_env", why)

    def _fetched(self, req: LeaseRequest) -> None:
        req.fetching -= 1
        if req.fetching == 0 and req in self.pending:
            self.schedule()

    def begin_drain(self, until: float) -> set[str]:
        """The node is leaving: grant nothing more, send waiting requests elsewhere (``grant``),
        until every lease is back or the monotonic time ``until``.  Returns the owners that hold
        leases here, to be told (``NODE_DRAINING``)."""
        self.draining, self.drain_until = True, until
        self.schedule()
        return {ls.owner for ls in self.leases.values()}

    def drained(self, now: float) -> bool:
        """Whether a draining node may leave now."""
        return self.draining and (not self.leases or now >= self.drain_until)

    def spillback(self, req: LeaseRequest, peer: Any) -> None:
        self.placement.note_sent(peer)
        self.send(req.owner, Msg.LEASE_SPILLBACK, req.req_id, peer.address, peer.node_id)

    def _place_elsewhere(self, req: LeaseRequest, spare: dict) -> bool:
        """A request that does not fit what is free here: spill it to a peer with room, or send
        it back to its owner's node when it was sent here and must not wait here (grant or
        reject: sched.placement.reject_when_full). True if it left."""
        target = self.placement.choose(req.shape, req.strategy, req.hints, available=spare)
        if target is None:
            target = self.placement.send_back(node_of(req.owner), req.shape, req.strategy, req.hints)
            if target is None:
                return False
            self.send(req.owner, Msg.LEASE_SPILLBACK, req.req_id, target.address, target.node_id)
            return True
        self.spillback(req, target)
        return True

    def on_cancel_lease_request(self, sender: str, msg: tuple, frames: list) -> None:
        self.pending = collections.deque(r for r in self.pending if not (r.owner == sender and r.req_id == msg[1]))

    def on_return_lease(self, sender: str, msg: tuple, frames: list) -> None:
        lease = self.leases.pop(msg[1], None)
        if lease is None:
            return
        self.resources.release(lease.shape, lease.gpu_ids, lease.released_cpu)
        w = self.workers.workers.get(lease.worker_id)
        if w is not None and w.state == "leased":
            w.state, w.lease_id, w.blocked = "idle", None, False
            w.idle_since = time.monotonic()
        self.schedule()

    def on_blocked(self, sender: str, msg: tuple, frames: list) -> None:
        w = self.workers.by_addr.get(sender)
        if w is None or w.lease_id is None or w.blocked:
            return
        lease = self.leases.get(w.lease_id)
        if lease is None:
            return
        cpu = dict(lease.shape).get("CPU", 0.0)
        w.blocked = True
        lease.released_cpu = cpu
        self.resources.lend_cpu(cpu)
        self.schedule()

    def on_unblocked(self, sender: str, msg: tuple, frames: list) -> None:
        w = self.workers.by_addr.get(sender)
        if w is None or not w.blocked:
            return
        w.blocked = False
        lease = self.leases.get(w.lease_id) if w.lease_id else None
        if lease is not None:
            # May go below zero for a moment: the unblocked task runs now, and new
            # leases wait until the count is back above their shape.
            self.resources.reclaim_cpu(lease.released_cpu)
            lease.released_cpu = 0.0

    # ----------------------------------------------------------------- events

    def worker_exited(self, w: Worker, reason: str) -> None:
        """A leased worker died: release its lease and tell the owner (unless we killed it)."""
        if w.env and not w.addr and not w.expected_exit:
            self.env_failed(w, reason)
        if w.lease_id is None:
            return
        lease = self.leases.pop(w.lease_id, None)
        if lease is not None:
            self.resources.release(lease.shape, lease.gpu_ids, lease.released_cpu)
            if not w.expected_exit:
                self.send(lease.owner, Msg.WORKER_DIED, lease.lease_id, w.worker_id, reason)

    def owner_gone(self, addr: str) -> None:
        """The owner is gone: its tasks' results have nowhere to go, so its workers are killed."""
        for lease in [ls for ls in self.leases.values() if ls.owner == addr]:
            self.workers.kill(lease.worker_id, expected=True)
        self.pending = collections.deque(r for r in self.pending if r.owner != addr)

    def stop_work_using(self, resources: set[str]) -> None:
        """Kill the leased workers holding any of these resources (a bundle that went away)."""
        for lease in list(self.leases.values()):
            if any(k in resources for k, _ in lease.shape):
                self.workers.kill(lease.worker_id)

    # ------------------------------------------------------------- scheduling

    def grant(self, idle: list[Worker], may_spill: bool) -> int:
        """Grant what fits to idle workers, spill back what fits elsewhere, revoke idle leases
        if requests are stuck.  Returns how many workers the grants still need."""
        needs_worker = 0
        needs_env: collections.Counter[str] = collections.Counter()  # workers of pip environments
        still: collections.deque[LeaseRequest] = collections.deque()
        # What is left after the requests already waiting for a worker to start.
        spare = dict(self.resources.available)
        for req in self.pending:
            if req.fetching:
                still.append(req)  # its arguments are on their way here
                continue
            removed = self.placement.removed_group(req.shape)
            if removed is not None:  # its bundles are gone for good: waiting would be forever
                self.send(req.owner, Msg.LEASE_REFUSED, req.req_id, "placement_group",
                          f"its placement group {removed} was removed")
                continue
            if self.draining:
                target = self.placement.elsewhere(req.shape, req.strategy, req.hints, node_of(req.owner))
                if target is None:
                    still.append(req)  # nowhere else: it goes with this node
                else:
                    self.spillback(req, target)
                continue
            if not self.resources.fits(req.shape, spare):
                if not (may_spill and self._place_elsewhere(req, spare)):
                    still.append(req)
                continue
            w = _take_idle(idle, req.env)
            if w is None:
                if req.env:
                    needs_env[req.env] += 1
                else:
                    needs_worker += 1
                for k, v in req.shape:
                    spare[k] = spare.get(k, 0.0) - v
                still.append(req)
                continue
            for k, v in req.shape:
                spare[k] = spare.get(k, 0.0) - v
            gpu_ids = self.resources.acquire(req.shape)
            lease_id = os.urandom(8)
            self.leases[lease_id] = Lease(lease_id, req.owner, w.worker_id, req.shape, gpu_ids)
            w.state, w.lease_id, w.ran_tasks = "leased", lease_id, True
            self.send(req.owner, Msg.LEASE_GRANTED, req.req_id, lease_id, w.addr, w.worker_id, gpu_ids)
        self.pending = still
        if needs_env:
            self.workers.ensure_starting(0, needs_env)
        # Requests that fit the node but not what is free: idle leases may hold it.
        now = time.monotonic()
        if len(still) > needs_worker + sum(needs_env.values()) and now - self._last_revoke > REVOKE_EVERY_S:
            waiting = {req.owner for req in still if self.resources.feasible(req.shape)}
            if waiting:
                self._last_revoke = now
                # Only others' requests justify a revoke: an owner waiting for a
                # lease of its own hands back idle ones without being told.
                for owner in {ls.owner for ls in self.leases.values()}:
                    if waiting - {owner}:
                        self.send(owner, Msg.LEASE_REVOKE, len(waiting - {owner}))
        return needs_worker


def _take_idle(idle: list[Worker], env: str) -> Worker | None:
    """An idle worker serving ``env`` (a pip environment's hash; "" the node's own), taken from ``idle``."""
    for i in range(len(idle) - 1, -1, -1):
        if idle[i].env == env:
            return idle.pop(i)
    return None
