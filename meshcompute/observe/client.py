"""The subscriber side of the monitor feed (``mesh top``): Clone-pattern state and liveness.

:class:`MonitorState` is the pure part: a snapshot at sequence number ``seq``,
then updates applied strictly in order; an update at or below the current
sequence number is stale and dropped, one that skips a number means the state
can no longer be trusted (the client subscribes again for a fresh snapshot).

:class:`MonitorClient` owns the sockets: it subscribes to one daemon, renews the
subscription every second, and declares the feed dead after ``LIVENESS_BEATS``
heartbeat intervals without any message (the Paranoid Pirate rule); it then
subscribes to another member it knows from the state.  docs/observability.md
has the protocol as a specification.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import zmq

from ..host.netcheck import local_ip_towards
from ..wire.ids import random_id
from ..wire.messages import Msg, decode, encode
from ..wire.transport import Endpoint, node_of, parse_address, recv
from .feed import DEFAULT_TTL_S, HEARTBEAT_S, LIVENESS_BEATS

SUBSCRIBE_WAIT_S = 2.0
"""How long (s) a subscription may take to bring its snapshot before the next member is tried."""


class MonitorState:
    """A subscriber's copy of the feed: key -> value, at sequence number ``seq``."""

    def __init__(self) -> None:
        self.seq = -1  # no snapshot yet
        self.data: dict[str, Any] = {}
        self.stale = 0  # updates dropped for being at or below seq
        self.applied = 0
        self.generation = 0  # bumped by every snapshot (rates must not span two)

    def apply_snapshot(self, seq: int, snapshot: dict, moved: bool = False) -> None:
        """Take a snapshot. ``moved``: it comes from another member than the last one, which
        may never have heard of the actors of a node that died (a daemon follows other
        nodes' actors only while it serves a "mesh" view): those stay, shown DEAD."""
        old = self.data
        self.seq = int(seq)
        self.data = dict(snapshot)
        self.generation += 1
        if moved:
            nodes = {k[5:]: (v or {}).get("state") for k, v in self.data.items() if k.startswith("node/")}
            for key, actor in old.items():
                node_state = nodes.get((actor or {}).get("node"))
                if key.startswith("actor/") and key not in self.data and node_state not in ("alive", "suspect"):
                    if actor.get("state") != "DEAD":
                        actor = {**actor, "state": "DEAD", "pid": None,
                                 "reason": f"its node {'left' if node_state == 'left' else 'died'}"}
                    self.data[key] = actor

    def apply_update(self, seq: int, changes: list) -> str:
        """``"applied"``, ``"stale"`` (dropped), ``"gap"`` (resubscribe) or ``"no-snapshot"``."""
        if self.seq < 0:
            return "no-snapshot"
        if seq <= self.seq:
            self.stale += 1
            return "stale"
        if seq != self.seq + 1:
            return "gap"
        for key, value in changes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.seq = seq
        self.applied += 1
        return "applied"

    def nodes(self) -> list[dict]:
        return [v for k, v in self.data.items() if k.startswith("node/")]

    def actors(self) -> list[dict]:
        return [v for k, v in self.data.items() if k.startswith("actor/")]

    def control(self) -> dict:
        return self.data.get("control") or {"leader": None, "term": None, "commit_index": None}

    def finished_total(self) -> int:
        return sum(int((n.get("tasks") or {}).get("finished", 0)) for n in self.nodes())


