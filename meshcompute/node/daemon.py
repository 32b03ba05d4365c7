"""The node daemon: resources, leases, the worker pool, actors and the store table.

One per node, single-threaded: one loop polls the inbox, the zygote's event pipe
and a timer (besides, one low-priority thread pre-allocates the arena's warm
region at start: meshcompute/store/shm.py).  It is *not* on the per-task path: owners lease a worker for a
resource shape and push tasks to it directly; the daemon only grants leases,
takes them back, and tells a lease holder when its worker dies.

Run as ``python -m meshcompute.node.daemon --session DIR ...``; ``init()``
does that for an embedded node, ``mesh start`` for a standing one.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import itertools
import json
import logging
import mmap
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import lz4.block
import psutil
import zmq

from ..host.sessions import (
    arena_path,
    clean_stale_sessions,
    describe_exit,
    keys_for_session,
    pid_alive,
    remove_session,
    set_parent_death_signal,
)
from ..observe.feed import MonitorFeed
from ..sched.bundles import gpu_amount, group_of, is_public
from ..store.shm import ArenaWarmer
from ..store.table import StoreFull, StoreTable, spill_dir_for
from ..wire import ids
from ..wire.messages import Msg, decode, describe, encode
from ..wire.transport import Endpoint, make_address, node_of, parse_address

log = logging.getLogger("meshcompute.daemon")

LIVENESS_PERIOD_S = 0.5
"""How often (s) the daemon checks that drivers (and its own parent) are alive."""
IDLE_WORKER_TTL_S = 1.0
"""Idle workers beyond the node's CPU count are stopped after this long (s), as in Ray."""
PULL_CHUNK_BYTES = 8 << 20
"""Bytes per chunk of an object pull: large enough to amortise a message, small
enough that a window of them stays modest."""
PULL_WINDOW = 4
"""Chunk requests a pull keeps in flight (the credit window)."""
NODE_CLEANUP_GRACE_S = 10.0
"""How long (s) after a peer is declared dead what its processes hold here is kept,
in case the declaration was wrong (a loaded machine) and the peer refutes it."""
VIEW_PERIOD_S = 0.2
"""How often (s) the daemon checks whether its gossiped resource view changed."""
DEFAULT_STORE_FRACTION = 0.3
"""Default store capacity as a share of RAM: Ray's default, leaving 70% for the
heaps of the driver and workers; also capped by /dev/shm's free space."""
PREFAULT_MAX = 512 << 20
"""At most this much of the arena is pre-allocated in the background (a quarter
of the capacity below 2 GiB); ``MESH_STORE_PREFAULT`` (bytes, 0 = off) overrides."""


