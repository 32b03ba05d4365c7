"""The node daemon: the shell that owns the sockets and the loop, and dispatches messages.

One per node, single-threaded: one loop polls the inbox, the zygote's event pipe,
the copier's completions and a timer.  Bulk copies (spill, restore, pulled
chunks) run on the copier's helper threads and come back to the loop
(copier.py); one low-priority thread pre-allocates the arena's warm region at
start (meshcompute/store/shm.py), and the timer returns freed arena pages beyond
the warm pool to the kernel (store_service.py).  It is *not* on the per-task path: owners lease a worker for a
resource shape and push tasks to it directly; the daemon only grants leases,
takes them back, and tells a lease holder when its worker dies.

The state lives in objects with one concern each, which this shell creates,
feeds with messages and events, and wires together with explicit callables:

* sched.resources: ``ResourcePool`` (what is free, GPU ids: the pure record, shared with placement);
* workers.py: ``WorkerPool`` (worker records, the zygote, idle reaping);
* leases.py: ``LeaseTable`` (requests, grants, returns, blocked workers);
* placement.py: ``Placement`` (where a request goes when not here);
* actors.py: ``ActorDirectory`` (actors, restarts, names);
* store_service.py: ``StoreService`` (STORE_* over the store table);
* pulls.py: ``Pulls`` (objects copied between nodes);
* gather.py: ``Gathers`` (requests answered from several processes);
* jobs.py: ``Jobs`` (submitted jobs: their processes and JOB_* requests);
* processes.py: ``Processes`` (registered drivers and workers);
* gcs/shell.py: ``Control``; observe/feed.py: ``MonitorFeed``; metrics.py: ``NodeMetrics``.

Run as ``python -m meshcompute.node.daemon --session DIR ...``; ``init()``
does that for an embedded node, ``mesh start`` for a standing one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import time
import traceback
from typing import Any

import zmq

from ..gcs.shell import Control, NodeLink
from ..host.sessions import arena_path, pid_alive, remove_session, vouched_pid
from ..observe.feed import FeedSource, MonitorFeed
from ..sched.resources import ResourcePool
from ..store.table import StoreTable, spill_dir_for
from ..wire.messages import Msg, decode, describe, encode
from ..wire.transport import DropLog, Endpoint, drain, make_address, node_of, parse_address
from .actors import ActorDirectory
from .bulk import OPEN_TIMEOUT_S, BulkChannel
from .config import node_resources
from .copier import Copier
from .gather import Gathers, flatten, flatten_lanes
from .info import node_info, usage
from .jobs import Jobs
from .leases import LeaseTable
from .metrics import start_metrics
from .placement import Placement
from .processes import Processes
from .pulls import Pulls
from .store_service import StoreService
from .workers import Worker, WorkerPool

log = logging.getLogger("meshcompute.daemon")

LIVENESS_PERIOD_S = 0.5
"""How often (s) the daemon checks that drivers (and its own parent) are alive."""
NODE_CLEANUP_GRACE_S = 10.0
"""How long (s) after a peer is declared dead what its processes hold here is kept,
in case the declaration was wrong (a loaded machine) and the peer refutes it."""
VIEW_PERIOD_S = 0.2
"""How often (s) the daemon checks whether its gossiped resource view changed."""
DRAIN_S = float(os.environ.get("MESH_DRAIN_S", "20"))
"""Longest (s) a node asked to stop waits for its leases' tasks (``MESH_DRAIN_S``; < Kubernetes' 30 s grace)."""


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
        self.resources = ResourcePool(node_resources(node_id, num_cpus, num_gpus, store_capacity, resources),
                                      num_gpus)
        self.num_cpus = num_cpus
        self.store_capacity = store_capacity
        self.store_path = arena_path(session_dir)
        self.spill_dir = spill_dir if spill_dir is not None else spill_dir_for(session_dir)
        self.store = StoreService(StoreTable(store_capacity, -1, self.spill_dir, node_id), node_id,
                                  self.send, self._peer_address)
        self.workers = WorkerPool(session_dir, node_id, host, num_cpus)
        self.processes = Processes()
        self.placement = Placement(node_id, self.resources, self.peer_views,
                                   lambda: self.control, lambda: len(self.leases.pending))
        self.leases = LeaseTable(self.resources, self.workers, self.placement, self.send, self.schedule,
                                 lambda args, done: self.pulls.prefetch_args(args, done))
        self.actors = ActorDirectory(node_id, lambda: self.address, self.resources, self.workers,
                                     self.placement, lambda: self.control, self.send,
                                     lambda a: self.monitor.actor_changed(a), self.schedule,
                                     lambda: self.membership is not None)
        self.gathers = Gathers(self.send)
        self.jobs = Jobs(node_id, session_dir, lambda: self.address, lambda: self.control, self.send,
                         self.gathers, self.peer_views)
        self.monitor = MonitorFeed(FeedSource(
            node_id=node_id, address=lambda: self.address, send=self.send,
            forget=lambda addr: self.ep.forget(addr), is_local_process=lambda addr: addr in self.processes.pids,
            peer_views=self.peer_views, control_status=lambda: self.control.status(),
            actors=lambda: self.actors.actors.values(), actor_pid=self.actors.worker_pid,
            pids=self.workers.pids, usage=lambda: usage(self)))
        self.pulls: Pulls | None = None  # once the arena is mapped (serve())
        self.bulk: BulkChannel | None = None  # object chunks' own sockets, in a mesh (serve())
        self.copier: Copier | None = None  # helper threads for bulk copies (serve())
        self.running = True
        self.stop_requests = 0  # SIGTERMs: the first drains a mesh node, the second stops it now
        self.membership: Any = None
        self.standalone = False
        self.seeds: list[str] = []
        self.drops = DropLog(log)  # malformed messages and handler errors, logged at a bounded rate
        self.announced: dict[str, str] = {}  # peer node id -> daemon address our processes were told
        self.gone_nodes: dict[str, float] = {}  # dead/left peers -> when to release what they hold here
        self.gcs_voters = gcs_voters
        self.control: Any = None  # the control store shell (gcs/shell.py), once serving

    # ----------------------------------------------------------------- set-up

    def create_arena(self) -> None:
        fd = os.open(self.store_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, self.store_capacity)
        # Held for the daemon's life: clean_stale_sessions() leaves locked arenas alone.
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Spill and restore copy through it with pread/pwrite (object pulls use a mapping).
        self.store.table.arena_fd = fd

    def start_zygote(self) -> None:
        """Fork the zygote now, while this process has no threads or sockets."""
        # The arena's descriptor is the daemon's alone (the lock stays the daemon's).
        self.workers.start_zygote(close_in_child=(self.store.table.arena_fd,))

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
            self.workers.fork()
        # Threads start only now: the zygote was forked while the daemon had none.
        self.copier = Copier()
        self.store.use_copier(self.copier.submit)
        self.bulk = None if self.host is None else BulkChannel(self.ctx, self.host, self._open_bulk,
                                                               self.copier.submit, self.drops)
        self.pulls = Pulls(self.store, self.arena_mv, lambda: self.address, self.peer_views, self.send,
                           self.copier.submit, time.monotonic, self._locate,
                           self.send if self.bulk is None else self.bulk.send)
        # The first node of a mesh starts the control store; joiners are added by its leader.
        link = NodeLink(node_id=self.node_id, session_dir=self.session_dir, send=self.send,
                        peer_views=self.peer_views, resources=self.resources,
                        stop_work_using=self.stop_work_using, create_actor=self.actors.on_create_actor,
                        schedule=self.schedule)
        self.control = Control(link, None if self.seeds else self.gcs_voters)
        self.control.write(("node_add", self.node_id, {"address": self.address, "host": self.host,
                                                       "resources": self.resources.public_total()}))
        if self.host is not None:
            self.start_membership(self.seeds)
        self.metrics = start_metrics(self)  # Prometheus, with --metrics-port: a thread of its own
        info = {"pid": os.getpid(), "address": self.address, "node_id": self.node_id, "host": self.host,
                "tcp": parse_address(self.address)[2], "store_capacity": self.store_capacity,
                "metrics": self.metrics.url, "standalone": self.standalone, "resources": self.resources.total,
                "spill_dir": self.spill_dir, "store_path": self.store_path, "session_dir": self.session_dir}
        with open(os.path.join(self.session_dir, "daemon.json"), "w") as f:
            json.dump(info, f)
        if ready_fd is not None:
            os.write(ready_fd, (json.dumps(info) + "\n").encode())
            os.close(ready_fd)
        # Started only now: the daemon must not have threads when it forks the zygote.
        self.store.start_warming(self.store_path)
        self.loop()

    # ------------------------------------------------------------------- loop

    def loop(self) -> None:
        poller = zmq.Poller()
        for inbox in self.ep.inboxes:
            poller.register(inbox, zmq.POLLIN)
        poller.register(self.workers.events_fd, zmq.POLLIN)
        poller.register(self.copier.fd, zmq.POLLIN)
        if self.bulk is not None:
            self.bulk.watch(poller)
        self._bulk_handlers = {Msg.PULL_CHUNK: self.pulls.on_pull_chunk, Msg.CHUNK_DATA: self.pulls.on_chunk_data,
                               Msg.PULL_DONE: self.pulls.on_pull_done}
        handlers = self._handlers()
        self._next_check = time.monotonic() + LIVENESS_PERIOD_S
        self._next_view = 0.0
        while self.running:
            try:
                self._turn(poller, handlers)
            except Exception:  # noqa: BLE001 - one failure must not stop the node
                self.drops.note("an error in the node loop", "", traceback.format_exc())

    def _turn(self, poller: zmq.Poller, handlers: dict) -> None:
        """One turn of the loop: messages, zygote and copier events, then the timed duties."""
        timeout = min(100, int(self.control.seconds_to_tick(time.monotonic()) * 1000) + 1)
        if self.membership is not None:
            timeout = min(timeout, int(self.membership.seconds_to_deadline() * 1000) + 1)
        events = dict(poller.poll(timeout))
        for inbox in self.ep.inboxes:
            if inbox in events:
                drain(inbox, lambda frames: self._dispatch(frames, handlers), 1000)
        if self.bulk is not None:
            for sock in [s for s in self.bulk.sockets if s in events]:
                self.bulk.drain(sock, self._bulk_handlers, 64)
        if self.workers.events_fd in events:
            self._read_zygote()
        if self.copier.fd in events:
            self.copier.run_completions()
        now = time.monotonic()
        if self.stop_requests:
            self._stop_requested(now)
        if self.membership is not None:
            self.on_member_events(self.membership.tick())
            if now >= self._next_view:
                self._next_view = now + VIEW_PERIOD_S
                self.on_member_events(self.membership.maybe_update_view())
        if now >= self._next_check:
            self._next_check = now + LIVENESS_PERIOD_S
            self._check_liveness()
        self.control.tick(now)
        self.store.tick(now)
        if self.monitor.active:
            self.monitor.tick(now)
        if self.gathers:
            self.gathers.expire(now)

    def _dispatch(self, frames: list, handlers: dict) -> None:
        sender = frames[0].bytes.decode(errors="replace")
        try:
            parse_address(sender)  # replies go there: a sender that is no address is refused now
            msg = decode(frames[1])
            handler = handlers[msg[0]]
        except Exception:
            self.drops.note("a malformed message", sender)
            return
        try:
            handler(sender, msg, frames[2:])
        except Exception:
            self.drops.note(f"an error handling {describe(msg)}", sender, traceback.format_exc())

    def _handlers(self) -> dict:
        leases, actors, store, pulls, monitor, control = (self.leases, self.actors, self.store, self.pulls,
                                                          self.monitor, self.control)
        return {
            Msg.REGISTER: self.on_register,
            Msg.REQUEST_LEASE: leases.on_request_lease,
            Msg.CANCEL_LEASE_REQUEST: leases.on_cancel_lease_request,
            Msg.RETURN_LEASE: leases.on_return_lease,
            Msg.BLOCKED: leases.on_blocked,
            Msg.UNBLOCKED: leases.on_unblocked,
            Msg.CREATE_ACTOR: actors.on_create_actor,
            Msg.SUBSCRIBE_ACTOR: actors.on_subscribe_actor,
            Msg.KILL_ACTOR: actors.on_kill_actor,
            Msg.LOOKUP_ACTOR: actors.on_lookup_actor,
            Msg.ACTOR_READY: actors.on_actor_ready,
            Msg.STORE_CREATE: store.on_store_create,
            Msg.STORE_SEAL: store.on_store_seal,
            Msg.STORE_PIN: self.on_store_pin,
            Msg.STORE_UNPIN: store.on_store_unpin,
            Msg.STORE_FREE: store.on_store_free,
            Msg.KILL_WORKER: lambda sender, msg, frames: self.workers.kill(msg[1]),
            Msg.NODE_INFO: self.on_node_info,
            Msg.GOSSIP: self.on_gossip,
            Msg.BULK_OPEN: lambda sender, msg, frames: self.bulk is not None and self.bulk.on_open(sender, msg, self.reply),
            Msg.REPLY: self.gathers.on_reply,
            Msg.MONITOR_SUBSCRIBE: lambda sender, msg, frames: monitor.on_subscribe(sender, msg),
            Msg.MONITOR_UNSUBSCRIBE: lambda sender, msg, frames: monitor.on_unsubscribe(sender),
            Msg.MONITOR_SNAPSHOT: lambda sender, msg, frames: monitor.on_snapshot(sender, msg),
            Msg.MONITOR_UPDATE: lambda sender, msg, frames: monitor.on_update(sender, msg),
            Msg.MONITOR_HEARTBEAT: lambda sender, msg, frames: monitor.on_heartbeat(sender, msg),
            Msg.TASK_STATS: self.processes.on_task_stats,
            Msg.TIMELINE: self.on_timeline,
            Msg.LIST_OBJECTS: self.on_list_objects,
            Msg.LOCATE_OBJECT: pulls.on_locate_object,
            Msg.PROCESS_GONE: self.on_process_gone,
            Msg.RAFT: control.on_raft,
            Msg.GCS_REQUEST: control.on_gcs_request,
            Msg.GCS_FORWARD: control.on_gcs_forward,
            Msg.GCS_ANSWER: control.on_gcs_answer,
            **self.jobs.handlers(),
        }

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        self.ep.send(peer, [encode(msg_type, *fields), *frames])

    def reply(self, peer: str, req_id: int, value: Any) -> None:
        self.send(peer, Msg.REPLY, req_id, value)

    def schedule(self) -> None:
        """Grant what fits, start workers that grants need, revoke idle leases if stuck."""
        idle = self.workers.idle()
        self.actors.place_pending(idle, self.processes.may_own_objects)  # first: few, each needs a process
        needed = self.leases.grant(idle, may_spill=self.membership is not None)
        self.workers.ensure_starting(needed)

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
            "t": self.resources.public_total(),
            "v": {} if self.leases.draining else {k: round(v, 3) for k, v in self.resources.public_available().items()},
            "s": [self.store.table.allocator.used, self.store_capacity],
            "q": len(self.leases.pending),
            "g": self.control.gossip_meta() if self.control is not None else [],
        }

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
                for addr in [a for a in self.processes.pids if node_of(a) == self.node_id]:
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
        for addr in list(self.processes.pids):
            if node_of(addr) == self.node_id:
                self.send(addr, Msg.NODE_STATE, node_id, state, None)
        self.announced.pop(node_id, None)
        self.pulls.node_gone(node_id)
        self.gone_nodes[node_id] = time.monotonic() + NODE_CLEANUP_GRACE_S

    def _cleanup_gone_nodes(self) -> None:
        now = time.monotonic()
        peers = self.peer_views()
        for node_id, when in list(self.gone_nodes.items()):
            peer = peers.get(node_id)
            if peer is not None and peer.state in ("alive", "suspect"):
                del self.gone_nodes[node_id]  # it came back
                self.pulls.node_back(node_id)
            elif now >= when:
                del self.gone_nodes[node_id]
                self.pulls.node_forgotten(node_id)
                for addr in [a for a in list(self.processes.pids) + list(self.ep.out) if node_of(a) == node_id]:
                    self.process_gone(addr)
                self.actors.node_gone(node_id)

    def peer_views(self) -> dict:
        return self.membership.peers() if self.membership is not None else {}

    def _peer_address(self, node_id: str) -> str | None:
        peer = self.peer_views().get(node_id)
        return peer.address if peer is not None and peer.address else None

    # -------------------------------------------------------------- processes

    def on_register(self, sender: str, msg: tuple, frames: list) -> None:
        _, kind, pid, worker_id, namespace = msg
        if not self._vouched(sender, kind, pid):
            self.drops.note(f"a REGISTER claiming pid {pid!r}", sender)
            return
        new_driver = self.processes.register(sender, pid, driver=kind != "worker")
        self.send(sender, Msg.REGISTERED, self.node_id, self.store_path, self.store_capacity,
                  self.session_dir, {"resources": self.resources.total, "nodes": dict(self.announced), "pid": os.getpid()})
        if kind == "worker":
            w = self.workers.registered(worker_id, pid, sender)
            if not self.actors.worker_registered(w):
                w.state = "idle"
                w.idle_since = time.monotonic()
        elif new_driver:
            self.control.write(("job_add", sender, {"node_id": self.node_id, "pid": pid,
                                                    "namespace": namespace, "started": time.time()}))
        self.schedule()

    def _vouched(self, sender: str, kind: Any, pid: Any) -> bool:
        """A REGISTER must come from this node, with a pid the kernel vouches for."""
        return node_of(sender) == self.node_id and vouched_pid(kind, pid, self.workers.zygote_pid)

    def _read_zygote(self) -> None:
        exited, alive = self.workers.read_events()
        for w, reason in exited:
            self.worker_exited(w, reason)
        if not alive:
            log.error("the zygote died; stopping the node")
            self.running = False

    def worker_exited(self, w: Worker, reason: str) -> None:
        if w.addr:
            self.process_gone(w.addr)
        self.leases.worker_exited(w, reason)
        self.actors.worker_exited(w, reason)
        self.schedule()

    def process_gone(self, addr: str) -> None:
        """Clean up after a driver or worker that is gone: pins, objects, leases, actors.

        A process of this node may hold leases (and own actors) on other nodes too: their
        daemons hear of its death (PROCESS_GONE) and clean up the same way."""
        mine = node_of(addr) == self.node_id
        if self.processes.gone(addr) and mine:
            self.control.write(("job_finish", addr, time.time()))
        if mine:
            for peer, msg_type, *fields in self._peer_requests(Msg.PROCESS_GONE, [addr]):
                self.send(peer, msg_type, *fields)
        for local in [a for a in self.processes.pids if node_of(a) == self.node_id and a != addr]:
            self.send(local, Msg.PROCESS_GONE, [addr])  # borrowers of its objects: OwnerDiedError
        self.ep.forget(addr)
        self.store.process_gone(addr)
        self.pulls.process_gone(addr)
        if self.bulk is not None:
            self.bulk.peer_gone(addr)
        self.leases.owner_gone(addr)
        self.actors.owner_gone(addr)
        self.monitor.drop(addr)

    def on_process_gone(self, sender: str, msg: tuple, frames: list) -> None:
        """Another node's processes are gone. Only their own daemon may say so."""
        node, name, _ = parse_address(sender)
        if name != "daemon" or not isinstance(msg[1], list):
            return
        for addr in msg[1]:
            if isinstance(addr, str) and node_of(addr) == node and node != self.node_id:
                self.process_gone(addr)

    def stop_work_using(self, resources: set[str], reason: str) -> None:
        """Kill the workers and actors holding any of these resources (a bundle that went away)."""
        self.leases.stop_work_using(resources)
        self.actors.stop_work_using(resources, reason)

    def _stop_requested(self, now: float) -> None:
        """A mesh node drains first (owner/draining.py), leaving once its leases are back or after
        DRAIN_S; a second request, or an embedded node, stops at once."""
        if self.membership is None or self.stop_requests > 1:
            self.running = False
        elif not self.leases.draining:
            log.info("draining: %d leases out; leaving in at most %.0f s", len(self.leases.leases), DRAIN_S)
            self.control.hand_over(now)
            for owner in self.leases.begin_drain(now + DRAIN_S):
                self.send(owner, Msg.NODE_DRAINING, self.node_id)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        self.running = self.running and not (self.leases.drained(now) and self.control.may_leave(now))
        if self.gone_nodes:
            self._cleanup_gone_nodes()
        if self.parent_pid and not pid_alive(self.parent_pid):
            log.info("parent %d is gone; stopping", self.parent_pid)
            self.running = False
            return
        for addr, pid in list(self.processes.drivers.items()):
            if not pid_alive(pid):
                self.process_gone(addr)
        self.jobs.poll(now)
        self.workers.reap_idle(now, self.processes.owns_objects)
        self.pulls.tick(now)
        if self.bulk is not None:
            self.bulk.tick(now)
        self.metrics.refresh()
        self.schedule()

    # ------------------------------------------------------------------ store

    def on_store_pin(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, oid, source = msg
        if self.store.is_remote(oid, source):
            self.pulls.pull(oid, source[0], int(source[1]), sender, req_id, time.monotonic())
        else:
            self.store.pin(oid, sender, req_id, keep=True)  # processes keep their pins (owner/pins.py)

    # ---------------------------------------------------------- observability

    def on_node_info(self, sender: str, msg: tuple, frames: list) -> None:
        _, req_id, what = msg
        self.reply(sender, req_id, node_info(self, what))

    def _peer_requests(self, msg_type: Msg, *fields) -> list:
        return [(p.address, msg_type, *fields) for p in self.peer_views().values()
                if p.state in ("alive", "suspect") and p.address]

    def on_timeline(self, sender: str, msg: tuple, frames: list) -> None:
        """Collect our workers' task spans and running tasks, and our drivers' and workers' unfinished
        tasks (and, for "mesh", every node's): mesh timeline and list_tasks."""
        _, req_id, scope = msg
        requests = [(a, Msg.TIMELINE, "worker") for a in self.workers.serving() + list(self.processes.drivers)]
        if scope == "mesh":
            requests += self._peer_requests(Msg.TIMELINE, "node")
        self.gathers.gather(sender, req_id, requests, [], 2.5 if scope == "mesh" else 1.5, flatten_lanes)

    def _open_bulk(self, daemon: str, session_id: bytes, key: bytes, answer: Any) -> None:
        """Open a bulk session with a peer daemon; ``answer(its bulk endpoint or None)``."""
        self.gathers.gather(answer, None, [(daemon, Msg.BULK_OPEN, session_id, key)], [], OPEN_TIMEOUT_S,
                            lambda parts: parts[0] if parts else None)

    def _locate(self, oid: bytes, answer: Any) -> None:
        """Ask every live peer whether it holds a sealed copy of ``oid``; ``answer(addresses)``."""
        self.gathers.gather(answer, None, self._peer_requests(Msg.LOCATE_OBJECT, oid), [], 2.0,
                            lambda parts: [a for a in parts if isinstance(a, str)])

    def on_list_objects(self, sender: str, msg: tuple, frames: list) -> None:
        """The store table's records (and, for "mesh", every node's)."""
        _, req_id, scope = msg
        local = [self.store.object_records(self.processes.pid_of)]
        requests = self._peer_requests(Msg.LIST_OBJECTS, "node") if scope == "mesh" else []
        self.gathers.gather(sender, req_id, requests, local, 2.5, flatten)

    # ------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Leave the mesh, stop every worker, remove the node's shared memory, spill files
        and session dir."""
        self.store.stop_warming()
        self.jobs.stop_all()  # before the node leaves: their drivers use it
        if self.membership is not None:
            try:
                self.membership.leave()
                deadline = time.monotonic() + 1.0
                while not self.membership.leave_done() and time.monotonic() < deadline:
                    self.membership.tick()
                    time.sleep(0.02)
            except Exception:
                log.warning("could not announce leaving:\n%s", traceback.format_exc())
        self.workers.stop()
        if self.copier is not None:
            self.copier.stop()  # before the arena's descriptor closes under a copy
        try:
            if self.bulk is not None:
                self.bulk.close()
            self.ep.close()
            self.ctx.term()
        except Exception:
            pass
        if self.store.table.arena_fd >= 0:
            os.close(self.store.table.arena_fd)
        remove_session(self.session_dir, self.spill_dir)


if __name__ == "__main__":
    from .config import main

    main(Daemon)
