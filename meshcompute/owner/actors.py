"""A caller's view of the actors it calls: where each is, and its calls in flight.

Calls to one actor go out in submission order, one ACTOR_CALL each, straight to
the actor's worker; the actor's daemon only publishes its state (ACTOR_STATE)
to subscribers.  Invariant: a call is in ``queue`` while the actor is not
ALIVE, its arguments are not all ready, or calls before it are still queued;
in ``inflight`` once sent; and is retried or failed when the actor restarts or
dies, per ``max_task_retries``.  As in Ray, the caller resolves a call's
arguments before sending it, so an actor never waits on a value that may never
come (its owner died): it only reads values that exist.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from .. import exceptions as exc
from ..wire.messages import Msg
from ..wire.transport import node_of
from .io import OwnerIo

log = logging.getLogger("meshcompute")

LOOK_EVERY_S = 0.5
"""How often (s) a caller of an actor whose node died asks the control store where it went."""
LOOK_FOR_S = 60.0
"""How long (s) a caller waits for such an actor to be placed again before failing its calls."""


class ActorClient:
    """A caller's view of one actor."""

    __slots__ = ("actor_id", "addr", "state", "queue", "inflight", "reason", "subscribed", "release_when_idle",
                 "daemon", "spec", "frames", "restarts", "looking")

    def __init__(self, actor_id: bytes, daemon: str) -> None:
        self.actor_id = actor_id
        self.addr: str | None = None
        self.state = "PENDING"
        self.queue: collections.deque = collections.deque()
        self.inflight: dict[bytes, object] = {}
        self.reason = ""
        self.subscribed = False
        self.release_when_idle = False
        self.daemon = daemon  # the daemon of the node hosting the actor
        self.spec: dict | None = None  # the creator's: how to make it again (all of it only if max_restarts != 0)
        self.frames: list = []
        self.restarts = 0
        self.looking = False  # a caller asks the control store where it went after its node died


