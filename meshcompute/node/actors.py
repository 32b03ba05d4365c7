"""The node's actor directory: the actors it hosts, their placement, restarts and state.

An actor lives on the node that admitted it: the daemon there keeps its record,
runs it in a worker of its own, restarts it (up to ``max_restarts``) when the
process dies, and tells subscribers (ACTOR_STATE) and the control store
(``actor_put``) each change.  Names are mesh-wide and claimed through the
control store.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..host.sessions import ACTOR_EXITED
from ..sched.bundles import group_of
from ..sched.resources import ResourcePool, normalize_shape
from ..wire.messages import Msg
from ..wire.transport import node_of
from ..worker.pip_env import checked, failure
from .placement import Placement
from .workers import Worker, WorkerPool


@dataclass
class Actor:
    actor_id: bytes
    spec: dict
    frames: list
    owner: str
    name: str | None
    namespace: str
    shape: tuple
    max_restarts: int
    detached: bool
    state: str = "PENDING"  # PENDING | ALIVE | RESTARTING | DEAD
    worker_id: str | None = None
    restarts: int = 0
    reason: str = ""
    subscribers: set = field(default_factory=set)
    no_restart: bool = False
    gpu_ids: tuple = ()
    seq: int = 0  # version of the state last written to the control store


def _restarts(spec: dict) -> int:
    """Restarts an actor had before this node: its owner places it again when its node dies."""
    n = spec.get("restarts", 0)
    return n if type(n) is int and n >= 0 else 0


def _first_seq(spec: dict) -> int:
    """The control store keeps the record with the highest seq: each placement starts far
    above what the one before it can have reached, so the newest placement wins."""
    return _restarts(spec) << 20


class ControlStore(Protocol):
    """What the actor directory asks of the control store (gcs/shell.py's Control)."""

    def write(self, op: tuple) -> None: ...

    def submit(self, op: tuple, done: Callable[[str, Any], None], timeout: float) -> None: ...

    def group_state(self, pg_id: str) -> str: ...

    def park(self, sender: str, msg: tuple, frames: list) -> None: ...


class ActorDirectory:
    """Owns the Actor records of this node and the queue of actors waiting for resources.

    Invariants:
      * an actor holds its shape from the resource pool exactly while it has a
        ``worker_id`` (placed, alive or starting); death releases it once;
      * an actor is in ``pending`` only while it has no worker and is not DEAD;
      * every state change goes out through ``publish``: subscribers, the
        monitor feed and the control store see the same sequence.
    """

    def __init__(self, node_id: str, address: Callable[[], str], resources: ResourcePool,
                 workers: WorkerPool, placement: Placement, control: Callable[[], ControlStore],
                 send: Callable[..., None], on_changed: Callable[[Actor], None],
                 schedule: Callable[[], None], meshed: Callable[[], bool]) -> None:
        self.node_id = node_id
        self.address = address  # the daemon's address (known once it serves)
        self.resources = resources
        self.workers = workers
        self.placement = placement
        self.control = control  # the control store (made once the daemon serves)
        self.send = send
        self.on_changed = on_changed  # the monitor feed
        self.schedule = schedule
        self.meshed = meshed  # whether peers exist to place on
        self.actors: dict[bytes, Actor] = {}
        self.pending: collections.deque[Actor] = collections.deque()

    def reply(self, peer: str, req_id: int, value: Any) -> None:
        self.send(peer, Msg.REPLY, req_id, value)

    # --------------------------------------------------------------- creation

    def on_create_actor(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, spec = msg
        req_id = spec["req_id"]
        name, ns = spec.get("name"), spec.get("namespace") or ""
        shape = spec["shape"] = normalize_shape(spec["shape"])  # ValueError for a malformed one: dropped
        group = group_of(shape)
        control = self.control()
        if group is not None and not spec.get("spilled"):
            state = control.group_state(group[0])
            if state == "REMOVED":
                self.reply(sender, req_id, ("error", f"placement group {group[0]} was removed"))
                return
            if state != "CREATED":
                # Where it goes is known once the group is reserved: answer then.
                control.park(sender, msg, frames)
                return
        if not spec.get("spilled") and self.meshed():
            # Actors are placed like tasks: here when they fit, else on a peer with room.
            target = self.placement.choose(shape, spec.get("strategy"), {})
            if target is not None:
                self.reply(sender, req_id, ("spill", target.address, None))
                return
        record = self.actor_record(actor_id, spec)
        if not name:
            control.write(("actor_put", actor_id, record))
            self.admit(sender, actor_id, spec, list(frames))
            return
        # A name is unique per namespace across the mesh: the control store decides.
        frames = list(frames)

        def claimed(status: str, value: Any) -> None:
            if status != "ok":
                # The claim may still commit later: take it back, so the name is not held by nobody.
                control.write(("name_release", ns, name, actor_id))
                self.reply(sender, req_id, ("error", f"Could not register the actor name {name!r}: {value}"))
            elif value[0] == "ok":
                self.admit(sender, actor_id, spec, frames)
            elif value[0] == "exists" and spec.get("get_if_exists"):
                self.reply(sender, req_id, ("exists", value[1], value[2]["meta"]))
            elif value[0] == "exists":
                self.reply(sender, req_id, ("error", f"The actor name {name!r} is already taken in namespace {ns!r}."))
            else:
                self.reply(sender, req_id, ("error", f"Could not register the actor name {name!r}: {value}"))

        control.submit(("name_claim", ns, name, actor_id, record), claimed, 30.0)

    def actor_record(self, actor_id: bytes, spec: dict) -> dict:
        """The actor's entry in the control store's actor table."""
        address = self.address()
        return {"class_name": spec.get("class_name"), "node_id": self.node_id, "daemon": address,
                "state": "PENDING", "restarts": _restarts(spec), "max_restarts": spec.get("max_restarts", 0),
                "owner": spec.get("owner"), "job_id": spec.get("job_id") or "", "seq": _first_seq(spec),
                "detached": spec.get("lifetime") == "detached", "name": spec.get("name") or "",
                "namespace": spec.get("namespace") or "", "meta": dict(spec["handle_meta"], daemon=address)}

    def admit(self, sender: str, actor_id: bytes, spec: dict, frames: list) -> None:
        req_id = spec["req_id"]
        name, ns = spec.get("name"), spec.get("namespace") or ""
        shape = tuple(spec["shape"])
        a = Actor(actor_id, spec, frames, sender, name, ns, shape, spec.get("max_restarts", 0),
                  spec.get("lifetime") == "detached", restarts=_restarts(spec), seq=_first_seq(spec))
        a.subscribers.add(sender)
        self.actors[actor_id] = a
        self.reply(sender, req_id, ("ok", actor_id, self.address()))
        self.on_changed(a)
        if group_of(shape) is None and not self.resources.feasible(shape):
            a.reason = (f"Actor {spec.get('class_name')} needs {dict(shape)}, but no node of this mesh has that "
                        f"much (the largest offers {self.resources.largest()}); it stays pending until "
                        f"such a node joins.")
            self.publish(a)
        self.pending.append(a)
        self.schedule()

    # -------------------------------------------------------------- placement

    def place_pending(self, idle: list[Worker],
                      may_own: Callable[[str, float], bool] = lambda addr, idle_for: False) -> None:
        """Place the waiting actors that fit (they go first: few, and each needs a whole process).

        An idle worker that ran tasks and ``may_own(address, seconds idle)`` objects (made by
        those tasks, maybe still in use) never becomes an actor: killing it would lose them."""
        for a in list(self.pending):
            if self.resources.fits(a.shape):
                self.pending.remove(a)
                self._place(a, idle, may_own)

    def _place(self, a: Actor, idle: list[Worker], may_own: Callable[[str, float], bool]) -> None:
        env = self._pip_env(a)  # before anything is acquired: it writes a file, which may fail
        a.gpu_ids = self.resources.acquire(a.shape)
        now = time.monotonic()
        free = [w for w in idle if w.env == env and not (w.ran_tasks and may_own(w.addr, now - w.idle_since))]
        if free:
            w = free[-1]
            idle.remove(w)
            w.state, w.actor_id = "actor", a.actor_id
            a.worker_id = w.worker_id
            self.send(w.addr, Msg.BECOME_ACTOR, a.actor_id, a.spec, a.restarts, a.gpu_ids, frames=a.frames)
        else:
            w = self.workers.start_env_worker(env) if env else self.workers.fork()
            w.actor_id = a.actor_id
            a.worker_id = w.worker_id

    def _pip_env(self, a: Actor) -> str:
        """The actor's pip runtime_env by hash ("" for none): only a worker of it may host it."""
        runtime_env = a.spec.get("runtime_env")
        pip = runtime_env.get("pip") if isinstance(runtime_env, dict) else None
        if pip is None:
            return ""
        try:
            env, requirements, options = checked(pip)
            self.workers.know_env(env, requirements, options)
            self.workers.write_requirements(env)
        except (ValueError, OSError):
            return ""  # the worker refuses it when applying the environment: the actor fails there
        return env

    def worker_registered(self, w: Worker) -> bool:
        """A worker forked for an actor said hello: make it that actor.  False if it is a plain worker."""
        if w.actor_id is None:
            return False
        a = self.actors[w.actor_id]
        w.state = "actor"
        self.send(w.addr, Msg.BECOME_ACTOR, a.actor_id, a.spec, a.restarts, a.gpu_ids, frames=a.frames)
        return True

    def on_actor_ready(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, error = msg
        a = self.actors.get(actor_id)
        if a is None:
            return
        if error is not None:
            # The constructor raised: the actor is dead, calls get the error.
            a.no_restart = True
            a.state, a.reason = "DEAD", f"its constructor raised an exception: {error}"
            self.publish(a)
            w = self.workers.by_addr.get(sender)
            if w is not None:
                w.actor_id = None
                self.workers.kill(w.worker_id, expected=True)
            self.resources.release(a.shape, a.gpu_ids)
            return
        a.state = "ALIVE"
        self.publish(a)

    # ------------------------------------------------------------------ state

    def _worker_addr(self, a: Actor) -> str | None:
        w = self.workers.workers.get(a.worker_id) if a.worker_id else None
        return w.addr if (w is not None and a.state == "ALIVE") else None

    def worker_pid(self, a: Actor) -> int | None:
        w = self.workers.workers.get(a.worker_id) if a.worker_id else None
        return w.pid if w is not None and w.pid else None

    def publish(self, a: Actor) -> None:
        addr = self._worker_addr(a)
        reason = a.reason
        for sub in list(a.subscribers):
            self.send(sub, Msg.ACTOR_STATE, a.actor_id, a.state, addr, a.restarts, reason)
        self.on_changed(a)
        a.seq += 1
        # The pid too: list_actors reads the actor table, and only this node knows the process.
        self.control().write(("actor_put", a.actor_id, {"state": a.state, "restarts": a.restarts, "reason": reason,
                                                         "seq": a.seq, "pid": self.worker_pid(a)}))

    def on_subscribe_actor(self, sender: str, msg: tuple, frames: list) -> None:
        a = self.actors.get(msg[1])
        if a is None:
            self.send(sender, Msg.ACTOR_STATE, msg[1], "DEAD", None, 0, "no such actor on this node")
            return
        a.subscribers.add(sender)
        self.send(sender, Msg.ACTOR_STATE, a.actor_id, a.state, self._worker_addr(a), a.restarts, a.reason)

    def on_lookup_actor(self, sender: str, msg: tuple, frames: list) -> None:
        """get_actor(name): a linearizable read of the mesh-wide name table."""
        _, req_id, name, ns = msg

        def found(status: str, value: Any) -> None:
            if status != "ok":
                self.reply(sender, req_id, ("unavailable", value))
            elif value is None:
                self.reply(sender, req_id, None)
            else:
                self.reply(sender, req_id, (value[0], value[1]["meta"]))

        self.control().submit(("name_lookup", ns or "", name), found, 30.0)

    # ------------------------------------------------------------------ death

    def on_kill_actor(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, no_restart = msg
        a = self.actors.get(actor_id)
        if a is None or a.state == "DEAD":
            return
        a.no_restart = a.no_restart or no_restart
        self.kill(a, "it was killed with kill()")

    def kill(self, a: Actor, reason: str) -> None:
        a.reason = reason
        w = self.workers.workers.get(a.worker_id) if a.worker_id else None
        if w is not None and w.pid:
            self.workers.kill(w.worker_id)  # its death comes back through the zygote: actor_died then
        elif a in self.pending or w is None:
            if a in self.pending:
                self.pending.remove(a)
            self.actor_died(a, reason)

    def actor_died(self, a: Actor | None, reason: str) -> None:
        if a is None or a.state == "DEAD":
            return
        if a.worker_id is not None:
            self.resources.release(a.shape, a.gpu_ids)
        a.worker_id = None
        unlimited = a.max_restarts == -1
        if not a.no_restart and (unlimited or a.restarts < a.max_restarts):
            a.restarts += 1
            a.state = "RESTARTING"
            a.reason = f"the actor's process died ({reason}); restarting"
            self.publish(a)
            self.pending.append(a)
            self.schedule()
            return
        a.state = "DEAD"
        a.reason = a.reason if a.no_restart and a.reason else f"the actor's process died ({reason})"
        self.publish(a)  # the control store frees its name

    def worker_exited(self, w: Worker, reason: str) -> None:
        if w.actor_id is not None:
            if w.env and not w.addr:  # its pip environment's worker never served: say why
                reason = failure(self.workers.session_dir, w.env, reason)
            a = self.actors.get(w.actor_id)
            if a is not None and reason == ACTOR_EXITED:  # it ended itself: not restarted (Ray's exit_actor)
                a.no_restart, a.reason = True, reason
            self.actor_died(a, reason)

    def owner_gone(self, addr: str) -> None:
        """A process is gone: the actors it owns die (unless detached), it subscribes to nothing."""
        for a in list(self.actors.values()):
            if a.owner == addr and not a.detached and a.state != "DEAD":
                a.no_restart = True
                self.kill(a, "its owner exited")
        for a in self.actors.values():
            a.subscribers.discard(addr)

    def node_gone(self, node_id: str) -> None:
        for a in self.actors.values():
            a.subscribers = {s for s in a.subscribers if node_of(s) != node_id}

    def stop_work_using(self, resources: set[str], reason: str) -> None:
        """Kill the actors holding any of these resources (a bundle that went away)."""
        for a in list(self.actors.values()):
            if a.state != "DEAD" and any(k in resources for k, _ in a.shape):
                a.no_restart = True
                self.kill(a, reason)
