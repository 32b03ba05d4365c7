"""The control store's state machine: what the replicated log describes.

Every node that is a Raft member (voter or learner) holds one :class:`GcsState`
and applies the committed commands to it in log order, so all of them hold the
same tables. It is pure and deterministic: a command's effect depends only on
the state and the command (never on a clock or on the node applying it), which
is what makes the replicas agree (Raft §5.4.3 State Machine Safety).

Tables:

* ``nodes``: node id -> {address, resources, state ALIVE|DEAD, registered}.
* ``actors``: actor id -> {class_name, name, namespace, node_id, daemon, state,
  restarts, meta}; a node's death marks its actors DEAD.
* ``names``: (namespace, name) -> actor id, unique per namespace; a name whose
  actor is DEAD may be claimed again.
* ``jobs``: driver address -> {job_id, node_id, pid, namespace, entrypoint, started, finished}.
* ``submissions``: submission id -> a submitted job (``mesh job submit``): {submission_id,
  entrypoint, status PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED, message, node_id,
  driver_exit_code, start_time, end_time, metadata, runtime_env, statuses (every status
  it took, in order)}; a terminal status is final, and a node's death fails the
  submissions still PENDING or RUNNING there.
* ``pgs``: placement group id -> :class:`PG` (bundles, strategy, the node of
  each bundle, a state machine of its own, below).
* ``kv``: bytes -> bytes, the user's key-value store (``meshcompute.kv``).

Commands are tuples ``(op, *args)`` (:data:`WRITES`); reads are served from the
state after a ReadIndex round (:data:`READS`). Each command carries a request
uid; the results of the last :data:`DEDUP_WINDOW` uids are remembered, so a
request retried after a leader change (its first try may have committed) takes
effect once.

Placement group states::

    PENDING --pg_place--> PREPARING --every bundle acked ok--> CREATED
       ^                      |                                  |
       +------ a nack --------+        a bundle's node died --> RESCHEDULING
                                        (that bundle unassigned)  |  pg_place of the
    any state --pg_remove--> REMOVED                              |  missing bundles,
                                                                  v  acks -> CREATED

In PREPARING a single nack returns every bundle (all-or-nothing); in
RESCHEDULING only the bundles not yet acked are returned.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GcsState", "PG", "WRITES", "READS", "DEDUP_WINDOW", "encode_command", "decode_command"]

# Results remembered for retried requests. A retry arrives within seconds of its
# first try; thousands of requests fit in that window even under load.
DEDUP_WINDOW = 4096
# DEAD actors and finished jobs kept for inspection before the oldest are dropped,
# so the tables (and snapshots) stay bounded on a long-lived mesh.
MAX_DEAD_ACTORS = 10_000
MAX_FINISHED_JOBS = 1_000
SUBMISSION_STATES = ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")
SUBMISSION_FINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})

WRITES = frozenset({
    "init", "node_add", "node_dead", "job_add", "job_finish", "actor_put", "name_claim", "name_release",
    "kv_put", "kv_del", "kv_cas", "pg_create", "pg_place", "pg_ack", "pg_remove",
    "sub_add", "sub_update", "sub_delete",
})
READS = frozenset({"kv_get", "kv_list", "name_lookup", "pg_get", "pg_table", "nodes", "actors", "actor", "jobs",
                   "info", "subs", "sub"})

PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def encode_command(uid: bytes | None, op: tuple) -> bytes:
    """The bytes of a log entry: the request uid and the command."""
    return pickle.dumps((uid, tuple(op)), 5)


def decode_command(data: bytes) -> tuple[bytes | None, tuple]:
    uid, op = pickle.loads(data)
    if not isinstance(op, tuple) or not op or not isinstance(op[0], str):
        raise ValueError("not a control store command")
    return uid, op


@dataclass
class PG:
    pg_id: str
    bundles: list[dict[str, float]]
    strategy: str
    name: str
    creator: str
    state: str = "PENDING"  # PENDING | PREPARING | CREATED | RESCHEDULING | REMOVED
    attempt: int = 0
    # bundle index -> node id, for bundles placed in the current attempt
    nodes: dict[int, str] = field(default_factory=dict)
    # bundle indexes whose node confirmed the reservation
    acked: set[int] = field(default_factory=set)
    reason: str = ""

    def record(self) -> dict:
        return {"placement_group_id": self.pg_id, "name": self.name, "strategy": self.strategy,
                "bundles": {i: dict(b) for i, b in enumerate(self.bundles)}, "state": self.state,
                "bundles_to_node_id": dict(self.nodes), "attempt": self.attempt, "reason": self.reason,
                "creator": self.creator}

    def holds(self) -> bool:
        """Whether the assigned nodes should hold their bundles' resources."""
        return self.state in ("PREPARING", "CREATED", "RESCHEDULING")


