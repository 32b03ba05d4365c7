"""The daemon's monitor feed: a snapshot, then sequenced updates (the Clone pattern).

A subscriber (``mesh top``, or a peer daemon) sends ``MONITOR_SUBSCRIBE``; the
daemon answers ``MONITOR_SNAPSHOT(seq, state)`` and from then on pushes
``MONITOR_UPDATE(seq, changes)`` whenever something changed, with ``seq`` one more
than the previous message of that feed, and ``MONITOR_HEARTBEAT(seq)`` after a
second without updates.  The state is a flat key -> value map:

* ``node/<node_id>``: one node (state, CPU/memory/GPU use, store, task counts);
* ``actor/<actor_id hex>``: one actor (name, class, node, state, restarts);
* ``control``: the control store's leader, term and commit index.

Two scopes: ``"mesh"`` (every key; what ``mesh top`` asks for) and ``"node"``
(only this node's own record and actors; what a daemon asks its peers for, so
that it can serve the whole mesh to its own ``"mesh"`` subscribers).

Nothing here runs unless someone subscribes: with no subscriber the daemon keeps
no monitor state, samples nothing and talks to no peer.  See docs/observability.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..wire.messages import Msg
from ..wire.transport import node_of

log = logging.getLogger("meshcompute.daemon")

SAMPLE_S = float(os.environ.get("MESH_MONITOR_SAMPLE_S", "0.5"))
"""The daemon samples its own use (psutil, store, task counters) this often (s)
while someone watches; ``MESH_MONITOR_SAMPLE_S`` in the daemon's environment sets it."""
URGENT_S = 0.1
"""State changes (a node suspected or dead, an actor restarting) go out this soon (s)."""
HEARTBEAT_S = 1.0
"""A feed with nothing to say sends MONITOR_HEARTBEAT after this long (s)."""
DEFAULT_TTL_S = 5.0
"""A subscription not renewed for this long (s) is dropped."""
MAX_TTL_S = 60.0
EXPIRE_CHECK_S = 0.5
"""How often (s) subscriptions are checked for expiry."""
LIVENESS_BEATS = 3
"""A subscriber that heard nothing for this many heartbeats declares the feed dead."""
MAX_DEAD_ACTORS = 200
"""DEAD actors kept in the feed's state (the newest ones)."""

SCOPES = ("mesh", "node")


@dataclass
class Subscriber:
    addr: str
    scope: str
    ttl: float
    expires: float


@dataclass
class PeerFeed:
    """This daemon's own subscription to a peer daemon's node-scope feed."""

    node_id: str
    addr: str
    req_id: int
    last_heard: float
    last_renew: float
    seq: int = -1  # -1 until the snapshot arrived
    record: dict = field(default_factory=dict)  # the peer's own node record
    actors: set = field(default_factory=set)  # keys of the peer's actors


@dataclass(frozen=True)
class FeedSource:
    """Everything the feed reads from (and does through) its node, and nothing more."""

    node_id: str
    address: Callable[[], str]
    send: Callable[..., None]  # send(address, Msg, *fields)
    forget: Callable[[str], None]  # close the connection to an address
    is_local_process: Callable[[str], bool]  # registered with this daemon
    peer_views: Callable[[], dict]  # gossip's view of the other nodes, by node id
    control_status: Callable[[], dict]
    actors: Callable[[], Iterable[Any]]  # the node's Actor records (node/actors.py)
    actor_pid: Callable[[Any], int | None]
    pids: Callable[[], list[int]]  # the node's processes besides the daemon (zygote, workers)
    usage: Callable[[], dict]  # resources, store, task counters: see Daemon.usage (node/daemon.py)


