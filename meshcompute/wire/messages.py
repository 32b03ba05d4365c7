"""The node-local wire protocol: one definition per message type.

Every process (driver, worker, daemon) has one ROUTER *inbox*.  To talk to a peer
it connects a DEALER (identity = its own inbox address) to the peer's inbox, so
everything a process receives arrives on its inbox with the sender's address as
the first frame, and messages from A to B always travel one FIFO pipe.

A message is the multipart ``[header, *buffers]`` where ``header`` is the pickled
tuple ``(type, field1, field2, ...)`` and ``buffers`` are raw out-of-band data
(large numpy payloads) that are never copied into the header.  The fields of each
type are listed in :data:`FIELDS`; :func:`describe` prints the one-line form used
in logs and tests.  docs/protocol.md explains each message.

Node-local peers live in a 0700 session directory, so the pickled header is
trusted; a header that fails to decode is logged and dropped, never fatal.
"""

from __future__ import annotations

import pickle
from enum import IntEnum
from typing import Any


class Msg(IntEnum):
    """Message types. ONLY APPEND: the numbers are the wire format."""

    # process <-> daemon
    REGISTER = 1  # a driver or worker announces its inbox
    REGISTERED = 2  # daemon's answer: node id, store path, resources
    REQUEST_LEASE = 3  # owner asks for a worker for one resource shape
    LEASE_GRANTED = 4
    LEASE_INFEASIBLE = 5  # no node could ever run this shape (it stays queued)
    RETURN_LEASE = 6
    LEASE_REVOKE = 7  # daemon asks an owner to hand back idle leases
    WORKER_DIED = 8  # daemon tells a lease holder its worker died
    BLOCKED = 9  # a worker waits in get/wait: its CPU is lent out
    UNBLOCKED = 10
    CREATE_ACTOR = 11
    ACTOR_STATE = 12  # daemon publishes actor state changes to subscribers
    SUBSCRIBE_ACTOR = 13
    KILL_ACTOR = 14
    LOOKUP_ACTOR = 15  # get_actor(name)
    STORE_CREATE = 16  # allocate room for a sealed-later object
    STORE_SEAL = 17
    STORE_PIN = 18  # a reader maps an object; it stays valid until unpinned
    STORE_UNPIN = 19  # a reader let go of its pins
    STORE_FREE = 20  # the owner dropped the last reference
    KILL_WORKER = 21  # force-cancel: kill the process running a task
    NODE_INFO = 22  # nodes / resources / store statistics
    BECOME_ACTOR = 23  # daemon hands a fresh worker an actor to construct
    ACTOR_READY = 24  # worker reports its actor constructed (or failed)
    REPLY = 25  # generic answer to a request carrying req_id
    # 26 retired (SHUTDOWN: nothing sent it; a node stops on SIGTERM)
    CANCEL_LEASE_REQUEST = 27
    NODE_DRAINING = 28  # daemon -> owners of its leases: it is leaving; push nothing more, return when idle
    # process <-> process
    PUSH_TASKS = 40  # owner pushes a batch of task specs to a leased worker
    TASKS_DONE = 41  # worker returns a batch of results to the owner
    TASKS_BOUNCED = 42  # worker hands back tasks it has not started (it blocked)
    CANCEL_TASK = 43
    ACTOR_CALL = 44  # caller pushes one method call to an actor
    GET_OBJECT = 45  # borrower asks the owner for an object's value or location (lost_on: a node whose copy failed)
    OBJECT_VALUE = 46
    ADD_BORROWER = 47
    REMOVE_BORROWER = 48
    RELEASE_HANDOFF = 49  # owner of a result took its own hold on the refs inside
    # daemon <-> daemon, daemon -> process
    GOSSIP = 50  # one SWIM packet (its own safe encoding, see gossip/messages.py)
    NODE_STATE = 51  # daemon tells its processes a node joined (with its daemon's address), died or left
    LEASE_SPILLBACK = 52  # "ask that daemon instead": the shape runs better elsewhere
    PULL_CHUNK = 53  # a daemon asks the holder of an object for one chunk of it
    CHUNK_DATA = 54  # the chunk (one data frame), or an error
    PULL_DONE = 55  # the puller has every chunk: the holder drops its transfer pin
    # observability (docs/observability.md)
    MONITOR_SUBSCRIBE = 56  # start a monitor feed: answered by MONITOR_SNAPSHOT, then updates
    MONITOR_SNAPSHOT = 57  # the whole monitored state at one sequence number
    MONITOR_UPDATE = 58  # changed keys since the previous sequence number
    MONITOR_HEARTBEAT = 59  # daemon -> subscriber when idle; subscriber -> daemon renews the feed
    MONITOR_UNSUBSCRIBE = 60
    TASK_STATS = 61  # a process's task counters, at most every 0.5 s while they change
    TIMELINE = 62  # collect the recent task spans of workers (of this node or the mesh)
    WORKER_OUTPUT = 63  # a batch of lines a worker printed, for the owner's driver
    LIST_OBJECTS = 64  # the store table's records (of this node or the mesh)
    # control store (docs/gcs.md)
    RAFT = 65  # daemon -> daemon: one Raft message (gcs/codec.py)
    GCS_REQUEST = 66  # process -> its daemon: a control store read or write; REPLY (status, value)
    GCS_FORWARD = 67  # daemon -> the leader's daemon: a request it cannot serve itself
    GCS_ANSWER = 68  # leader's daemon -> forwarding daemon: status and value of a GCS_FORWARD
    # object pulls, continued
    LOCATE_OBJECT = 69  # daemon -> daemons: who holds a sealed copy? REPLY with the holder's address or None
    PROCESS_GONE = 70  # daemon -> daemons and its own processes: these processes are gone
    STREAM_ITEM = 71  # worker -> owner: a generator task yielded its next value
    STREAM_CONSUMED = 72  # owner -> worker: the consumer took this many items (backpressure)
    # submitted jobs (node/jobs.py)
    JOB_SUBMIT = 73  # client -> any daemon: run an entrypoint there; buffers: its packages; REPLY (status, id)
    JOB_STOP = 74  # client -> any daemon (relayed to the job's): stop it; REPLY (status, stopped)
    JOB_LOGS = 75  # client -> any daemon (relayed to the job's): its output from an offset; REPLY (status, chunk)
    STORE_RELEASE = 76  # daemon -> process: the store needs room, let go of the pins you keep idle
    BULK_OPEN = 77  # daemon -> daemon: a bulk session's id and key; REPLY with the bulk socket's endpoint
    LEASE_REFUSED = 78  # never granted: its placement group was removed, or its runtime_env failed