class MonitorClient:
    """Subscribes to a daemon's monitor feed and keeps it alive (or moves elsewhere)."""

    def __init__(self, daemon_addr: str, keys: Any = None, ttl: float = DEFAULT_TTL_S,
                 scope: str = "mesh", session_dir: str | None = None) -> None:
        self.ttl = ttl
        self.scope = scope
        self.state = MonitorState()
        self.ctx = zmq.Context(io_threads=1)
        tcp = parse_address(daemon_addr)[2]
        host = None
        self._dir: str | None = None
        if tcp:
            host = local_ip_towards(tcp[len("tcp://"):].rpartition(":")[0]) or "0.0.0.0"
            node = "mon" + random_id()[:13]  # not a mesh node: every daemon answers over TCP
            self._dir = sock_dir = tempfile.mkdtemp(prefix="mesh-top-")
        else:
            # A node without TCP: we are a process of that node, reached over ipc
            # in its session dir.
            if session_dir is None:
                raise ValueError("a node without a TCP address is watched through its session dir")
            node, sock_dir = node_of(daemon_addr), session_dir
        self.ep = Endpoint(self.ctx, node, f"top_{random_id()}", sock_dir, host=host, port=0, keys=keys)
        self.target = daemon_addr
        self.watched: str | None = None  # node id of the daemon we hear from
        self.connected = False
        self.status = "connecting"
        self.failovers = 0
        self._req = 0
        self._pending_req: int | None = None
        self._subscribed_at = 0.0
        self._last_heard = 0.0
        self._last_renew = 0.0
        self._tried: list[str] = []
        self.subscribe(daemon_addr)

    @property
    def sockets(self) -> list:
        return self.ep.inboxes

    # ------------------------------------------------------------- subscribe

    def subscribe(self, addr: str) -> None:
        if self.target != addr and self.target:
            self.ep.forget(self.target)
        self.target = addr
        self._req += 1
        self._pending_req = self._req
        now = time.monotonic()
        self._subscribed_at = now
        self._last_heard = now
        self._last_renew = now
        self.connected = False
        self.status = f"connecting to {self._short(addr)}"
        try:
            self.ep.send(addr, [encode(Msg.MONITOR_SUBSCRIBE, self._req, self.scope, self.ttl)])
        except (ValueError, zmq.ZMQError):
            pass

    @staticmethod
    def _short(addr: str) -> str:
        tcp = parse_address(addr)[2]
        return tcp.replace("tcp://", "") if tcp else node_of(addr)[:8]

    def candidates(self) -> list[str]:
        """Other members to try, alive ones first, from what the state says."""
        nodes = sorted(self.state.nodes(), key=lambda n: (n.get("state") != "alive", n.get("node_id", "")))
        out = [n["address"] for n in nodes if n.get("address") and n.get("state") in ("alive", "suspect")
               and n["address"] != self.target and parse_address(n["address"])[2]]
        return [a for a in out if a not in self._tried] + [a for a in out if a in self._tried]

    def failover(self) -> None:
        self.failovers += 1
        self._tried.append(self.target)
        options = self.candidates()
        self.subscribe(options[0] if options else self.target)

    def close(self) -> None:
        try:
            if self.connected:
                self.ep.send(self.target, [encode(Msg.MONITOR_UNSUBSCRIBE)])
        except (ValueError, zmq.ZMQError):
            pass
        ipc_path = None
        if self._dir is None:  # our socket file in the node's session dir
            try:
                ipc_path = self.ep.inbox.getsockopt_string(zmq.LAST_ENDPOINT)[len("ipc://"):]
            except zmq.ZMQError:
                pass
        self.ep.close(linger=100)
        self.ctx.term()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        elif ipc_path:
            try:
                os.unlink(ipc_path)
            except OSError:
                pass

    # ------------------------------------------------------------------ I/O

    def poll(self, timeout: float, fds: tuple = ()) -> tuple[bool, list]:
        """Wait up to ``timeout`` s for messages (and ``fds``); returns (state changed, ready fds)."""
        poller = zmq.Poller()
        for s in self.sockets:
            poller.register(s, zmq.POLLIN)
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        events = dict(poller.poll(int(timeout * 1000)))
        changed = False
        for s in self.sockets:
            if s in events:
                changed |= self._drain(s)
        changed |= self.check(time.monotonic())
        return changed, [fd for fd in fds if fd in events]

    def _drain(self, sock) -> bool:
        changed = False
        for _ in range(1000):
            try:
                frames = recv(sock, zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            try:
                msg = decode(frames[1])
            except Exception:  # noqa: BLE001 - not for us
                continue
            changed |= self.handle(frames[0].decode(errors="replace"), msg)
        return changed

    def handle(self, sender: str, msg: tuple) -> bool:
        kind = msg[0]
        if sender != self.target:
            # Only the daemon we subscribed to counts (an old feed may still talk);
            # one reached as "peer/daemon@tcp://host:port" answers with its real name.
            if node_of(self.target) != "peer" or parse_address(sender)[2] != parse_address(self.target)[2]:
                return False
            self.target = sender
        if kind == Msg.MONITOR_SNAPSHOT:
            _, req_id, seq, snapshot = msg
            if req_id is not None and req_id != self._pending_req:
                return False
            self.state.apply_snapshot(seq, snapshot, moved=self.watched not in (None, node_of(sender)))
            self._pending_req = None
            self._last_heard = time.monotonic()
            self.connected = True
            self._tried = []
            self.watched = node_of(sender)
            self.status = f"watching {self.watched[:8]} at {self._short(sender)}"
            return True
        if kind == Msg.MONITOR_UPDATE:
            self._last_heard = time.monotonic()
            result = self.state.apply_update(msg[1], msg[2])
            if result == "gap":
                self.subscribe(self.target)
            return result == "applied"
        if kind == Msg.MONITOR_HEARTBEAT:
            self._last_heard = time.monotonic()
            if self.connected and msg[1] > self.state.seq:
                self.subscribe(self.target)  # updates were lost: resync
            return False
        return False

    def check(self, now: float) -> bool:
        """Renew the subscription; move to another member when the feed went quiet."""
        if self._pending_req is not None:
            if now - self._subscribed_at > SUBSCRIBE_WAIT_S:
                self.failover()
                return True
            return False
        if now - self._last_heard > LIVENESS_BEATS * HEARTBEAT_S:
            self.status = f"{self._short(self.target)} went quiet; moving"
            self.failover()
            return True
        if now - self._last_renew >= HEARTBEAT_S:
            self._last_renew = now
            try:
                self.ep.send(self.target, [encode(Msg.MONITOR_SUBSCRIBE, None, self.scope, self.ttl)])
            except (ValueError, zmq.ZMQError):
                pass
        return False


def connect(info: dict | None, address: str | None = None, token: str | None = None,
            ttl: float = DEFAULT_TTL_S) -> MonitorClient:
    """A client for a node of this host (``info``, its daemon.json) or any member by host:port."""
    from ..host.sessions import keys_for_session
    from ..wire.auth import MeshKeys

    if info is not None:
        keys = keys_for_session(info["session_dir"])
        return MonitorClient(info["address"], keys=keys, ttl=ttl, session_dir=info["session_dir"])
    if not address or not token:
        raise ValueError("a node of another host needs its host:port and the mesh token")
    hostport = address.replace("tcp://", "")
    return MonitorClient(f"peer/daemon@tcp://{hostport}", keys=MeshKeys.from_token(token), ttl=ttl)


def wait_for_snapshot(client: MonitorClient, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.poll(0.1)
        if client.connected:
            return True
    return False


__all__ = ["MonitorClient", "MonitorState", "connect", "wait_for_snapshot"]
