"""The daemon's control-store shell: the GCS server (meshcompute.gcs) wired to sockets.

Thin on purpose: Raft, the tables and the routing of requests live in
:mod:`meshcompute.gcs`; this module carries their messages (``RAFT``,
``GCS_REQUEST``, ``GCS_FORWARD``, ``GCS_ANSWER``), feeds gossip's view of the
mesh to the leader's duties, and turns committed placement groups into
resources reserved on this node.

Placement group bundles become resources, as in Ray (bundles.py): a bundle
reserved here moves its resources out of the node's free pool and adds them
under the bundle's names, which tasks and actors scheduled into the group ask
for, so the ordinary lease machinery grants them only where the bundle lives.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..raft import Message
from ..sched.bundles import bundle_keys, group_of
from ..wire.messages import Msg
from ..wire.transport import parse_address
from .codec import message_from_wire, message_to_wire
from .server import GcsServer, NodeView, raft_id_of

log = logging.getLogger("meshcompute.control")

# seconds. How long gossip must have declared a node dead before the leader
# takes it out of the Raft group (and a learner takes its vote) and marks it,
# its actors and its bundles dead. Longer than gossip's own false-positive
# window on a busy machine (a suspect refutes within 1 s), short enough that a
# three-voter group is back to three voters within seconds.
DEAD_GRACE_S = 5.0
# seconds. Default wait for a quorum before a request fails as unavailable.
REQUEST_TIMEOUT_S = 10.0
# Internal writes (actor states, jobs) wait longer: they are not on anyone's
# critical path, and dropping them loses history.
BACKGROUND_TIMEOUT_S = 120.0
# How long (s) a leaving leader waits for another voter to take over (an election
# timeout is about 1 s; a transfer normally takes one round trip).
HAND_OVER_S = 2.0


class BundleResources(Protocol):
    """The node's resource pool as far as bundles go (sched/resources.py's ResourcePool)."""

    def fits(self, shape: tuple) -> bool: ...

    def public_available(self) -> dict: ...

    def reserve_bundle(self, pg_id: str, index: int, bundle: dict) -> None: ...

    def return_bundle(self, pg_id: str, index: int, bundle: dict, last_here: bool) -> None: ...


@dataclass(frozen=True)
class NodeLink:
    """Everything the control store shell uses of its node, and nothing more."""

    node_id: str
    session_dir: str
    send: Callable[..., None]  # send(address, Msg, *fields): one message from the node's socket
    peer_views: Callable[[], dict]  # gossip's view of the other nodes, by node id
    resources: BundleResources
    stop_work_using: Callable[[set, str], None]  # kill work holding these resources (a bundle went away)
    create_actor: Callable[[str, tuple, list], None]  # handle a parked CREATE_ACTOR again
    schedule: Callable[[], None]  # a scheduling pass, after bundles changed what is free


class Control:
    def __init__(self, node: NodeLink, voters: int | None) -> None:
        """``voters``: this node starts a new mesh with that many voters; None: it joins one."""
        self.node = node
        self.server = GcsServer(
            node.node_id, os.path.join(node.session_dir, "gcs"),
            bootstrap={"voters": voters} if voters is not None else None,
            send_raft=self._send_raft, send_forward=self._send_forward, on_applied=self._on_applied)
        self.addresses: dict[int, str] = {}  # raft id -> daemon address (learned from senders, gossip)
        self.gone_since: dict[str, tuple[float, bool]] = {}  # node id -> (when declared dead/left, left)
        self.bundles: dict[tuple[str, int], dict] = {}  # (pg, index) -> bundle reserved here
        self.answered: set[tuple[str, int, int]] = set()  # (pg, attempt, index) we acked or refused
        self.pg_waiters: dict[str, list[tuple[str, int]]] = defaultdict(list)  # pg -> (process, req_id)
        self.pgs_changed = False
        self.hand_over_until = 0.0  # a leaving leader waits until then for a successor
        self.parked: list[tuple[str, tuple, list]] = []  # actor creations waiting for their group

    # ------------------------------------------------------------- plumbing

    def _address(self, raft_id: int) -> str | None:
        addr = self.addresses.get(raft_id)
        if addr is not None:
            return addr
        for p in self.node.peer_views().values():
            rid = raft_id_of(p.node_id)
            self.server.node_names.setdefault(rid, p.node_id)
            if p.address:
                self.addresses[rid] = p.address
        return self.addresses.get(raft_id)

    def _send_raft(self, to: int, m: Message) -> None:
        addr = self._address(to)
        if addr is not None:
            try:
                self.node.send(addr, Msg.RAFT, message_to_wire(m))
            except Exception as e:  # noqa: BLE001 - a bad gossiped address must not stop Raft
                log.warning("cannot send a Raft message to %s: %s", addr, e)

    def _send_forward(self, to: int, uid: bytes, op: tuple) -> None:
        addr = self._address(to)
        if addr is not None:
            self.node.send(addr, Msg.GCS_FORWARD, uid, op)

    def _from_daemon(self, sender: str) -> str | None:
        """The node id of a peer daemon that sent this, else None (not a daemon of another node)."""
        node, name, _ = parse_address(sender)
        if name != "daemon" or not node or node == self.node.node_id:
            return None
        return node

    def on_raft(self, sender: str, msg: tuple, frames: list) -> None:
        node = self._from_daemon(sender)
        if node is None:
            return
        m = message_from_wire(msg[1])
        rid = raft_id_of(node)
        if m.frm != rid or m.to != self.server.raft_id:
            log.warning("dropped a Raft message from %s that claims to be from %d to %d", sender, m.frm, m.to)
            return
        self.addresses[rid] = sender
        self.server.node_names[rid] = node
        self.server.step(m)

    def on_gcs_request(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, op, timeout = msg
        if not isinstance(op, tuple) or not op:
            self.reply(sender, req_id, ("error", "a control store request is a non-empty tuple"))
            return
        if op[0] == "pg_wait":
            self.pg_waiters[op[1]].append((sender, req_id))
            self._answer_pg_waiters()
            return
        t = REQUEST_TIMEOUT_S if timeout is None else max(0.0, float(timeout))
        self.server.submit(op, lambda status, value: self.reply(sender, req_id, (status, value)), t)

    def on_gcs_forward(self, sender: str, msg: tuple, frames: list) -> None:
        if self._from_daemon(sender) is None:
            return
        _, uid, op = msg
        if not isinstance(uid, bytes) or not isinstance(op, tuple) or not op:
            return
        self.server.submit(op, lambda status, value: self.node.send(sender, Msg.GCS_ANSWER, uid, status, value),
                           REQUEST_TIMEOUT_S, uid=uid, forwarded_in=True)

    def on_gcs_answer(self, sender: str, msg: tuple, frames: list) -> None:
        if self._from_daemon(sender) is None:
            return
        _, uid, status, value = msg
        self.server.on_answer(uid, status, value)

    def reply(self, peer: str, req_id: int, value: Any) -> None:
        self.node.send(peer, Msg.REPLY, req_id, value)

    def submit(self, op: tuple, done: Callable[[str, Any], None], timeout: float) -> None:
        """A request whose answer ``done(status, value)`` waits for (name claims and lookups)."""
        self.server.submit(op, done, timeout)

    def park(self, sender: str, msg: tuple, frames: list) -> None:
        """Keep an actor creation until its placement group is reserved (handled again then)."""
        self.parked.append((sender, msg, frames))

    def write(self, op: tuple, timeout: float = BACKGROUND_TIMEOUT_S) -> None:
        """A write nobody waits for (actor states, jobs, bundle acks)."""

        def done(status: str, value: Any) -> None:
            if status != "ok":
                log.warning("control store write %s failed: %s", op[0], value)

        self.server.submit(op, done, timeout)

    # --------------------------------------------------------------- clock

    def on_member_event(self, node_id: str, kind: str) -> None:
        if kind in ("dead", "left"):
            self.gone_since.setdefault(node_id, (time.monotonic(), kind == "left"))
        else:
            self.gone_since.pop(node_id, None)

    def tick(self, now: float) -> None:
        server = self.server
        if server.raft.lead == 0:
            # Not in the group yet (or it has no leader): gossip names the leader.
            best = None
            for p in self.node.peer_views().values():
                g = p.gcs
                if (g and g[0] == "leader" and isinstance(g[1], int) and p.state in ("alive", "suspect")
                        and (best is None or g[1] > best[0])):
                    best = (g[1], raft_id_of(p.node_id))
                    if p.address:
                        self.addresses[best[1]] = p.address
            server.leader_hint = best[1] if best else 0
        try:
            server.tick(now)
        except Exception:
            # Never let the control store take the node down; say what happened.
            log.error("control store error (the node keeps serving):\n%s", traceback.format_exc())
        if server.leader_work_due(now):
            views = []
            for p in self.node.peer_views().values():
                alive = p.state in ("alive", "suspect")
                since, left = self.gone_since.get(p.node_id, (now, p.state == "left"))
                views.append(NodeView(p.node_id, alive, 0.0 if alive else now - since, left, p.available))
            try:
                server.leader_work(now, views, self.node.resources.public_available(), DEAD_GRACE_S)
            except Exception:
                log.error("control store leader duty failed:\n%s", traceback.format_exc())
        if self.pgs_changed:
            self.pgs_changed = False
            try:
                self.reconcile_bundles()
                self._answer_pg_waiters()
                self.node.schedule()  # lease requests for a removed group are refused there
            except Exception:
                log.error("placement group bookkeeping failed:\n%s", traceback.format_exc())
            parked, self.parked = self.parked, []
            for sender, msg, frames in parked:
                try:
                    self.node.create_actor(sender, msg, frames)  # parks again if still not reserved
                except Exception:
                    log.error("dropped a parked actor creation from %s:\n%s", sender, traceback.format_exc())
            self.node.schedule()

    def seconds_to_tick(self, now: float) -> float:
        return self.server.seconds_to_tick(now)

    # -------------------------------------------------------------- status

    def gossip_meta(self) -> list:
        """[role, term, commit, leader node id] for gossip (and `mesh status` on other nodes)."""
        st = self.server.status()
        return [st["role"], st["term"], st["commit"], st["leader"] or ""]

    def hand_over(self, now: float) -> None:
        """This node is leaving: a leader hands leadership to another voter first (may_leave)."""
        if self.server.hand_over():
            log.info("leaving: handing the control store's leadership over")
            self.hand_over_until = now + HAND_OVER_S

    def may_leave(self, now: float) -> bool:
        """Whether leaving now costs the control store no election: not its leader any more
        (or the hand-over took longer than HAND_OVER_S: then an election it is)."""
        return not self.server.is_leader() or now >= self.hand_over_until

    def status(self) -> dict:
        st = self.server.status()
        return {"leader": st["leader"], "term": st["term"], "commit_index": st["commit"], "role": st["role"],
                "applied": st["applied"], "voters": st["voters"], "learners": st["learners"],
                "target_voters": st["target_voters"]}

    # ---------------------------------------------------- placement groups

    def _on_applied(self, op: tuple, result: Any) -> None:
        if op[0].startswith("pg_") or op[0] in ("node_dead", "restored"):
            self.pgs_changed = True

    def reconcile_bundles(self) -> None:
        """Make the bundles reserved here match the committed placement groups."""
        node_id = self.node.node_id
        pgs = self.server.state.pgs
        want = {}
        for pg in pgs.values():
            if pg.holds():
                for i, node in pg.nodes.items():
                    if node == node_id:
                        want[(pg.pg_id, i)] = pg
        for key in [k for k in self.bundles if k not in want]:
            self._release_bundle(key)
        replies: dict[tuple[str, int, bool], list[int]] = defaultdict(list)
        reasons: dict[tuple[str, int, bool], str] = {}
        for (pg_id, i), pg in sorted(want.items()):
            ok = True
            if (pg_id, i) not in self.bundles:
                shape = tuple(sorted((k, v) for k, v in pg.bundles[i].items() if v > 0))
                if (pg_id, pg.attempt, i) in self.answered:
                    continue  # refused for this attempt already
                ok = self.node.resources.fits(shape)
                if ok:
                    self._reserve_bundle(pg_id, i, pg.bundles[i])
                else:
                    reasons[(pg_id, pg.attempt, False)] = (
                        f"node {node_id} could not reserve bundle {i} {pg.bundles[i]} "
                        f"(free: {self.node.resources.public_available()}); retrying")
            if i in pg.acked or (pg_id, pg.attempt, i) in self.answered:
                continue
            self.answered.add((pg_id, pg.attempt, i))
            replies[(pg_id, pg.attempt, ok)].append(i)
        for (pg_id, attempt, ok), indexes in replies.items():
            self._ack(pg_id, attempt, indexes, ok, reasons.get((pg_id, attempt, ok), ""))
        live = {pg.pg_id for pg in pgs.values() if pg.state != "REMOVED"}
        self.answered = {a for a in self.answered if a[0] in live}

    def _ack(self, pg_id: str, attempt: int, indexes: list[int], ok: bool, reason: str) -> None:
        def done(status: str, value: Any) -> None:
            if status != "ok":
                # Not committed: forget that we answered, so the next pass answers again.
                self.answered -= {(pg_id, attempt, i) for i in indexes}
                self.pgs_changed = True

        op = ("pg_ack", pg_id, attempt, self.node.node_id, indexes, ok, reason)
        self.server.submit(op, done, BACKGROUND_TIMEOUT_S)

    def _reserve_bundle(self, pg_id: str, index: int, bundle: dict) -> None:
        self.node.resources.reserve_bundle(pg_id, index, bundle)
        self.bundles[(pg_id, index)] = dict(bundle)
        log.info("reserved bundle %d of placement group %s: %s", index, pg_id, bundle)

    def _release_bundle(self, key: tuple[str, int]) -> None:
        pg_id, index = key
        bundle = self.bundles.pop(key)
        last_here = not any(k[0] == pg_id for k in self.bundles)
        # Work still running in the bundle loses its place: stop it (as Ray does).
        doomed = {bundle_keys(pg_id, index, "bundle")[0]}
        if last_here:
            doomed.add(bundle_keys(pg_id, index, "bundle")[1])
        self.node.stop_work_using(doomed, f"its placement group {pg_id} was removed or re-placed")
        self.node.resources.return_bundle(pg_id, index, bundle, last_here)
        log.info("released bundle %d of placement group %s", index, pg_id)

    def _answer_pg_waiters(self) -> None:
        pgs = self.server.state.pgs
        for pg_id in list(self.pg_waiters):
            pg = pgs.get(pg_id)
            if pg is None or pg.state not in ("CREATED", "REMOVED"):
                continue
            status = "ok" if pg.state == "CREATED" else "error"
            value = pg.record() if pg.state == "CREATED" else f"placement group {pg_id} was removed"
            for sender, req_id in self.pg_waiters.pop(pg_id):
                self.reply(sender, req_id, (status, value))

    def group_state(self, pg_id: str) -> str:
        pg = self.server.state.pgs.get(pg_id)
        return pg.state if pg is not None else "UNKNOWN"

    def group_nodes(self, shape: tuple) -> tuple[str, ...] | None:
        """For a shape in a placement group: the node of each bundle by index, or None while the
        group is not created (work for it waits here); sched.placement decides from these."""
        group = group_of(shape)
        if group is None:
            return None
        pg = self.server.state.pgs.get(group[0])
        if pg is None or pg.state != "CREATED" or not pg.nodes:
            return None
        return tuple(pg.nodes.get(i, "") for i in range(max(pg.nodes) + 1))