class ActorCalls:
    """Every actor this process calls or created."""

    def __init__(self, io: OwnerIo, fail: Callable[[object, BaseException], None],
                 failed_arg: Callable[[object], bool]) -> None:
        self.io = io
        self._fail = fail  # complete a call with a system error (TaskQueues.fail)
        self._failed_arg = failed_arg  # complete a call with its failed argument's error (TaskQueues)
        self.actors: dict[bytes, ActorClient] = {}
        self.alive_node: Callable[[str], bool] = lambda node_id: True  # the runtime says which nodes live
        self.left_behind: dict[str, list[tuple[str, bytes]]] = {}  # dead node -> (its daemon, actor placed again)

    def client(self, actor_id: bytes, daemon: str | None = None, subscribe: bool = True) -> ActorClient:
        a = self.actors.get(actor_id)
        if a is None:
            a = self.actors[actor_id] = ActorClient(actor_id, daemon or self.io.daemon_addr)
        if subscribe and not a.subscribed:
            a.subscribed = True
            if self.alive_node(node_of(a.daemon)):
                self.io.send(a.daemon, Msg.SUBSCRIBE_ACTOR, actor_id)
            else:  # a handle older than its node's death: where did it go?
                self._on_actor_lost(a, f"its node {node_of(a.daemon)} is gone")
        return a

    def daemon_of(self, actor_id: bytes, hint: str | None) -> str:
        a = self.actors.get(actor_id)
        return a.daemon if a is not None else (hint or self.io.daemon_addr)

    def enqueue(self, t, front: bool = False) -> None:
        a = self.client(t.actor_id, t.strategy)
        if a.state == "DEAD":
            self._fail(t, exc.ActorDiedError(a.reason or "The actor is dead.", t.actor_id.hex()))
            return
        if front:
            a.queue.appendleft(t)
        else:
            a.queue.append(t)
        self._pump(a)

    def dependency_ready(self, t) -> None:
        """The last pending argument of a queued call became ready."""
        a = self.actors.get(t.actor_id)
        if a is not None:
            self._pump(a)

    def _pump(self, a: ActorClient) -> None:
        """Send the queued calls, in order, up to the first whose arguments are not ready."""
        if a.state != "ALIVE":
            return
        q = a.queue
        while q and q[0].deps == 0:
            t = q.popleft()
            if not self._failed_arg(t):
                self._send_call(a, t)

    def _send_call(self, a: ActorClient, t) -> None:
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
        self.io.send(a.addr, Msg.ACTOR_CALL, call, frames=frames)

    def call_done(self, t) -> None:
        a = self.actors.get(t.actor_id)
        if a is None:
            return
        a.inflight.pop(t.task_id, None)
        if a.release_when_idle and not a.inflight and not a.queue:
            a.release_when_idle = False
            self.io.send(a.daemon, Msg.KILL_ACTOR, a.actor_id, True)

    def cancel(self, t) -> None:
        a = self.actors.get(t.actor_id)
        if a is not None and t in a.queue:
            a.queue.remove(t)
            self._fail(t, exc.TaskCancelledError(task_id=t.task_id.hex()))
        elif a is not None and a.addr:
            self.io.send(a.addr, Msg.CANCEL_TASK, t.task_id, False)

    def on_actor_state(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, state, addr, restarts, reason = msg
        a = self.actors.get(actor_id)
        if a is not None and sender != a.daemon and sender != self.io.daemon_addr:
            return  # from where it lived before it was placed again: not about this instance
        if a is None:
            a = self.actors[actor_id] = ActorClient(actor_id, self.io.daemon_addr)
            a.subscribed = True
        if state == "PENDING" and reason:
            log.warning("%s", reason)
        old_addr = a.addr
        a.state, a.reason = state, reason or a.reason
        if isinstance(restarts, int) and restarts > a.restarts:
            a.restarts = restarts
        if state in ("RESTARTING", "DEAD") or (state == "ALIVE" and old_addr and addr != old_addr):
            if old_addr:
                self.io.forget(old_addr)
            retry = []
            for t in a.inflight.values():
                if t.retries_left != 0 and state != "DEAD":
                    t.retries_left -= 1
                    retry.append(t)
                else:
                    self._fail(t, exc.ActorDiedError(
                        f"The actor died while running {t.name}: {reason or state}", actor_id.hex()))
            a.inflight.clear()
            a.queue.extendleft(reversed(retry))
        if state == "ALIVE":
            a.addr = addr
            self._pump(a)
        elif state == "DEAD":
            while a.queue:
                t = a.queue.popleft()
                self._fail(t, exc.ActorDiedError(f"The actor is dead: {reason or 'killed'}", actor_id.hex()))

    def set_dead(self, actor_id: bytes, reason: str) -> None:
        self.on_actor_state(self.io.daemon_addr, (Msg.ACTOR_STATE, actor_id, "DEAD", None, 0, reason), [])

    def on_node_gone(self, node_id: str, reason: str) -> None:
        """Actors on a dead node: their creator places them again (within max_restarts, where
        their strategy allows); other callers ask the control store where they went."""
        for a in list(self.actors.values()):
            if a.state == "DEAD" or node_of(a.daemon) != node_id:
                continue
            if a.spec is None:
                self._on_actor_lost(a, reason)
                continue
            limit = a.spec.get("max_restarts", 0)
            strategy = a.spec.get("strategy")
            if limit != -1 and a.restarts >= limit:
                self.set_dead(a.actor_id, f"{reason}, and its max_restarts ({limit}) are used up")
            elif isinstance(strategy, tuple) and strategy[:2] == ("node", node_id) and not strategy[2]:
                self.set_dead(a.actor_id, f"{reason}, and its scheduling strategy pins it there (soft=False)")
            else:
                self._place_again(a, reason)

    def _place_again(self, a: ActorClient, reason: str) -> None:
        # Should that node come back, its instance is stopped (node_back): one instance only.
        self.left_behind.setdefault(node_of(a.daemon), []).append((a.daemon, a.actor_id))
        restarts = a.restarts + 1
        self.on_actor_state(a.daemon, (Msg.ACTOR_STATE, a.actor_id, "RESTARTING", None, restarts,
                                       f"{reason}; restarting it elsewhere"), [])
        spec = dict(a.spec, restarts=restarts, spilled=False)
        self._create_at(a, spec, self.io.daemon_addr, hops=3)

    def _create_at(self, a: ActorClient, spec: dict, daemon: str, hops: int) -> None:
        req_id = self.io.next_req_id()
        spec["req_id"] = req_id

        def answered(value) -> None:
            if value[0] == "spill" and hops > 1:
                self._create_at(a, dict(spec, spilled=True), value[1], hops - 1)
            elif value[0] == "ok":
                a.daemon = value[2]  # it publishes the new instance's state to us (its creator)
            else:
                self.set_dead(a.actor_id, f"it could not be placed again: {value[1] if len(value) > 1 else value}")

        self.io.on_reply(req_id, answered)
        self.io.send(daemon, Msg.CREATE_ACTOR, a.actor_id, spec, frames=a.frames)

    def _on_actor_lost(self, a: ActorClient, reason: str) -> None:
        """Not ours: it is placed again by its creator, or dead; the control store says which."""
        self.on_actor_state(a.daemon, (Msg.ACTOR_STATE, a.actor_id, "RESTARTING", None, a.restarts,
                                       f"{reason}; waiting for it to be placed again"), [])
        if not a.looking:
            a.looking = True
            self._look(a, self.io.now() + LOOK_FOR_S, reason)

    def _look(self, a: ActorClient, until: float, reason: str) -> None:
        req_id = self.io.next_req_id()

        def found(answer) -> None:
            status, rec = answer if isinstance(answer, tuple) and len(answer) == 2 else ("error", None)
            where = rec.get("daemon") if isinstance(rec, dict) else None
            if status == "ok" and (rec is None or rec.get("state") == "DEAD"):
                a.looking = False
                self.set_dead(a.actor_id, rec.get("reason", reason) if rec else reason)
            elif status == "ok" and isinstance(where, str) and self.alive_node(node_of(where)):
                a.looking, a.daemon, a.subscribed = False, where, False
                self.client(a.actor_id)  # subscribe there: its state (and address) follow
            elif self.io.now() >= until:
                a.looking = False
                self.set_dead(a.actor_id, f"{reason}, and it was not placed again within {LOOK_FOR_S:.0f} s")
            else:
                self.io.call_later(LOOK_EVERY_S, self._look, a, until, reason)

        self.io.on_reply(req_id, found)
        self.io.send(self.io.daemon_addr, Msg.GCS_REQUEST, req_id, ("actor", a.actor_id), 5.0)

    def node_back(self, node_id: str) -> None:
        """A node we took for dead is alive: stop the instances we placed again elsewhere."""
        for daemon, actor_id in self.left_behind.pop(node_id, ()):
            self.io.send(daemon, Msg.KILL_ACTOR, actor_id, True)

    def create(self, actor_id: bytes, spec: dict, frames: list, daemon: str) -> None:
        a = self.client(actor_id, daemon, subscribe=False)
        a.subscribed = True  # the daemon subscribes the creator
        a.daemon = daemon
        if spec.get("max_restarts", 0) != 0:
            a.spec, a.frames = spec, list(frames)  # to place it again if its node dies
        else:
            a.spec = {"max_restarts": 0}  # ours, never placed again: its calls fail at once then
        self.io.send(daemon, Msg.CREATE_ACTOR, actor_id, spec, frames=frames)

    def kill(self, actor_id: bytes, no_restart: bool, hint: str | None) -> None:
        self.io.send(self.daemon_of(actor_id, hint), Msg.KILL_ACTOR, actor_id, no_restart)
        a = self.actors.get(actor_id)
        if no_restart and a is not None and a.state != "DEAD":
            self.set_dead(actor_id, "it was killed with kill()")

    def release(self, actor_id: bytes) -> None:
        """The creator's last handle is gone: stop the actor once its calls finish."""
        a = self.actors.get(actor_id)
        if a is not None and (a.inflight or a.queue):
            a.release_when_idle = True
            return
        self.io.send(a.daemon if a is not None else self.io.daemon_addr, Msg.KILL_ACTOR, actor_id, True)

    def queued(self) -> int:
        return sum(len(a.queue) for a in self.actors.values())