def default_prefault(capacity: int) -> int:
    env = os.environ.get("MESH_STORE_PREFAULT")
    if env is not None:
        return max(0, min(int(env), capacity))
    return min(capacity // 4, PREFAULT_MAX)


def default_store_capacity() -> int:
    total = psutil.virtual_memory().total
    try:
        st = os.statvfs("/dev/shm")
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = total
    return int(min(total * DEFAULT_STORE_FRACTION, shm_free * 0.9))


def detect_gpus() -> int:
    """Count NVIDIA GPUs from their device nodes (cheap; no driver library needed)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    try:
        return len([n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()])
    except OSError:
        return 0


@dataclass
class Worker:
    worker_id: str
    pid: int = 0
    addr: str = ""
    state: str = "starting"  # starting | idle | leased | actor | dead
    lease_id: bytes | None = None
    actor_id: bytes | None = None
    blocked: bool = False
    idle_since: float = 0.0
    expected_exit: bool = False


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


@dataclass
class Pull:
    """An object being copied into this node's store from another node."""

    oid: bytes
    source: str  # the daemon that holds it
    offset: int  # where it goes in our arena
    size: int
    next_offset: int = 0
    inflight: int = 0
    received: int = 0
    waiters: list = field(default_factory=list)  # (reader, req_id) to answer when done


@dataclass
class Gather:
    """A request answered from several processes (workers, peer daemons) at once."""

    requester: str
    req_id: int
    parts: list
    waiting: set
    deadline: float
    combine: Any  # parts -> the value of the REPLY


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


class Daemon:
    def __init__(self, session_dir: str, num_cpus: float, num_gpus: int, resources: dict,
                 store_capacity: int, parent_pid: int, node_id: str, spill_dir: str | None = None,
                 host: str | None = None, port: int = 0, keys: Any = None, gcs_voters: int = 3) -> None:
        self.session_dir = session_dir
        self.node_id = node_id
        self.parent_pid = parent_pid
        self.host = host
        self.port = port
        self.keys = keys
        # The canonical address is known once the TCP port is bound (serve()).
        self.address = make_address(node_id, "daemon")
        self.total: dict[str, float] = {"CPU": float(num_cpus)}
        if num_gpus:
            self.total["GPU"] = float(num_gpus)
        mem = psutil.virtual_memory().total
        self.total["memory"] = float(max(0, mem - store_capacity))
        self.total["object_store_memory"] = float(store_capacity)
        for k, v in (resources or {}).items():
            self.total[k] = float(v)
        self.total[f"node:{node_id}"] = 1.0
        self.available = dict(self.total)
        self.gpu_free = {i: 1.0 for i in range(int(num_gpus))}
        self.store_capacity = store_capacity
        self.store_path = arena_path(session_dir)
        self.spill_dir = spill_dir if spill_dir is not None else spill_dir_for(session_dir)
        self.store = StoreTable(store_capacity, -1, self.spill_dir, node_id)
        self.warmer: ArenaWarmer | None = None
        self.workers: dict[str, Worker] = {}
        self.worker_by_addr: dict[str, Worker] = {}
        self.worker_by_pid: dict[int, Worker] = {}
        self.leases: dict[bytes, Lease] = {}
        self.pending: collections.deque[LeaseRequest] = collections.deque()
        self.pending_actors: collections.deque[Actor] = collections.deque()
        self.actors: dict[bytes, Actor] = {}
        self.drivers: dict[str, int] = {}  # addr -> pid
        self.processes: dict[str, int] = {}  # every registered process: addr -> pid
        self.starting = 0
        self.num_cpus = num_cpus
        self.running = True
        self.started_at = time.time()
        self._last_revoke = 0.0
        self.membership: Any = None
        self.standalone = False
        self.pulls: dict[bytes, Pull] = {}
        self.spilled_to: dict[str, tuple[float, int]] = {}  # peer -> (last time, recent count)
        self.spread_counts: dict[str, int] = {}  # SPREAD placements per node
        self.announced: dict[str, str] = {}  # peer node id -> daemon address our processes were told
        self.gone_nodes: dict[str, float] = {}  # dead/left peers -> when to release what they hold here
        self.copy_holders: dict[bytes, set[str]] = {}  # daemons that pulled our primaries
        self.compressed: dict[bytes, bool] = {}  # objects we send lz4-compressed
        self.monitor = MonitorFeed(self)
        self.proc_stats: dict[str, dict] = {}  # addr -> the process's last TASK_STATS
        self.finished_base = 0  # tasks finished by processes that are gone
        self.gathers: dict[int, Gather] = {}  # sub-request id -> its gather
        self._sub_req_ids = itertools.count(1)
        self.gcs_voters = gcs_voters
        self.control: Any = None  # the control store shell (control.py), once serving

    # ----------------------------------------------------------------- set-up

    def create_arena(self) -> None:
        fd = os.open(self.store_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, self.store_capacity)
        # Held for the daemon's life: clean_stale_sessions() leaves locked arenas alone.
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Spill and restore copy through it with pread/pwrite (object pulls use a mapping).
        self.store.arena_fd = fd

    def start_zygote(self) -> None:
        """Fork the zygote now, while this process has no threads or sockets."""
        from ..worker.zygote import run_zygote

        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(cmd_w)
            os.close(evt_r)
            if self.store.arena_fd >= 0:
                os.close(self.store.arena_fd)  # the daemon's alone (the lock stays the daemon's)
            try:
                run_zygote(cmd_r, evt_w, self.session_dir, self.node_id, self.host)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(evt_w)
        self.zygote_pid = pid
        self.zygote_cmd = cmd_w
        self.zygote_evt = evt_r
        os.set_blocking(evt_r, False)
        self._evt_buf = b""

    def serve(self, ready_fd: int | None) -> None:
        fd = os.open(self.store_path, os.O_RDWR)
        self.arena = mmap.mmap(fd, self.store_capacity)
        os.close(fd)
        self.arena_mv = memoryview(self.arena)
        self.ctx = zmq.Context(io_threads=1)
        self.ep = Endpoint(self.ctx, self.node_id, "daemon", self.session_dir, host=self.host,
                           port=self.port, keys=self.keys)
        self.address = self.ep.address
        # Workers learn the daemon's address from a file: it exists only now.
        with open(os.path.join(self.session_dir, "daemon.addr"), "w") as f:
            f.write(self.address)
        for _ in range(int(self.num_cpus)):
            self.fork_worker()
        from ..gcs.shell import Control

        # The first node of a mesh starts the control store; joiners are added by its leader.
        self.control = Control(self, None if getattr(self, "seeds", []) else self.gcs_voters)
        self.control.write(("node_add", self.node_id, {"address": self.address, "host": self.host,
                                                       "resources": self.public_total()}))
        if self.host is not None:
            self.start_membership(getattr(self, "seeds", []))
        info = {"pid": os.getpid(), "address": self.address, "node_id": self.node_id,
                "host": self.host, "tcp": parse_address(self.address)[2], "standalone": self.standalone,
                "session_dir": self.session_dir, "store_path": self.store_path,
                "store_capacity": self.store_capacity, "resources": self.total,
                "spill_dir": self.spill_dir}
        with open(os.path.join(self.session_dir, "daemon.json"), "w") as f:
            json.dump(info, f)
        if ready_fd is not None:
            os.write(ready_fd, (json.dumps(info) + "\n").encode())
            os.close(ready_fd)
        # Started only now: the daemon must not have threads when it forks the zygote.
        self.warmer = ArenaWarmer(self.store_path, default_prefault(self.store_capacity))
        self.warmer.start()
        self.loop()

    def fork_worker(self) -> Worker:
        wid = ids.random_id()
        w = Worker(wid)
        self.workers[wid] = w
        self.starting += 1
        os.write(self.zygote_cmd, f"F {wid}\n".encode())
        return w

    # ------------------------------------------------------------------- loop

    def loop(self) -> None:
        poller = zmq.Poller()
        for inbox in self.ep.inboxes:
            poller.register(inbox, zmq.POLLIN)
        poller.register(self.zygote_evt, zmq.POLLIN)
        handlers = self._handlers()
        next_check = time.monotonic() + LIVENESS_PERIOD_S
        next_view = 0.0
        while self.running:
            timeout = min(100, int(self.control.seconds_to_tick(time.monotonic()) * 1000) + 1)
            if self.membership is not None:
                timeout = min(timeout, int(self.membership.seconds_to_deadline() * 1000) + 1)
            events = dict(poller.poll(timeout))
            for inbox in self.ep.inboxes:
                if inbox in events:
                    for _ in range(1000):
                        try:
                            frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._dispatch(frames, handlers)
            if self.zygote_evt in events:
                self._read_zygote()
            now = time.monotonic()
            if self.membership is not None:
                self.on_member_events(self.membership.tick())
                if now >= next_view:
                    next_view = now + VIEW_PERIOD_S
                    self.on_member_events(self.membership.maybe_update_view())
            if now >= next_check:
                next_check = now + LIVENESS_PERIOD_S
                self._check_liveness()
            self.control.tick(now)
            if self.monitor.active:
                self.monitor.tick(now)
            if self.gathers:
                self._expire_gathers(now)

    # ------------------------------------------------------------ membership

    def start_membership(self, seeds: list[str]) -> None:
        from ..gossip.shell import Membership

        tcp = parse_address(self.address)[2]
        self.swim_addr = tcp[len("tcp://"):]
        self.membership = Membership(self.node_id, self.swim_addr, self.local_view, self.send_gossip)
        self.on_member_events(self.membership.join(seeds))

    def send_gossip(self, dest: str, data: bytes) -> None:
        try:
            self.ep.send(make_address("peer", "daemon", f"tcp://{dest}"), [encode(Msg.GOSSIP, data)])
        except (ValueError, zmq.ZMQError) as e:
            log.warning("cannot send gossip to %s: %s", dest, e)

    def local_view(self) -> dict:
        """Our resource view, as gossiped (kept small: SWIM meta is at most 1 KiB)."""
        return {
            "a": self.address,
            "t": self.public_total(),
            "v": {k: round(v, 3) for k, v in self.public_available().items()},
            "s": [self.store.allocator.used, self.store_capacity],
            "q": len(self.pending),
            "g": self.control.gossip_meta() if self.control is not None else [],
        }

    def public_total(self) -> dict:
        """Total resources, without the node: marker and placement group bundles."""
        return {k: v for k, v in self.total.items() if is_public(k)}

    def public_available(self) -> dict:
        """Free resources outside placement group bundles (what gossip shows, what bundles go into)."""
        return {k: max(0.0, v) for k, v in self.available.items() if is_public(k)}

    def on_gossip(self, sender: str, msg: tuple, frames: list) -> None:
        tcp = parse_address(sender)[2]
        if self.membership is None or not tcp:
            return
        self.on_member_events(self.membership.on_packet(tcp[len("tcp://"):], msg[1]))

    def on_member_events(self, events: list) -> None:
        if not events:
            return
        from ..gossip import EventKind

        changed = False
        for ev in events:
            log.info("membership: %s %s at %s", ev.kind.value, ev.node, ev.addr)
            if self.control is not None:
                self.control.on_member_event(ev.node, ev.kind.value)
            if ev.kind in (EventKind.DEAD, EventKind.LEFT):
                self.node_gone(ev.node, ev.kind.value)
            changed = True
        self.announce_nodes()
        self.monitor.on_member_events(events)
        if changed:
            self.schedule()

    def announce_nodes(self) -> None:
        """Tell our processes each alive peer's daemon address (NODE_STATE "alive"), once per
        change: owners ask the daemon of a node they choose (affinity, locality) directly."""
        for p in self.peer_views().values():
            if p.state in ("alive", "suspect") and p.address and self.announced.get(p.node_id) != p.address:
                self.announced[p.node_id] = p.address
                for addr in [a for a in self.processes if node_of(a) == self.node_id]:
                    self.send(addr, Msg.NODE_STATE, p.node_id, "alive", p.address)

    def node_gone(self, node_id: str, state: str) -> None:
        """A peer died or left.

        Scheduling reacts at once: its resources leave our view, our processes
        hear of it (their work there fails over), pulls from it fail.  What its
        processes hold *here* (pins, leases, actors they own) is released only
        after NODE_CLEANUP_GRACE_S, and not at all if it comes back: on a loaded
        machine gossip can suspect a live node, and destroying its work for that
        would turn a slow moment into lost work.
        """
        self.monitor.node_gone(node_id, state)
        for addr in list(self.processes):
            if node_of(addr) == self.node_id:
                self.send(addr, Msg.NODE_STATE, node_id, state, None)
        self.announced.pop(node_id, None)
        for p in [p for p in self.pulls.values() if node_of(p.source) == node_id]:
            self._finish_pull(p, ok=False)
        self.gone_nodes[node_id] = time.monotonic() + NODE_CLEANUP_GRACE_S

    def _cleanup_gone_nodes(self) -> None:
        now = time.monotonic()
        peers = self.peer_views()
        for node_id, when in list(self.gone_nodes.items()):
            peer = peers.get(node_id)
            if peer is not None and peer.state in ("alive", "suspect"):
                del self.gone_nodes[node_id]  # it came back
            elif now >= when:
                del self.gone_nodes[node_id]
                for addr in [a for a in list(self.processes) + list(self.ep.out) if node_of(a) == node_id]:
                    self.process_gone(addr)
                for a in self.actors.values():
                    a.subscribers = {s for s in a.subscribers if node_of(s) != node_id}

    def peer_views(self) -> dict:
        return self.membership.peers() if self.membership is not None else {}

    def _dispatch(self, frames: list, handlers: dict) -> None:
        sender = frames[0].bytes.decode(errors="replace")
        try:
            msg = decode(frames[1].bytes)
            handler = handlers[msg[0]]
        except Exception:
            log.warning("dropped a malformed message from %s", sender)
            return
        try:
            handler(sender, msg, frames[2:])
        except Exception:
            log.error("error handling %s from %s:\n%s", describe(msg), sender, traceback.format_exc())

    def _handlers(self) -> dict:
        return {
            Msg.REGISTER: self.on_register,
            Msg.REQUEST_LEASE: self.on_request_lease,
            Msg.CANCEL_LEASE_REQUEST: self.on_cancel_lease_request,
            Msg.RETURN_LEASE: self.on_return_lease,
            Msg.BLOCKED: self.on_blocked,
            Msg.UNBLOCKED: self.on_unblocked,
            Msg.CREATE_ACTOR: self.on_create_actor,
            Msg.SUBSCRIBE_ACTOR: self.on_subscribe_actor,
            Msg.KILL_ACTOR: self.on_kill_actor,
            Msg.LOOKUP_ACTOR: self.on_lookup_actor,
            Msg.ACTOR_READY: self.on_actor_ready,
            Msg.STORE_CREATE: self.on_store_create,
            Msg.STORE_SEAL: self.on_store_seal,
            Msg.STORE_PIN: self.on_store_pin,
            Msg.STORE_UNPIN: self.on_store_unpin,
            Msg.STORE_FREE: self.on_store_free,
            Msg.KILL_WORKER: self.on_kill_worker,
            Msg.NODE_INFO: self.on_node_info,
            Msg.GOSSIP: self.on_gossip,
            Msg.PULL_CHUNK: self.on_pull_chunk,
            Msg.CHUNK_DATA: self.on_chunk_data,
            Msg.PULL_DONE: self.on_pull_done,
            Msg.REPLY: self.on_reply,
            Msg.MONITOR_SUBSCRIBE: lambda sender, msg, frames: self.monitor.on_subscribe(sender, msg),
            Msg.MONITOR_UNSUBSCRIBE: lambda sender, msg, frames: self.monitor.on_unsubscribe(sender),
            Msg.MONITOR_SNAPSHOT: lambda sender, msg, frames: self.monitor.on_snapshot(sender, msg),
            Msg.MONITOR_UPDATE: lambda sender, msg, frames: self.monitor.on_update(sender, msg),
            Msg.MONITOR_HEARTBEAT: lambda sender, msg, frames: self.monitor.on_heartbeat(sender, msg),
            Msg.TASK_STATS: self.on_task_stats,
            Msg.TIMELINE: self.on_timeline,
            Msg.LIST_OBJECTS: self.on_list_objects,
            Msg.RAFT: self.control.on_raft,
            Msg.GCS_REQUEST: self.control.on_gcs_request,
            Msg.GCS_FORWARD: self.control.on_gcs_forward,
            Msg.GCS_ANSWER: self.control.on_gcs_answer,
        }

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        self.ep.send(peer, [encode(msg_type, *fields), *frames])

    def reply(self, peer: str, req_id: int, value: Any) -> None:
        self.send(peer, Msg.REPLY, req_id, value)

    # -------------------------------------------------------------- processes

    def on_register(self, sender: str, msg: tuple, frames: list) -> None:
        _, kind, pid, worker_id, namespace = msg
        self.processes[sender] = pid
        self.send(sender, Msg.REGISTERED, self.node_id, self.store_path, self.store_capacity,
                  self.session_dir, {"resources": self.total, "nodes": dict(self.announced)})
        if kind == "worker":
            w = self.workers.get(worker_id)
            if w is None:
                w = self.workers[worker_id] = Worker(worker_id)
            else:
                self.starting -= 1
            w.pid, w.addr = pid, sender
            self.worker_by_addr[sender] = w
            self.worker_by_pid[pid] = w
            if w.actor_id is not None:
                a = self.actors[w.actor_id]
                w.state = "actor"
                self.send(sender, Msg.BECOME_ACTOR, a.actor_id, a.spec, a.restarts, frames=a.frames)
            else:
                w.state = "idle"
                w.idle_since = time.monotonic()
        else:
            if sender not in self.drivers:
                self.control.write(("job_add", sender, {"node_id": self.node_id, "pid": pid,
                                                        "namespace": namespace, "started": time.time()}))
            self.drivers[sender] = pid
        self.schedule()

    def _read_zygote(self) -> None:
        try:
            data = os.read(self.zygote_evt, 65536)
        except BlockingIOError:
            return
        if not data:
            log.error("the zygote died; stopping the node")
            self.running = False
            return
        self._evt_buf += data
        while b"\n" in self._evt_buf:
            line, self._evt_buf = self._evt_buf.split(b"\n", 1)
            parts = line.decode().split()
            if parts[0] == "S":
                w = self.workers.get(parts[1])
                if w is not None:
                    w.pid = int(parts[2])
                    self.worker_by_pid[w.pid] = w
            elif parts[0] == "X":
                w = self.worker_by_pid.pop(int(parts[1]), None)
                if w is not None:
                    self.worker_exited(w, describe_exit(int(parts[2])))

    def worker_exited(self, w: Worker, reason: str) -> None:
        if w.state == "starting":
            self.starting -= 1
        w.state = "dead"
        self.workers.pop(w.worker_id, None)
        if w.addr:
            self.worker_by_addr.pop(w.addr, None)
            self.process_gone(w.addr)
        if w.lease_id is not None:
            lease = self.leases.pop(w.lease_id, None)
            if lease is not None:
                self.release(lease.shape, lease.gpu_ids, lease.released_cpu)
                if not w.expected_exit:
                    self.send(lease.owner, Msg.WORKER_DIED, lease.lease_id, w.worker_id, reason)
        if w.actor_id is not None:
            self.actor_died(self.actors.get(w.actor_id), reason)
        self.schedule()

    def process_gone(self, addr: str) -> None:
        """Clean up after a driver or worker that is gone: pins, objects, leases, actors."""
        self.processes.pop(addr, None)
        if self.drivers.pop(addr, None) is not None and node_of(addr) == self.node_id:
            self.control.write(("job_finish", addr, time.time()))
        self.ep.forget(addr)
        self.send_replies(self.store.process_gone(addr))
        for lease in [ls for ls in self.leases.values() if ls.owner == addr]:
            w = self.workers.get(lease.worker_id)
            # The owner is gone: its tasks' results have nowhere to go.
            if w is not None and w.pid:
                w.expected_exit = True
                self.kill_pid(w.pid)
        for a in list(self.actors.values()):
            if a.owner == addr and not a.detached and a.state != "DEAD":
                a.no_restart = True
                self.kill_actor(a, "its owner exited")
        self.pending = collections.deque(r for r in self.pending if r.owner != addr)
        for a in self.actors.values():
            a.subscribers.discard(addr)
        stats = self.proc_stats.pop(addr, None)
        if stats:
            self.finished_base += int(stats.get("finished", 0))
        self.monitor.drop(addr)

    def kill_pid(self, pid: int, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _check_liveness(self) -> None:
        if self.gone_nodes:
            self._cleanup_gone_nodes()
        if self.parent_pid and not pid_alive(self.parent_pid):
            log.info("parent %d is gone; stopping", self.parent_pid)
            self.running = False
            return
        for addr, pid in list(self.drivers.items()):
            if not pid_alive(pid):
                self.process_gone(addr)
        now = time.monotonic()
        idle = [w for w in self.workers.values() if w.state == "idle"]
        extra = len([w for w in self.workers.values() if w.state in ("idle", "leased")]) - int(self.num_cpus)
        for w in sorted(idle, key=lambda w: w.idle_since):
            if extra <= 0:
                break
            if now - w.idle_since > IDLE_WORKER_TTL_S:
                w.expected_exit = True
                w.state = "stopping"
                self.kill_pid(w.pid, signal.SIGTERM)
                extra -= 1
        self.schedule()

    # -------------------------------------------------------------- resources

    def fits(self, shape: tuple, pool: dict | None = None) -> bool:
        pool = self.available if pool is None else pool
        for k, v in shape:
            if pool.get(k, 0.0) + 1e-9 < v:
                return False
        gpus = gpu_amount(shape)
        if gpus and not self._pick_gpus(gpus, dry=True):
            return False
        return True

    def feasible(self, shape: tuple) -> bool:
        return all(self.total.get(k, 0.0) + 1e-9 >= v for k, v in shape)

    def _pick_gpus(self, amount: float, dry: bool = False) -> tuple | None:
        if amount >= 1:
            n = int(round(amount))
            free = [g for g, f in sorted(self.gpu_free.items()) if f >= 1.0 - 1e-9]
            if len(free) < n:
                return None
            chosen = tuple(free[:n])
            if not dry:
                for g in chosen:
                    self.gpu_free[g] = 0.0
            return chosen
        for g, f in sorted(self.gpu_free.items()):
            if f + 1e-9 >= amount:
                if not dry:
                    self.gpu_free[g] = f - amount
                return (g,)
        return None

    def acquire(self, shape: tuple) -> tuple:
        for k, v in shape:
            self.available[k] = self.available.get(k, 0.0) - v
        gpus = gpu_amount(shape)
        return self._pick_gpus(gpus) or () if gpus else ()

    def release(self, shape: tuple, gpu_ids: tuple, lent_cpu: float = 0.0) -> None:
        for k, v in shape:
            if k in self.total:  # a placement group bundle may be gone meanwhile
                self.available[k] = self.available.get(k, 0.0) + v
        self.available["CPU"] = self.available.get("CPU", 0.0) - lent_cpu
        gpus = gpu_amount(shape)
        for g in gpu_ids:
            self.gpu_free[g] = min(1.0, self.gpu_free[g] + (1.0 if gpus >= 1 else gpus))

    def largest_node(self) -> dict:
        return {k: v for k, v in self.total.items() if not k.startswith("node:")}

    # ----------------------------------------------------------------- leases

    def on_request_lease(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, shape, strategy, hints = msg
        req = LeaseRequest(sender, req_id, tuple(shape), strategy=strategy, hints=hints or {})
        target = self.place_elsewhere(req, first=True)
        if target is not None:
            self.spillback(req, target)
            return
        if (group_of(req.shape) is None and not self.feasible(req.shape)
                and not self.feasible_somewhere(req.shape)):
            req.warned = True
            self.send(sender, Msg.LEASE_INFEASIBLE, req_id, req.shape, self.largest_node())
        self.pending.append(req)
        self.schedule()

    def feasible_somewhere(self, shape: tuple) -> bool:
        return any(p.state == "alive" and all(p.total.get(k, 0.0) + 1e-9 >= v for k, v in shape
                                              if not k.startswith("node:"))
                   and all(k[5:] == p.node_id for k, _ in shape if k.startswith("node:"))
                   for p in self.peer_views().values())

    def place_elsewhere(self, req: LeaseRequest, first: bool = False):
        """Choose another node for this request, or None to keep it here.

        Run here when it fits now.  Otherwise prefer a peer whose gossiped view
        has room: the one holding the most argument bytes, then the less loaded
        of two random picks.  A request that already spilled here stays (unless
        it can never run here), so views that are stale cannot bounce it around.
        """
        peers = [p for p in self.peer_views().values() if p.state == "alive" and p.address]
        if not peers:
            return None
        shape = req.shape
        strategy = req.strategy
        if group_of(shape) is not None:
            # Placement groups: the committed placement says where the bundle is.
            node_id = self.control.group_target(shape)
            return next((p for p in peers if p.node_id == node_id), None) if node_id else None
        if isinstance(strategy, (tuple, list)) and strategy and strategy[0] == "node":
            # Soft affinity: that node when it is alive, else anywhere. Hard
            # affinity is a "node:<id>" resource in the shape (below).
            node_id = strategy[1]
            if node_id == self.node_id:
                return None
            for p in peers:
                if p.node_id == node_id:
                    return p
            return None
        pinned = [k[5:] for k, _ in shape if k.startswith("node:")]
        if pinned:
            if pinned[0] == self.node_id:
                return None
            return next((p for p in peers if p.node_id == pinned[0]), None)

        def total_fits(p) -> bool:
            return all(p.total.get(k, 0.0) + 1e-9 >= v for k, v in shape)

        def free_fits(p) -> bool:
            return all(p.available.get(k, 0.0) + 1e-9 >= v for k, v in shape)

        now = time.monotonic()

        def recent(node_id: str) -> int:
            # Requests we sent there lately: gossiped views lag, so without this
            # every request would go to the same "idle" peer.
            sent = self.spilled_to.get(node_id)
            return sent[1] if sent and now - sent[0] < 1.0 else 0

        def load(p) -> float:
            cpu = p.total.get("CPU", 0.0) or 1.0
            return (cpu - p.available.get("CPU", 0.0)) / cpu + p.queue + recent(p.node_id) / cpu

        if strategy == "SPREAD":
            # Round-robin over every node that can hold it, this one included.
            cands = [p for p in peers if total_fits(p)]
            if self.feasible(shape):
                cands.append(None)
            if not cands:
                return None
            random.shuffle(cands)
            pick = min(cands, key=lambda p: self.spread_counts.get(p.node_id if p else self.node_id, 0))
            key = pick.node_id if pick else self.node_id
            self.spread_counts[key] = self.spread_counts.get(key, 0) + 1
            return pick
        here_now = self.fits(shape)
        if here_now and not req.hints.get("locality"):
            return None
        if req.hints.get("spilled") and self.feasible(shape):
            return None
        locality = req.hints.get("locality") or {}
        cands = [p for p in peers if free_fits(p)]
        if here_now:
            # Fits here: move only toward clearly more of the argument bytes.
            mine = locality.get(self.node_id, 0)
            better = [p for p in cands if locality.get(p.node_id, 0) > mine]
            return max(better, key=lambda p: locality.get(p.node_id, 0), default=None)
        if not cands:
            if self.feasible(shape):
                return None
            cands = [p for p in peers if total_fits(p)]
            if not cands:
                return None
        most = max(locality.get(p.node_id, 0) for p in cands)
        cands = [p for p in cands if locality.get(p.node_id, 0) == most]
        two = random.sample(cands, min(2, len(cands)))
        return min(two, key=load)

    def spillback(self, req: LeaseRequest, peer) -> None:
        now = time.monotonic()
        at, count = self.spilled_to.get(peer.node_id, (now, 0))
        self.spilled_to[peer.node_id] = (now, count + 1 if now - at < 1.0 else 1)
        self.send(req.owner, Msg.LEASE_SPILLBACK, req.req_id, peer.address, peer.node_id)

    def on_cancel_lease_request(self, sender: str, msg: tuple, frames: list) -> None:
        self.pending = collections.deque(r for r in self.pending if not (r.owner == sender and r.req_id == msg[1]))

    def on_return_lease(self, sender: str, msg: tuple, frames: list) -> None:
        lease = self.leases.pop(msg[1], None)
        if lease is None:
            return
        self.release(lease.shape, lease.gpu_ids, lease.released_cpu)
        w = self.workers.get(lease.worker_id)
        if w is not None and w.state == "leased":
            w.state, w.lease_id, w.blocked = "idle", None, False
            w.idle_since = time.monotonic()
        self.schedule()

    def on_blocked(self, sender: str, msg: tuple, frames: list) -> None:
        w = self.worker_by_addr.get(sender)
        if w is None or w.lease_id is None or w.blocked:
            return
        lease = self.leases.get(w.lease_id)
        if lease is None:
            return
        cpu = dict(lease.shape).get("CPU", 0.0)
        w.blocked = True
        lease.released_cpu = cpu
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpu
        self.schedule()

    def on_unblocked(self, sender: str, msg: tuple, frames: list) -> None:
        w = self.worker_by_addr.get(sender)
        if w is None or not w.blocked:
            return
        w.blocked = False
        lease = self.leases.get(w.lease_id) if w.lease_id else None
        if lease is not None:
            # May go below zero for a moment: the unblocked task runs now, and new
            # leases wait until the count is back above their shape.
            self.available["CPU"] = self.available.get("CPU", 0.0) - lease.released_cpu
            lease.released_cpu = 0.0

    def schedule(self) -> None:
        """Grant what fits, start workers that grants need, revoke idle leases if stuck."""
        idle = [w for w in self.workers.values() if w.state == "idle"]
        needs_worker = 0
        still: collections.deque[LeaseRequest] = collections.deque()
        # Actors first: they are few and each waits for a whole process.
        for a in list(self.pending_actors):
            if self.fits(a.shape):
                self.pending_actors.remove(a)
                self.place_actor(a, idle)
        # What is left after the requests already waiting for a worker to start.
        spare = dict(self.available)
        for req in self.pending:
            if not self.fits(req.shape, spare):
                target = self.place_elsewhere(req) if self.membership is not None else None
                if target is not None:
                    self.spillback(req, target)
                    continue
                still.append(req)
                continue
            if not idle:
                needs_worker += 1
                for k, v in req.shape:
                    spare[k] = spare.get(k, 0.0) - v
                still.append(req)
                continue
            for k, v in req.shape:
                spare[k] = spare.get(k, 0.0) - v
            w = idle.pop()
            gpu_ids = self.acquire(req.shape)
            lease_id = os.urandom(8)
            self.leases[lease_id] = Lease(lease_id, req.owner, w.worker_id, req.shape, gpu_ids)
            w.state, w.lease_id = "leased", lease_id
            self.send(req.owner, Msg.LEASE_GRANTED, req.req_id, lease_id, w.addr, w.worker_id, gpu_ids)
        self.pending = still
        for _ in range(max(0, needs_worker - self.starting)):
            self.fork_worker()
        # Requests that fit the node but not what is free: idle leases may hold it.
        now = time.monotonic()
        if len(still) > needs_worker and now - self._last_revoke > 0.005:
            waiting = {req.owner for req in still if self.feasible(req.shape)}
            if waiting:
                self._last_revoke = now
                # Only others' requests justify a revoke: an owner waiting for a
                # lease of its own hands back idle ones without being told.
                for owner in {ls.owner for ls in self.leases.values()}:
                    if waiting - {owner}:
                        self.send(owner, Msg.LEASE_REVOKE, len(waiting - {owner}))

    # ----------------------------------------------------------------- actors

    def on_create_actor(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, spec = msg
        req_id = spec["req_id"]
        name, ns = spec.get("name"), spec.get("namespace") or ""
        shape = tuple(spec["shape"])
        group = group_of(shape)
        if group is not None and not spec.get("spilled"):
            state = self.control.group_state(group[0])
            if state == "REMOVED":
                self.reply(sender, req_id, ("error", f"placement group {group[0]} was removed"))
                return
            if state != "CREATED":
                # Where it goes is known once the group is reserved: answer then.
                self.control.parked.append((sender, msg, frames))
                return
        if not spec.get("spilled") and self.membership is not None:
            # Actors are placed like tasks: here when they fit, else on a peer with room.
            probe = LeaseRequest(sender, req_id, shape, strategy=spec.get("strategy"))
            target = self.place_elsewhere(probe)
            if target is not None:
                self.reply(sender, req_id, ("spill", target.address, None))
                return
        record = self.actor_record(actor_id, spec)
        if not name:
            self.control.write(("actor_put", actor_id, record))
            self.admit_actor(sender, actor_id, spec, list(frames))
            return
        # A name is unique per namespace across the mesh: the control store decides.
        frames = list(frames)

        def claimed(status: str, value: Any) -> None:
            if status != "ok":
                # The claim may still commit later: take it back, so the name is not held by nobody.
                self.control.write(("name_release", ns, name, actor_id))
                self.reply(sender, req_id, ("error", f"Could not register the actor name {name!r}: {value}"))
            elif value[0] == "ok":
                self.admit_actor(sender, actor_id, spec, frames)
            elif value[0] == "exists" and spec.get("get_if_exists"):
                self.reply(sender, req_id, ("exists", value[1], value[2]["meta"]))
            elif value[0] == "exists":
                self.reply(sender, req_id, ("error", f"The actor name {name!r} is already taken in namespace {ns!r}."))
            else:
                self.reply(sender, req_id, ("error", f"Could not register the actor name {name!r}: {value}"))

        self.control.server.submit(("name_claim", ns, name, actor_id, record), claimed, 30.0)

    def actor_record(self, actor_id: bytes, spec: dict) -> dict:
        """The actor's entry in the control store's actor table."""
        return {"class_name": spec.get("class_name"), "node_id": self.node_id, "daemon": self.address,
                "state": "PENDING", "restarts": 0, "owner": spec.get("owner"), "seq": 0,
                "detached": spec.get("lifetime") == "detached", "name": spec.get("name") or "",
                "namespace": spec.get("namespace") or "", "meta": dict(spec["handle_meta"], daemon=self.address)}

    def admit_actor(self, sender: str, actor_id: bytes, spec: dict, frames: list) -> None:
        req_id = spec["req_id"]
        name, ns = spec.get("name"), spec.get("namespace") or ""
        shape = tuple(spec["shape"])
        a = Actor(actor_id, spec, frames, sender, name, ns, shape, spec.get("max_restarts", 0),
                  spec.get("lifetime") == "detached")
        a.subscribers.add(sender)
        self.actors[actor_id] = a
        self.reply(sender, req_id, ("ok", actor_id, self.address))
        self.monitor.actor_changed(a)
        if group_of(shape) is None and not self.feasible(shape):
            a.reason = (f"Actor {spec.get('class_name')} needs {dict(shape)}, but no node of this mesh has that "
                        f"much (the largest offers {self.largest_node()}); it stays pending until such a node joins.")
            self.publish(a)
        self.pending_actors.append(a)
        self.schedule()

    def stop_work_using(self, resources: set[str], reason: str) -> None:
        """Kill the workers and actors holding any of these resources (a bundle that went away)."""
        for lease in list(self.leases.values()):
            if any(k in resources for k, _ in lease.shape):
                w = self.workers.get(lease.worker_id)
                if w is not None and w.pid:
                    self.kill_pid(w.pid)
        for a in list(self.actors.values()):
            if a.state != "DEAD" and any(k in resources for k, _ in a.shape):
                a.no_restart = True
                self.kill_actor(a, reason)

    def place_actor(self, a: Actor, idle: list) -> None:
        a.gpu_ids = self.acquire(a.shape)
        if idle:
            w = idle.pop()
            w.state, w.actor_id = "actor", a.actor_id
            a.worker_id = w.worker_id
            self.send(w.addr, Msg.BECOME_ACTOR, a.actor_id, a.spec, a.restarts, frames=a.frames)
        else:
            w = self.fork_worker()
            w.actor_id = a.actor_id
            a.worker_id = w.worker_id

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
            w = self.worker_by_addr.get(sender)
            if w is not None:
                w.expected_exit = True
                w.actor_id = None
                self.kill_pid(w.pid)
            self.release(a.shape, a.gpu_ids)
            return
        a.state = "ALIVE"
        self.publish(a)

    def publish(self, a: Actor) -> None:
        w = self.workers.get(a.worker_id) if a.worker_id else None
        addr = w.addr if (w is not None and a.state == "ALIVE") else None
        reason = a.reason
        for sub in list(a.subscribers):
            self.send(sub, Msg.ACTOR_STATE, a.actor_id, a.state, addr, a.restarts, reason)
        self.monitor.actor_changed(a)
        a.seq += 1
        self.control.write(("actor_put", a.actor_id, {"state": a.state, "restarts": a.restarts,
                                                      "reason": reason, "seq": a.seq}))

    def on_subscribe_actor(self, sender: str, msg: tuple, frames: list) -> None:
        a = self.actors.get(msg[1])
        if a is None:
            self.send(sender, Msg.ACTOR_STATE, msg[1], "DEAD", None, 0, "no such actor on this node")
            return
        a.subscribers.add(sender)
        w = self.workers.get(a.worker_id) if a.worker_id else None
        addr = w.addr if (w is not None and a.state == "ALIVE") else None
        self.send(sender, Msg.ACTOR_STATE, a.actor_id, a.state, addr, a.restarts, a.reason)

    def on_kill_actor(self, sender: str, msg: tuple, frames: list) -> None:
        _, actor_id, no_restart = msg
        a = self.actors.get(actor_id)
        if a is None or a.state == "DEAD":
            return
        a.no_restart = a.no_restart or no_restart
        self.kill_actor(a, "it was killed with kill()")

    def kill_actor(self, a: Actor, reason: str) -> None:
        a.reason = reason
        w = self.workers.get(a.worker_id) if a.worker_id else None
        if w is not None and w.pid:
            self.kill_pid(w.pid)
        elif a in self.pending_actors or w is None:
            if a in self.pending_actors:
                self.pending_actors.remove(a)
            self.actor_died(a, reason)

    def actor_died(self, a: Actor | None, reason: str) -> None:
        if a is None or a.state == "DEAD":
            return
        if a.worker_id is not None:
            self.release(a.shape, a.gpu_ids)
        a.worker_id = None
        unlimited = a.max_restarts == -1
        if not a.no_restart and (unlimited or a.restarts < a.max_restarts):
            a.restarts += 1
            a.state = "RESTARTING"
            a.reason = f"the actor's process died ({reason}); restarting"
            self.publish(a)
            self.pending_actors.append(a)
            self.schedule()
            return
        a.state = "DEAD"
        a.reason = a.reason if a.no_restart and a.reason else f"the actor's process died ({reason})"
        self.publish(a)  # the control store frees its name

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

        self.control.server.submit(("name_lookup", ns or "", name), found, 30.0)

    # ------------------------------------------------------------------ store

    # The table (meshcompute/store/table.py) holds the logic; these only talk.

    def on_store_create(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, oid, size, owner = msg
        try:
            offset = self.store.create(oid, size, owner, sender)
        except StoreFull as err:
            self.reply(sender, req_id, ("full", str(err)))
            return
        self.reply(sender, req_id, ("ok", offset))

    def on_store_seal(self, sender: str, msg: tuple, frames: list) -> None:
        self.send_replies(self.store.seal(msg[1]))

    def on_store_pin(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, oid, source = msg
        obj = self.store.objects.get(oid)
        if (obj is None or obj.freed) and source and source[0] != self.node_id:
            self.pull(oid, source[0], int(source[1]), sender, req_id)
            return
        self.send_replies(self.store.pin(oid, sender, req_id))

    def on_store_unpin(self, sender: str, msg: tuple, frames: list) -> None:
        self.send_replies(self.store.unpin(msg[1], sender))

    def on_store_free(self, sender: str, msg: tuple, frames: list) -> None:
        _, oids, node_id = msg
        if node_id and node_id != self.node_id:
            peer = self.peer_views().get(node_id)
            if peer is not None and peer.address:
                self.send(peer.address, Msg.STORE_FREE, oids, node_id)
            return
        for oid in oids:
            # Copies pulled from ours go with the primary.
            for holder in self.copy_holders.pop(oid, ()):
                self.send(holder, Msg.STORE_FREE, (oid,), None)
        self.send_replies(self.store.free(oids))

    def send_replies(self, replies: list) -> None:
        for peer, req_id, value in replies:
            self.reply(peer, req_id, value)

    # ---------------------------------------------------------- object pulls

    def pull(self, oid: bytes, node_id: str, size: int, reader: str, req_id: int | None) -> None:
        """Copy an object from another node's store into ours, then answer the pin.

        One pull per object however many readers wait; chunks travel with a
        credit window of PULL_WINDOW requests in flight (the ZeroMQ guide's
        file-transfer pattern), so a large object neither stalls the link nor
        floods memory.  The copy is *secondary*: evicted first when room is
        needed, and freed when its primary is.
        """
        p = self.pulls.get(oid)
        if p is not None:
            p.waiters.append((reader, req_id))
            return
        peer = self.peer_views().get(node_id)
        if peer is None or peer.state not in ("alive", "suspect") or not peer.address:
            if req_id is not None:
                self.reply(reader, req_id, None)
            return
        try:
            offset = self.store.create(oid, size, peer.address, self.address, primary=False)
        except StoreFull as err:
            if req_id is not None:
                self.reply(reader, req_id, ("full", str(err)))
            return
        p = Pull(oid, peer.address, offset, size, waiters=[(reader, req_id)])
        self.pulls[oid] = p
        self._request_chunks(p)

    def _request_chunks(self, p: Pull) -> None:
        while p.inflight < PULL_WINDOW and p.next_offset < p.size:
            length = min(PULL_CHUNK_BYTES, p.size - p.next_offset)
            self.send(p.source, Msg.PULL_CHUNK, p.oid, p.next_offset, length)
            p.next_offset += length
            p.inflight += 1

    def on_pull_chunk(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, length = msg
        if offset == 0:
            # The transfer holds a pin (restoring a spilled object) until PULL_DONE.
            replies = self.store.pin(oid, sender, -1)
            if not replies or not isinstance(replies[0][2], tuple) or replies[0][2][0] == "full":
                self.send(sender, Msg.CHUNK_DATA, oid, offset, False, "the object is not here any more")
                return
            self.copy_holders.setdefault(oid, set()).add(sender)
        obj = self.store.objects.get(oid)
        if obj is None or obj.offset is None or sender not in obj.pins or offset + length > obj.size:
            self.send(sender, Msg.CHUNK_DATA, oid, offset, False, "the object is not here any more")
            return
        if offset == 0:
            sample = bytes(self.arena_mv[obj.offset: obj.offset + min(65536, length)])
            self.compressed[oid] = len(lz4.block.compress(sample)) < 0.8 * len(sample)
        data = self.arena_mv[obj.offset + offset: obj.offset + offset + length]
        if self.compressed.get(oid):
            self.send(sender, Msg.CHUNK_DATA, oid, offset, True, None, frames=[lz4.block.compress(data)])
        else:
            self.send(sender, Msg.CHUNK_DATA, oid, offset, False, None, frames=[data])

    def on_chunk_data(self, sender: str, msg: tuple, frames: list) -> None:
        _, oid, offset, compressed, error = msg
        p = self.pulls.get(oid)
        if p is None:
            return
        if error is not None or not frames:
            self._finish_pull(p, ok=False)
            return
        data = memoryview(frames[0])
        try:
            if compressed:
                data = memoryview(lz4.block.decompress(data))
        except lz4.block.LZ4BlockError:
            log.warning("a corrupt chunk of object %s came from %s", oid.hex(), sender)
            self._finish_pull(p, ok=False)
            return
        n = data.nbytes
        if offset + n > p.size:
            self._finish_pull(p, ok=False)
            return
        # pwrite, not the mapping: no page faults on fresh tmpfs pages, which would
        # also queue behind the arena warmer's fallocate.
        written = os.pwrite(self.store.arena_fd, data, p.offset + offset)
        if written != n:
            self._finish_pull(p, ok=False)
            return
        p.received += n
        p.inflight -= 1
        if p.received >= p.size:
            self.send(p.source, Msg.PULL_DONE, oid)
            self._finish_pull(p, ok=True)
        else:
            self._request_chunks(p)

    def _finish_pull(self, p: Pull, ok: bool) -> None:
        self.pulls.pop(p.oid, None)
        if not ok:
            self.send_replies(self.store.free([p.oid]))
            for reader, req_id in p.waiters:
                if req_id is not None:
                    self.reply(reader, req_id, None)
            return
        self.send_replies(self.store.seal(p.oid))
        for reader, req_id in p.waiters:
            self.send_replies(self.store.pin(p.oid, reader, req_id))

    def on_pull_done(self, sender: str, msg: tuple, frames: list) -> None:
        self.compressed.pop(msg[1], None)
        self.send_replies(self.store.unpin(msg[1], sender))

    def store_statistics(self) -> dict:
        stats = asdict(self.store.statistics())
        # How much of the arena's warm region is pre-allocated so far.
        stats["prefaulted_bytes"] = self.warmer.done if self.warmer is not None else 0
        return stats

    # ------------------------------------------------------------------- misc

    def on_kill_worker(self, sender: str, msg: tuple, frames: list) -> None:
        w = self.workers.get(msg[1])
        if w is not None and w.pid:
            self.kill_pid(w.pid)

    def on_node_info(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, what = msg
        info = {
            "node_id": self.node_id,
            "address": self.address,
            "state": "alive",
            "alive": True,
            "resources_total": {k: v for k, v in self.total.items()},
            "resources_available": {k: max(0.0, v) for k, v in self.available.items()},
            "store": self.store_statistics(),
            "workers": len(self.workers),
            "pid": os.getpid(),
            "session_dir": self.session_dir,
            "queued": len(self.pending),
            "tasks": self.task_totals(),
            "control": self.control_status(),
        }
        if what == "mesh":
            nodes = [info]
            for p in self.peer_views().values():
                nodes.append({
                    "node_id": p.node_id, "address": p.address, "state": p.state,
                    "alive": p.state in ("alive", "suspect"),
                    "resources_total": p.total, "resources_available": p.available,
                    "store": {"used": p.store[0], "capacity": p.store[1]} if p.store else {},
                    "queued": p.queue,
                    # As gossiped (up to a fraction of a second old).
                    "control": ({"role": p.gcs[0], "term": p.gcs[1], "commit_index": p.gcs[2],
                                 "leader": p.gcs[3] or None} if p.gcs else {}),
                })
            self.reply(sender, req_id, {"nodes": nodes, "leader": self.control_status()["leader"],
                                        "self": self.node_id})
            return
        self.reply(sender, req_id, info)

    def control_status(self) -> dict:
        """This node's view of the control store: leader, term, commit index, role."""
        return self.control.status()

    # ---------------------------------------------------------- observability

    def on_task_stats(self, sender: str, msg: tuple, frames: list) -> None:
        if isinstance(msg[1], dict) and sender in self.processes:
            self.proc_stats[sender] = msg[1]

    def task_totals(self) -> dict:
        """Tasks running, queued and finished on this node, from the processes' TASK_STATS."""
        running = queued = 0
        finished = self.finished_base
        for s in self.proc_stats.values():
            running += int(s.get("running", 0))
            queued += int(s.get("queued", 0))
            finished += int(s.get("finished", 0))
        return {"running": running, "queued": queued, "finished": finished}

    def gather(self, requester: str, req_id: int, requests: list, local: list, timeout: float,
               combine) -> None:
        """Send each ``(addr, msg_type, *fields)`` with a fresh req_id; REPLY to the requester
        with ``combine(local + answers)`` once all answered or ``timeout`` passed."""
        g = Gather(requester, req_id, list(local), set(), time.monotonic() + timeout, combine)
        for addr, msg_type, *fields in requests:
            sub_id = next(self._sub_req_ids)
            try:
                self.send(addr, msg_type, sub_id, *fields)
            except (ValueError, zmq.ZMQError) as e:
                log.warning("cannot ask %s: %s", addr, e)
                continue
            g.waiting.add(sub_id)
            self.gathers[sub_id] = g
        if not g.waiting:
            self._finish_gather(g)

    def on_reply(self, sender: str, msg: tuple, frames: list) -> None:
        g = self.gathers.pop(msg[1], None)
        if g is None:
            return
        g.waiting.discard(msg[1])
        g.parts.append(msg[2])
        if not g.waiting:
            self._finish_gather(g)

    def _expire_gathers(self, now: float) -> None:
        for g in {id(g): g for g in self.gathers.values()}.values():
            if now >= g.deadline:
                for sub_id in g.waiting:
                    self.gathers.pop(sub_id, None)
                g.waiting.clear()
                self._finish_gather(g)

    def _finish_gather(self, g: Gather) -> None:
        try:
            value = g.combine(g.parts)
        except Exception:  # noqa: BLE001 - a bad answer must not lose the reply
            log.error("combining answers for %s failed:\n%s", g.requester, traceback.format_exc())
            value = []
        self.reply(g.requester, g.req_id, value)

    def _peer_requests(self, msg_type: Msg, *fields) -> list:
        return [(p.address, msg_type, *fields) for p in self.peer_views().values()
                if p.state in ("alive", "suspect") and p.address]

    def on_timeline(self, sender: str, msg: tuple, frames: list) -> None:
        """Collect the recent task spans of our workers (and, for "mesh", of every node's)."""
        _, req_id, scope = msg
        requests = [(w.addr, Msg.TIMELINE, "worker") for w in self.workers.values()
                    if w.addr and w.state in ("idle", "leased", "actor")]
        if scope == "mesh":
            requests += self._peer_requests(Msg.TIMELINE, "node")
        self.gather(sender, req_id, requests, [], 2.5 if scope == "mesh" else 1.5, _flatten_lanes)

    def on_list_objects(self, sender: str, msg: tuple, frames: list) -> None:
        """The store table's records (and, for "mesh", every node's)."""
        _, req_id, scope = msg
        local = [self.object_records()]
        requests = self._peer_requests(Msg.LIST_OBJECTS, "node") if scope == "mesh" else []
        self.gather(sender, req_id, requests, local, 2.5, _flatten)

    def object_records(self) -> list[dict]:
        out = []
        table = self.store
        for obj in list(table.objects.values()) + list(table.retired):
            out.append({
                "object_id": obj.object_id.hex(), "size": obj.size, "owner": obj.owner,
                "owner_pid": self.processes.get(obj.owner), "node_id": self.node_id,
                "primary": obj.primary, "sealed": obj.sealed, "freed": obj.freed,
                "pins": sum(obj.pins.values()), "readers": len(obj.pins),
                "in_memory": obj.offset is not None, "spilled": obj.spill_path is not None,
                "spill_bytes": obj.spill_bytes,
            })
        return out

    def stop(self) -> None:
        """Leave the mesh, stop every worker, remove the node's shared memory, spill files
        and session dir."""
        if self.warmer is not None:
            self.warmer.stop()
        if self.membership is not None:
            try:
                self.membership.leave()
                deadline = time.monotonic() + 1.0
                while not self.membership.leave_done() and time.monotonic() < deadline:
                    self.membership.tick()
                    time.sleep(0.02)
            except Exception:
                log.warning("could not announce leaving:\n%s", traceback.format_exc())
        for w in list(self.workers.values()):
            if w.pid:
                self.kill_pid(w.pid)
        try:
            os.close(self.zygote_cmd)  # the zygote kills its children on EOF
        except OSError:
            pass
        self.kill_pid(self.zygote_pid)
        try:
            os.waitpid(self.zygote_pid, 0)
        except ChildProcessError:
            pass
        try:
            self.ep.close()
            self.ctx.term()
        except Exception:
            pass
        if self.store.arena_fd >= 0:
            os.close(self.store.arena_fd)
        remove_session(self.session_dir, self.spill_dir)


def _flatten(parts: list) -> list:
    return [item for part in parts if isinstance(part, list) for item in part]


def _flatten_lanes(parts: list) -> list:
    """Worker answers are dicts, peer daemons' answers lists of them."""
    out = []
    for part in parts:
        if isinstance(part, dict):
            out.append(part)
        elif isinstance(part, list):
            out.extend(p for p in part if isinstance(p, dict))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="meshcompute-daemon")
    p.add_argument("--session", required=True)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=int, default=None)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--spill-dir", default=None,
                   help="directory for spill files (a per-node subdirectory is made in it); "
                        "default $MESH_SPILL_DIR, else <session dir>/spill")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--ready-fd", type=int, default=None)
    p.add_argument("--host", default=None, help="IP to serve the mesh on (no TCP without it)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    p.add_argument("--join", default="", help="comma-separated host:port of live members")
    p.add_argument("--standalone", action="store_true", help="started by `mesh start`/`mesh join`")
    p.add_argument("--gcs-voters", type=int, default=3, choices=(1, 3, 5, 7),
                   help="voters of the control store, when this node starts a new mesh")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent_pid:
        set_parent_death_signal(signal.SIGTERM)
        if not pid_alive(args.parent_pid):
            sys.exit(1)
    os.makedirs(os.path.join(args.session, "logs"), exist_ok=True)
    clean_stale_sessions()
    num_cpus = args.num_cpus if args.num_cpus is not None else float(os.cpu_count() or 1)
    num_gpus = args.num_gpus if args.num_gpus is not None else detect_gpus()
    capacity = args.object_store_memory or default_store_capacity()
    keys = keys_for_session(args.session)
    if args.host and keys is None:
        sys.exit("refusing to serve TCP without the mesh token in the session dir")
    spill_dir = spill_dir_for(args.session, args.spill_dir or os.environ.get("MESH_SPILL_DIR") or None)
    d = Daemon(args.session, num_cpus, num_gpus, json.loads(args.resources), capacity,
               args.parent_pid, ids.random_id(), spill_dir, host=args.host, port=args.port, keys=keys,
               gcs_voters=args.gcs_voters)
    d.standalone = args.standalone
    d.seeds = [a.strip() for a in args.join.split(",") if a.strip()]
    d.create_arena()
    d.start_zygote()

    def _term(signum, frame):
        d.running = False

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        d.serve(args.ready_fd)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