class MonitorFeed:
    def __init__(self, node: FeedSource) -> None:
        self.node = node
        self.subs: dict[str, Subscriber] = {}
        self.seq = {"mesh": 0, "node": 0}
        self.state: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.urgent = False
        self.active = False
        self.peers: dict[str, PeerFeed] = {}
        self._last_sent = {"mesh": 0.0, "node": 0.0}
        self._next_sample = 0.0
        self._next_flush = 0.0
        self._last_flush = 0.0
        self._next_expire = 0.0
        self._procs: dict[int, psutil.Process] = {}
        self._fed_last: dict[str, dict] = {}  # the last record each peer sent
        self._req_ids = 0
        self._gpu: Any = None
        self._gpu_checked = False

    # --------------------------------------------------------------- subscribers

    def has(self, scope: str) -> bool:
        return any(s.scope == scope for s in self.subs.values())

    def on_subscribe(self, sender: str, msg: tuple) -> None:
        _, req_id, scope, ttl = msg
        if scope not in SCOPES:
            scope = "mesh"
        try:
            ttl = min(MAX_TTL_S, max(1.0, float(ttl)))
        except (TypeError, ValueError):
            ttl = DEFAULT_TTL_S
        now = time.monotonic()
        sub = self.subs.get(sender)
        if sub is not None and req_id is None and sub.scope == scope:
            sub.expires = now + ttl  # a renewal: no new snapshot
            sub.ttl = ttl
            return
        if not self.active:
            self._activate(now)
        else:
            self.flush(now)  # what is pending goes to the others first: the snapshot is at seq
        self.subs[sender] = Subscriber(sender, scope, ttl, now + ttl)
        if scope == "mesh":
            self._start_peer_feeds(now)
        self.node.send(sender, Msg.MONITOR_SNAPSHOT, req_id, self.seq[scope], self.view(scope))

    def on_unsubscribe(self, sender: str) -> None:
        self.drop(sender)

    def drop(self, addr: str) -> None:
        sub = self.subs.pop(addr, None)
        if sub is None:
            return
        d = self.node
        # Close the connection to a client that is not one of ours (mesh top on
        # any host); peer daemons and local processes keep theirs.
        if sub.scope == "mesh" and not d.is_local_process(addr) and node_of(addr) not in d.peer_views():
            d.forget(addr)
        if not self.has("mesh"):
            self._stop_peer_feeds()
        if not self.subs:
            self._deactivate()

    def node_gone(self, node_id: str, state: str) -> None:
        for addr in [a for a in self.subs if node_of(a) == node_id]:
            self.drop(addr)
        if not self.active:
            return
        self.peers.pop(node_id, None)
        key = f"node/{node_id}"
        rec = self.state.get(key)
        if rec is not None:
            self._set(key, {**rec, "state": state}, urgent=True)
        for k, v in list(self.state.items()):
            if k.startswith("actor/") and v and v.get("node") == node_id and v.get("state") != "DEAD":
                self._set(k, {**v, "state": "DEAD", "reason": f"its node {state == 'left' and 'left' or 'died'}"})

    # --------------------------------------------------------------- state

    def view(self, scope: str) -> dict:
        if scope == "mesh":
            return dict(self.state)
        return {k: v for k, v in self.state.items() if self._own(k, v)}

    def _own(self, key: str, value: Any) -> bool:
        if key.startswith("node/"):
            return key[5:] == self.node.node_id
        if key.startswith("actor/"):
            return bool(value) and value.get("node") == self.node.node_id
        return False

    def _set(self, key: str, value: Any, urgent: bool = False) -> None:
        if (key in self.state and self.state[key] == value) or (value is None and key not in self.state):
            return
        if value is None:
            self.state.pop(key, None)
        else:
            self.state[key] = value
        self.pending[key] = value
        if urgent:
            self.urgent = True

    def _activate(self, now: float) -> None:
        self.active = True
        self.state.clear()
        self.pending.clear()
        psutil.cpu_percent(None)  # starts the host CPU measurement interval
        self._set(f"node/{self.node.node_id}", self._sample_self())
        self._set("control", self.node.control_status())
        for p in self.node.peer_views().values():
            self._set(f"node/{p.node_id}", self._peer_record(p))
        for a in self.node.actors():
            self._set(f"actor/{a.actor_id.hex()}", self._actor_record(a))
        self._trim_dead_actors()
        self.pending.clear()  # all of it is in the first snapshot
        self._next_sample = now + SAMPLE_S

    def _deactivate(self) -> None:
        self.active = False
        self.state.clear()
        self.pending.clear()
        self._procs.clear()
        self._fed_last.clear()
        self._stop_peer_feeds()

    # ---------------------------------------------------------------- records

    def actor_changed(self, a: Any) -> None:
        if self.active:
            self._set(f"actor/{a.actor_id.hex()}", self._actor_record(a), urgent=True)

    def _actor_record(self, a: Any) -> dict:
        return {
            "actor_id": a.actor_id.hex(), "name": a.name or "", "class": a.spec.get("class_name", "?"),
            "node": self.node.node_id, "state": a.state, "restarts": a.restarts,
            "pid": self.node.actor_pid(a), "namespace": a.namespace,
            "reason": a.reason if a.state == "DEAD" else "",
        }

    def _trim_dead_actors(self) -> None:
        dead = [k for k, v in self.state.items() if k.startswith("actor/") and v and v.get("state") == "DEAD"]
        for k in dead[:max(0, len(dead) - MAX_DEAD_ACTORS)]:
            self._set(k, None)

    def _gpu_util(self) -> float | None:
        """GPU utilisation in percent through NVML when it is installed (else None)."""
        if not self._gpu_checked:
            self._gpu_checked = True
            if self.node.usage()["total"].get("GPU"):
                try:
                    import pynvml  # type: ignore[import-not-found]

                    pynvml.nvmlInit()
                    self._gpu = pynvml
                except Exception:  # noqa: BLE001 - optional
                    self._gpu = None
        if self._gpu is None:
            return None
        try:
            n = self._gpu.nvmlDeviceGetCount()
            utils = [self._gpu.nvmlDeviceGetUtilizationRates(self._gpu.nvmlDeviceGetHandleByIndex(i)).gpu
                     for i in range(n)]
            return round(sum(utils) / max(1, len(utils)), 1)
        except Exception:  # noqa: BLE001
            return None

    def _sample_self(self) -> dict:
        d = self.node
        pids = [os.getpid()] + d.pids()
        cores = 0.0
        rss = 0
        seen = set()
        for pid in pids:
            if not pid or pid in seen:
                continue
            seen.add(pid)
            p = self._procs.get(pid)
            try:
                if p is None:
                    p = self._procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)
                cores += p.cpu_percent(None) / 100.0
                rss += p.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        for pid in [p for p in self._procs if p not in seen]:
            del self._procs[pid]
        vm = psutil.virtual_memory()
        u = d.usage()
        store = u["store"]
        # Coarse steps, so that an idle node's record stays the same and its feed
        # goes quiet (heartbeats only) instead of sending noise twice a second.
        mib8 = 8 << 20
        total, avail = u["total"], u["available"]
        return {
            "node_id": d.node_id,
            "address": d.address(),
            "state": "alive",
            "pid": os.getpid(),
            "cpu": {"node_cores": round(cores, 1), "host_percent": 5 * round(psutil.cpu_percent(None) / 5),
                    "total": total.get("CPU", 0.0),
                    "allocated": round(total.get("CPU", 0.0) - avail.get("CPU", 0.0), 3)},
            "mem": {"node_rss": rss // mib8 * mib8, "host_used": (vm.total - vm.available) // (8 * mib8) * (8 * mib8),
                    "host_total": vm.total, "total": total.get("memory", 0.0)},
            "gpu": {"total": total.get("GPU", 0.0),
                    "allocated": round(total.get("GPU", 0.0) - avail.get("GPU", 0.0), 3),
                    "util": self._gpu_util()},
            "store": store,
            "tasks": u["tasks"],
            "workers": u["workers"],
            "actors": sum(1 for a in d.actors() if a.state == "ALIVE"),
            "pending_leases": u["pending_leases"],
            "resources_total": {k: v for k, v in total.items() if not k.startswith("node:")},
            "resources_available": {k: round(max(0.0, v), 3) for k, v in avail.items()
                                    if not k.startswith("node:")},
        }

    def _peer_record(self, p: Any) -> dict:
        """A peer as this daemon knows it: gossip's view, overlaid by its own feed."""
        rec = {
            "node_id": p.node_id, "address": p.address, "state": p.state,
            "resources_total": p.total, "resources_available": p.available,
            "store": {"used": p.store[0], "capacity": p.store[1]} if p.store else {},
            "pending_leases": p.queue,
        }
        feed = self.peers.get(p.node_id)
        if feed is not None and feed.record:
            rec.update({k: v for k, v in feed.record.items() if k != "state"})
        elif p.node_id in self._fed_last:
            # Gone (or not heard yet): what it measured goes stale, what it did stays.
            rec["tasks"] = self._fed_last[p.node_id].get("tasks", {})
        rec["state"] = p.state  # membership decides, not the peer
        return rec

    # ---------------------------------------------------------------- peers

    def _next_req(self) -> int:
        self._req_ids += 1
        return self._req_ids

    def _start_peer_feeds(self, now: float) -> None:
        for p in self.node.peer_views().values():
            if p.state in ("alive", "suspect") and p.address and p.node_id not in self.peers:
                self._subscribe_peer(p.node_id, p.address, now)

    def _subscribe_peer(self, node_id: str, addr: str, now: float) -> None:
        feed = PeerFeed(node_id, addr, self._next_req(), last_heard=now, last_renew=now)
        self.peers[node_id] = feed
        self.node.send(addr, Msg.MONITOR_SUBSCRIBE, feed.req_id, "node", DEFAULT_TTL_S)

    def _stop_peer_feeds(self) -> None:
        for feed in self.peers.values():
            try:
                self.node.send(feed.addr, Msg.MONITOR_UNSUBSCRIBE)
            except Exception:  # noqa: BLE001 - best effort
                pass
        self.peers.clear()

    def _feed_from(self, sender: str) -> PeerFeed | None:
        feed = self.peers.get(node_of(sender))
        return feed if feed is not None and feed.addr == sender else None

    def on_snapshot(self, sender: str, msg: tuple) -> None:
        _, req_id, seq, snapshot = msg
        feed = self._feed_from(sender)
        if feed is None or (req_id is not None and req_id != feed.req_id):
            return
        feed.seq = seq
        feed.last_heard = time.monotonic()
        for key in feed.actors - set(snapshot):
            self._set(key, None)
        feed.actors = set()
        self._merge(feed, list(snapshot.items()))

    def on_update(self, sender: str, msg: tuple) -> None:
        _, seq, changes = msg
        feed = self._feed_from(sender)
        if feed is None or feed.seq < 0:
            return
        feed.last_heard = time.monotonic()
        if seq <= feed.seq:
            return  # stale: already in the snapshot
        if seq != feed.seq + 1:  # a gap: start over with a fresh snapshot
            self._subscribe_peer(feed.node_id, feed.addr, time.monotonic())
            return
        feed.seq = seq
        self._merge(feed, changes)

    def on_heartbeat(self, sender: str, msg: tuple) -> None:
        feed = self._feed_from(sender)
        if feed is not None:
            feed.last_heard = time.monotonic()
            if feed.seq >= 0 and msg[1] > feed.seq:  # it moved on without us: resync
                self._subscribe_peer(feed.node_id, feed.addr, time.monotonic())

    def _merge(self, feed: PeerFeed, changes: list) -> None:
        if not self.active:
            return
        for key, value in changes:
            if key == f"node/{feed.node_id}":
                feed.record = value or {}
                self._fed_last[feed.node_id] = feed.record
                p = self.node.peer_views().get(feed.node_id)
                if p is not None:
                    self._set(key, self._peer_record(p))
            elif key.startswith("actor/"):
                if value is None:
                    feed.actors.discard(key)
                else:
                    feed.actors.add(key)
                self._set(key, value, urgent=True)

    def on_member_events(self, events: list) -> None:
        if not self.active:
            return
        from ..gossip import EventKind

        views = self.node.peer_views()
        now = time.monotonic()
        for ev in events:
            if ev.node == self.node.node_id:
                continue
            p = views.get(ev.node)
            if p is not None:
                self._set(f"node/{ev.node}", self._peer_record(p),
                          urgent=ev.kind != EventKind.META_UPDATED)
            if (ev.kind in (EventKind.JOINED, EventKind.ALIVE) and self.has("mesh") and p is not None
                    and p.address and ev.node not in self.peers):
                self._subscribe_peer(ev.node, p.address, now)

    # ---------------------------------------------------------------- the loop

    def tick(self, now: float) -> None:
        """Called by the daemon's loop (at least every 100 ms) while active."""
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_CHECK_S
            for sub in [s for s in self.subs.values() if s.expires < now]:
                log.info("monitor subscriber %s did not renew; dropped", sub.addr)
                self.drop(sub.addr)
            if not self.active:
                return
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_S
            self._sample(now)
        if self.pending and (now >= self._next_flush or (self.urgent and now >= self._last_flush + URGENT_S)):
            self.flush(now)
        for scope in SCOPES:
            if now - self._last_sent[scope] >= HEARTBEAT_S:
                self._last_sent[scope] = now
                for sub in list(self.subs.values()):
                    if sub.scope == scope:
                        self.node.send(sub.addr, Msg.MONITOR_HEARTBEAT, self.seq[scope])

    def _sample(self, now: float) -> None:
        self._set(f"node/{self.node.node_id}", self._sample_self())
        self._set("control", self.node.control_status())
        views = self.node.peer_views()
        for p in views.values():
            self._set(f"node/{p.node_id}", self._peer_record(p))
        for node_id, feed in list(self.peers.items()):
            p = views.get(node_id)
            if p is None or p.state not in ("alive", "suspect"):
                self.peers.pop(node_id, None)
                continue
            if now - feed.last_heard > LIVENESS_BEATS * HEARTBEAT_S:
                self._subscribe_peer(node_id, p.address or feed.addr, now)
            elif now - feed.last_renew >= HEARTBEAT_S:
                feed.last_renew = now
                self.node.send(feed.addr, Msg.MONITOR_SUBSCRIBE, None, "node", DEFAULT_TTL_S)
        if self.has("mesh"):
            self._start_peer_feeds(now)
        self._trim_dead_actors()

    def flush(self, now: float) -> None:
        self.urgent = False
        self._next_flush = now + SAMPLE_S
        self._last_flush = now
        if not self.pending:
            return
        changes = list(self.pending.items())
        self.pending.clear()
        for scope in SCOPES:
            subs = [s for s in self.subs.values() if s.scope == scope]
            part = changes if scope == "mesh" else [(k, v) for k, v in changes if self._own(k, v)]
            if not subs or not part:
                continue
            self.seq[scope] += 1
            self._last_sent[scope] = now
            for sub in subs:
                self.node.send(sub.addr, Msg.MONITOR_UPDATE, self.seq[scope], part)