FIELDS: dict[Msg, tuple[str, ...]] = {
    Msg.REGISTER: ("kind", "pid", "worker_id", "namespace"),
    Msg.REGISTERED: ("node_id", "store_path", "store_capacity", "session_dir", "info"),
    Msg.REQUEST_LEASE: ("req_id", "shape", "strategy", "hints"),
    Msg.LEASE_GRANTED: ("req_id", "lease_id", "worker_addr", "worker_id", "gpu_ids"),
    Msg.LEASE_INFEASIBLE: ("req_id", "shape", "largest_node"),
    Msg.LEASE_REFUSED: ("req_id", "kind", "reason"),
    Msg.NODE_DRAINING: ("node_id",),
    Msg.RETURN_LEASE: ("lease_id",),
    Msg.LEASE_REVOKE: ("count",),
    Msg.WORKER_DIED: ("lease_id", "worker_id", "reason"),
    Msg.BLOCKED: (),
    Msg.UNBLOCKED: (),
    Msg.CREATE_ACTOR: ("actor_id", "spec"),
    Msg.ACTOR_STATE: ("actor_id", "state", "addr", "restarts", "reason"),
    Msg.SUBSCRIBE_ACTOR: ("actor_id",),
    Msg.KILL_ACTOR: ("actor_id", "no_restart"),
    Msg.LOOKUP_ACTOR: ("req_id", "name", "namespace"),
    Msg.STORE_CREATE: ("req_id", "object_id", "size", "owner"),
    Msg.STORE_SEAL: ("object_id", "keep_pinned"),
    Msg.STORE_PIN: ("req_id", "object_id", "source"),
    Msg.STORE_UNPIN: ("object_ids", "reason"),
    Msg.STORE_FREE: ("object_ids", "node_id", "unpinned"),
    Msg.KILL_WORKER: ("worker_id",),
    Msg.NODE_INFO: ("req_id", "what"),
    Msg.BECOME_ACTOR: ("actor_id", "spec", "restarts", "gpu_ids"),
    Msg.ACTOR_READY: ("actor_id", "error"),
    Msg.REPLY: ("req_id", "value"),
    Msg.CANCEL_LEASE_REQUEST: ("req_id",),
    Msg.PUSH_TASKS: ("lease_id", "gpu_ids", "tasks", "job_id", "shape"),
    Msg.TASKS_DONE: ("results",),
    Msg.TASKS_BOUNCED: ("task_ids",),
    Msg.CANCEL_TASK: ("task_id", "force"),
    Msg.ACTOR_CALL: ("call",),
    Msg.GET_OBJECT: ("object_id", "lost_on"),
    Msg.OBJECT_VALUE: ("object_id", "value"),
    Msg.ADD_BORROWER: ("object_ids", "req_id"),
    Msg.REMOVE_BORROWER: ("object_ids",),
    Msg.RELEASE_HANDOFF: ("task_id",),
    Msg.GOSSIP: ("packet",),
    Msg.NODE_STATE: ("node_id", "state", "address"),
    Msg.LEASE_SPILLBACK: ("req_id", "daemon_addr", "node_id"),
    Msg.PULL_CHUNK: ("object_id", "offset", "length", "direct"),
    Msg.CHUNK_DATA: ("object_id", "offset", "compressed", "error"),
    Msg.PULL_DONE: ("object_id",),
    Msg.MONITOR_SUBSCRIBE: ("req_id", "scope", "ttl"),
    Msg.MONITOR_SNAPSHOT: ("req_id", "seq", "snapshot"),
    Msg.MONITOR_UPDATE: ("seq", "changes"),
    Msg.MONITOR_HEARTBEAT: ("seq",),
    Msg.MONITOR_UNSUBSCRIBE: (),
    Msg.TASK_STATS: ("stats",),
    Msg.TIMELINE: ("req_id", "scope"),
    Msg.WORKER_OUTPUT: ("lines",),
    Msg.LIST_OBJECTS: ("req_id", "scope"),
    Msg.RAFT: ("message",),
    Msg.GCS_REQUEST: ("req_id", "op", "timeout"),
    Msg.GCS_FORWARD: ("uid", "op"),
    Msg.GCS_ANSWER: ("uid", "status", "value"),
    Msg.LOCATE_OBJECT: ("req_id", "object_id"),
    Msg.PROCESS_GONE: ("addresses",),
    Msg.STREAM_ITEM: ("task_id", "index", "value"),
    Msg.STREAM_CONSUMED: ("task_id", "consumed"),
    Msg.JOB_SUBMIT: ("req_id", "submission_id", "entrypoint", "runtime_env", "metadata"),
    Msg.JOB_STOP: ("req_id", "submission_id"),
    Msg.JOB_LOGS: ("req_id", "submission_id", "offset"),
    Msg.STORE_RELEASE: ("object_ids",),
    Msg.BULK_OPEN: ("req_id", "session_id", "key"),
}

assert set(FIELDS) == set(Msg), "every message type needs its field list"

_dumps = pickle.dumps
_loads = pickle.loads


def encode(msg_type: Msg, *fields: Any) -> bytes:
    """Pickle a header. Fields must be plain data (bytes, str, numbers, tuples...)."""
    return _dumps((int(msg_type), *fields), 5)


def decode(header: Any) -> tuple:
    """Unpickle a header (bytes, a received frame, or a bytearray joined from parts);
    raises ValueError for anything that is not a known message."""
    msg = _loads(header)
    if not isinstance(msg, tuple) or not msg or msg[0] not in _KNOWN:
        raise ValueError("not a meshcompute message")
    return msg


_KNOWN = frozenset(int(m) for m in Msg)


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, bytes):
        text = value.hex() if len(value) <= 16 else f"<{len(value)} bytes>"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(msg: tuple) -> str:
    """One-line printed form: ``TYPE field=value ...`` (long values elided)."""
    try:
        kind = Msg(msg[0])
    except ValueError:
        return f"UNKNOWN({msg[0]!r})"
    names = FIELDS[kind]
    parts = [kind.name]
    for name, value in zip(names, msg[1:]):
        parts.append(f"{name}={_short(value)}")
    return " ".join(parts)