class GcsState:
    """The tables, and :meth:`apply` / :meth:`read` over them."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.nodes: dict[str, dict] = {}
        self.actors: OrderedDict[bytes, dict] = OrderedDict()
        self.names: dict[tuple[str, str], bytes] = {}
        self.jobs: OrderedDict[str, dict] = OrderedDict()
        self.subs: OrderedDict[str, dict] = OrderedDict()  # submission id -> its record
        self.pgs: dict[str, PG] = {}
        self.kv: dict[bytes, bytes] = {}
        self.done: OrderedDict[bytes, Any] = OrderedDict()  # uid -> result (dedup window)
        self.dead_actors: deque[bytes] = deque()  # DEAD actor ids, oldest first
        self.job_count = 0  # jobs ever registered (job ids are sequential)
        self.applied_index = 0

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, uid: bytes | None, op: tuple) -> Any:
        """Apply one committed command; returns its result (the cached one for a repeated uid)."""
        self.applied_index = index
        if uid is not None and uid in self.done:
            return self.done[uid]
        handler = getattr(self, "_w_" + op[0], None) if op[0] in WRITES else None
        if handler is None:
            result: Any = ("error", f"unknown command {op[0]!r}")
        else:
            try:
                result = handler(*op[1:])
            except Exception as e:  # noqa: BLE001 - any bad command must fail, not stop the log
                # A malformed command fails the same way on every replica.
                result = ("error", f"bad {op[0]} command: {e!r}")
        if uid is not None:
            self.done[uid] = result
            while len(self.done) > DEDUP_WINDOW:
                self.done.popitem(last=False)
        return result

    def _w_init(self, config: dict) -> Any:
        if not self.config:
            self.config = dict(config)
        return dict(self.config)

    def _w_node_add(self, node_id: str, info: dict) -> Any:
        if not isinstance(node_id, str) or not isinstance(info, dict):
            raise TypeError("node_add takes a node id and a dict")
        rec = self.nodes.get(node_id)
        if rec is None:
            rec = self.nodes[node_id] = {"node_id": node_id, "registered": len(self.nodes)}
        rec.update({k: v for k, v in info.items() if k in ("address", "resources", "host")})
        rec["state"] = "ALIVE"
        return True

    def _w_node_dead(self, node_id: str) -> Any:
        rec = self.nodes.get(node_id)
        if rec is None or rec["state"] == "DEAD":
            return False
        rec["state"] = "DEAD"
        for actor_id, a in list(self.actors.items()):
            if a.get("node_id") != node_id or a["state"] == "DEAD":
                continue
            if _restartable(a) and not str(a.get("owner", "")).startswith(node_id + "/"):
                # Its owner (alive elsewhere) places it again; the name stays with it.
                a.update(state="RESTARTING", node_id=None, reason=f"its node {node_id} died; restarting elsewhere")
            else:
                self._actor_dead(actor_id, a, "its node died")
        for pg in self.pgs.values():
            lost = {i for i, n in pg.nodes.items() if n == node_id}
            if not lost or pg.state in ("REMOVED", "PENDING"):
                continue
            if pg.state == "PREPARING":
                self._pg_reset(pg, f"node {node_id} died while reserving")
            else:
                for i in lost:
                    pg.nodes.pop(i, None)
                    pg.acked.discard(i)
                pg.state, pg.reason = "RESCHEDULING", f"node {node_id} died; re-placing bundles {sorted(lost)}"
        for sub in self.subs.values():
            if sub.get("node_id") == node_id and sub["status"] not in SUBMISSION_FINAL:
                # No end time: a command carries no clock (every replica must agree).
                self._sub_set(sub, {"status": "FAILED",
                                    "message": f"the node it ran on ({node_id}) died or left the mesh"})
        return True

    def _w_job_add(self, job_key: str, info: dict) -> Any:
        if not isinstance(info, dict):
            raise TypeError("job_add takes a dict")
        job = self.jobs.get(job_key)
        if job is None:
            self.job_count += 1
            self.jobs[job_key] = dict(info, job_id=f"{self.job_count:08x}", finished=None)
        else:
            # The driver's own job_add (to learn its id) and its daemon's may commit in
            # either order: the record takes what the first lacks (e.g. the entrypoint).
            for k, v in info.items():
                job.setdefault(k, v)
        return self.jobs[job_key]["job_id"]

    def _w_job_finish(self, job_key: str, when: float) -> Any:
        job = self.jobs.get(job_key)
        if job is None or job["finished"] is not None:
            return False
        job["finished"] = when
        for actor_id, a in list(self.actors.items()):  # nobody is left to restart these
            if a.get("owner") == job_key and a["state"] == "RESTARTING" and a.get("node_id") is None:
                self._actor_dead(actor_id, a, "its node died and its owner exited before restarting it")
        finished = [k for k, j in self.jobs.items() if j["finished"] is not None]
        for k in finished[:max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self.jobs[k]
        return True

    def _w_sub_add(self, sid: str, info: dict) -> Any:
        """A new submission, PENDING; ("exists", record) when the id is taken (ids are unique)."""
        if not isinstance(sid, str) or not sid or not isinstance(info, dict):
            raise TypeError("sub_add takes a submission id and a dict")
        if sid in self.subs:
            return ("exists", dict(self.subs[sid]))
        self.subs[sid] = dict(info, submission_id=sid, status="PENDING", statuses=["PENDING"],
                              end_time=None, driver_exit_code=None)
        finished = [k for k, j in self.subs.items() if j["status"] in SUBMISSION_FINAL]
        for k in finished[:max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self.subs[k]
        return ("ok", dict(self.subs[sid]))

    def _w_sub_update(self, sid: str, fields: dict) -> Any:
        """Move a submission on; a final status stays (False then), so a late update cannot
        revive a job its node's death already failed."""
        sub = self.subs.get(sid)
        if sub is None or not isinstance(fields, dict) or sub["status"] in SUBMISSION_FINAL:
            return False
        if fields.get("status", sub["status"]) not in SUBMISSION_STATES:
            raise ValueError(f"unknown status {fields.get('status')!r}")
        self._sub_set(sub, fields)
        return True

    def _sub_set(self, sub: dict, fields: dict) -> None:
        old = sub["status"]
        sub.update(fields)
        if sub["status"] != old:
            sub["statuses"] = [*sub["statuses"], sub["status"]]

    def _w_sub_delete(self, sid: str) -> Any:
        """Forget a finished submission (a running one must be stopped first: False)."""
        sub = self.subs.get(sid)
        if sub is None or sub["status"] not in SUBMISSION_FINAL:
            return False
        del self.subs[sid]
        return True

    def _w_actor_put(self, actor_id: bytes, fields: dict) -> Any:
        if not isinstance(actor_id, bytes) or not isinstance(fields, dict) or type(fields.get("seq", 0)) is not int:
            raise TypeError("actor_put takes an actor id (bytes) and a dict with an int seq")
        a = self.actors.get(actor_id)
        if a is None:
            a = self.actors[actor_id] = {"actor_id": actor_id, "state": "PENDING", "restarts": 0}
        elif a["state"] == "DEAD":
            return False  # DEAD is final
        if fields.get("seq", 0) < a.get("seq", 0):
            # An older update retried after a newer one: keep only what the record lacks
            # (e.g. the creation record's identity fields arriving after a state change).
            for k, v in fields.items():
                a.setdefault(k, v)
            return False
        a.update(fields)
        if a["state"] == "DEAD":
            self._actor_dead(actor_id, a, fields.get("reason", ""))
        return True

    def _actor_dead(self, actor_id: bytes, a: dict, reason: str) -> None:
        a["state"] = "DEAD"
        a["reason"] = reason
        key = (a.get("namespace") or "", a.get("name") or "")
        if key[1] and self.names.get(key) == actor_id:
            del self.names[key]
        # Keep the newest MAX_DEAD_ACTORS dead records (the table stays bounded).
        self.dead_actors.append(actor_id)
        while len(self.dead_actors) > MAX_DEAD_ACTORS:
            self.actors.pop(self.dead_actors.popleft(), None)

    def _w_name_claim(self, namespace: str, name: str, actor_id: bytes, fields: dict) -> Any:
        """Take a name for a new actor: ("ok",) or ("exists", holder id, holder record)."""
        key = (namespace, name)
        holder = self.names.get(key)
        if holder is not None and holder != actor_id:
            rec = self.actors.get(holder)
            if rec is not None and rec["state"] != "DEAD":
                return ("exists", holder, dict(rec))
        self.names[key] = actor_id
        self._w_actor_put(actor_id, dict(fields, name=name, namespace=namespace))
        return ("ok",)

    def _w_name_release(self, namespace: str, name: str, actor_id: bytes) -> Any:
        if self.names.get((namespace, name)) == actor_id:
            del self.names[(namespace, name)]
            return True
        return False

    def _w_kv_put(self, key: bytes, value: bytes, overwrite: bool) -> Any:
        """Returns whether the key existed before (as Ray's internal KV does)."""
        _check_bytes(key, value)
        existed = key in self.kv
        if overwrite or not existed:
            self.kv[key] = value
        return existed

    def _w_kv_del(self, key: bytes, by_prefix: bool) -> Any:
        """Returns how many keys were deleted."""
        _check_bytes(key)
        if by_prefix:
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            doomed = [key] if key in self.kv else []
        for k in doomed:
            del self.kv[k]
        return len(doomed)

    def _w_kv_cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> Any:
        """Set ``key`` to ``new`` (None deletes) if it holds ``expected`` (None: absent).

        Returns ``(swapped, value before)``.
        """
        _check_bytes(key)
        current = self.kv.get(key)
        if current != expected:
            return (False, current)
        if new is None:
            self.kv.pop(key, None)
        else:
            _check_bytes(new)
            self.kv[key] = new
        return (True, current)

    def _w_pg_create(self, pg_id: str, bundles: list, strategy: str, name: str, creator: str) -> Any:
        if pg_id in self.pgs:
            return False
        if strategy not in PG_STRATEGIES:
            raise ValueError(f"strategy must be one of {PG_STRATEGIES}, got {strategy!r}")
        if not isinstance(pg_id, str) or not pg_id.isalnum():
            raise ValueError("a placement group id is alphanumeric")
        clean = []
        for b in bundles:
            if not isinstance(b, dict) or not b or not all(
                    isinstance(k, str) and type(v) in (int, float) and 0 < v < float("inf") for k, v in b.items()):
                raise ValueError(f"a bundle maps resource names to positive amounts, got {b!r}")
            clean.append({k: float(v) for k, v in b.items()})
        if not clean:
            raise ValueError("a placement group needs at least one bundle")
        self.pgs[pg_id] = PG(pg_id, clean, strategy, str(name or ""), str(creator))
        return True

    def _w_pg_place(self, pg_id: str, attempt: int, nodes: dict) -> Any:
        """The leader's placement for the unassigned bundles of ``attempt``."""
        pg = self.pgs.get(pg_id)
        if pg is None or pg.attempt != attempt or pg.state not in ("PENDING", "RESCHEDULING"):
            return False  # stale: the group moved on since the leader looked
        missing = set(range(len(pg.bundles))) - set(pg.nodes)
        if set(nodes) != missing or not all(isinstance(n, str) for n in nodes.values()):
            return False
        pg.nodes.update({int(i): n for i, n in nodes.items()})
        if pg.state == "PENDING":
            pg.state = "PREPARING"
        pg.reason = ""
        return True

    def _w_pg_ack(self, pg_id: str, attempt: int, node_id: str, bundles: list, ok: bool, reason: str) -> Any:
        pg = self.pgs.get(pg_id)
        if pg is None or pg.attempt != attempt or pg.state not in ("PREPARING", "RESCHEDULING"):
            return False
        mine = [i for i in bundles if pg.nodes.get(i) == node_id and i not in pg.acked]
        if not mine:
            return False
        if ok:
            pg.acked.update(mine)
            if len(pg.acked) == len(pg.bundles):
                pg.state, pg.reason = "CREATED", ""
            return True
        if pg.state == "PREPARING":
            self._pg_reset(pg, reason)
        else:
            for i in set(pg.nodes) - pg.acked:
                del pg.nodes[i]
            pg.attempt += 1
            pg.reason = reason
        return True

    def _pg_reset(self, pg: PG, reason: str) -> None:
        """All-or-nothing: every bundle goes back, the next attempt starts from scratch."""
        pg.nodes.clear()
        pg.acked.clear()
        pg.state = "PENDING"
        pg.attempt += 1
        pg.reason = reason

    def _w_pg_remove(self, pg_id: str) -> Any:
        pg = self.pgs.get(pg_id)
        if pg is None or pg.state == "REMOVED":
            return False
        pg.state, pg.reason = "REMOVED", "removed"
        pg.nodes.clear()
        pg.acked.clear()
        return True

    # ------------------------------------------------------------------- read

    def read(self, op: tuple) -> Any:
        """Serve a read command from the current state."""
        name = op[0]
        if name == "kv_get":
            return self.kv.get(op[1])
        if name == "kv_list":
            return sorted(k for k in self.kv if k.startswith(op[1]))
        if name == "name_lookup":
            actor_id = self.names.get((op[1], op[2]))
            rec = self.actors.get(actor_id) if actor_id is not None else None
            if rec is None or rec["state"] == "DEAD":
                return None
            return (actor_id, dict(rec))
        if name == "pg_get":
            pg = self.pgs.get(op[1])
            return pg.record() if pg is not None else None
        if name == "pg_table":
            return {pid: pg.record() for pid, pg in self.pgs.items()}
        if name == "nodes":
            return {nid: dict(rec) for nid, rec in self.nodes.items()}
        if name == "actors":
            return {aid: dict(rec) for aid, rec in self.actors.items()}
        if name == "actor":
            rec = self.actors.get(op[1])
            return dict(rec) if rec is not None else None
        if name == "jobs":
            return {k: dict(j) for k, j in self.jobs.items()}
        if name == "subs":
            return [dict(j) for j in self.subs.values()]
        if name == "sub":
            rec = self.subs.get(op[1])
            return dict(rec) if rec is not None else None
        if name == "info":
            return {"config": dict(self.config), "applied": self.applied_index, "nodes": len(self.nodes),
                    "actors": len(self.actors), "names": len(self.names), "jobs": len(self.jobs),
                    "placement_groups": len(self.pgs), "kv_keys": len(self.kv)}
        raise ValueError(f"unknown read {name!r}")

    # -------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """The whole state as bytes (Raft §7: the image a snapshot carries)."""
        return pickle.dumps({
            "config": self.config, "nodes": self.nodes, "actors": list(self.actors.items()),
            "names": self.names, "jobs": list(self.jobs.items()), "subs": list(self.subs.items()),
            "pgs": {k: vars(v) for k, v in self.pgs.items()}, "kv": self.kv,
            "done": list(self.done.items()), "dead": list(self.dead_actors), "jobs_ever": self.job_count,
            "applied": self.applied_index,
        }, 5)

    @classmethod
    def restore(cls, data: bytes) -> GcsState:
        s = cls()
        if not data:
            return s
        img = pickle.loads(data)
        s.config = img["config"]
        s.nodes = img["nodes"]
        s.actors = OrderedDict(img["actors"])
        s.names = img["names"]
        s.jobs = OrderedDict(img["jobs"])
        s.subs = OrderedDict(img.get("subs", ()))
        s.pgs = {k: PG(**v) for k, v in img["pgs"].items()}
        s.kv = img["kv"]
        s.done = OrderedDict(img["done"])
        s.dead_actors = deque(img["dead"])
        s.job_count = img["jobs_ever"]
        s.applied_index = img["applied"]
        return s


def _restartable(a: dict) -> bool:
    """Has this actor restarts left (``max_restarts`` -1 is unlimited)?"""
    limit = a.get("max_restarts", 0)
    return limit == -1 or (isinstance(limit, int) and int(a.get("restarts", 0)) < limit)


def _check_bytes(*values: Any) -> None:
    for v in values:
        if not isinstance(v, bytes):
            raise TypeError(f"keys and values are bytes, got {type(v).__name__}")
