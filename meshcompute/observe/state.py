"""Ray's state listing -- nodes, actors, tasks, objects, placement groups, jobs -- served
from what the nodes already know (``meshcompute.util.state``, ``mesh list``, ``mesh summary``).

There is no dashboard or state service: a listing asks the daemon it talks to once,
and that daemon reads the control store or gathers from every node:

* nodes: the control store's node table, with the daemon's gossip view (NODE_INFO);
* actors, jobs, placement groups: the control store's tables (gcs/state.py);
* objects: every daemon's store table (LIST_OBJECTS, as ``mesh memory``);
* tasks: every driver's and worker's *lane* (TIMELINE, as ``mesh timeline``): each
  worker's last 10,000 finished tasks and the ones it runs, and each owner's
  unfinished tasks (owner/listing.py).

Records are dicts with Ray's field names where a field maps; :data:`FIELDS` has every
field, :data:`DEFAULT_FIELDS` those shown unless ``detail`` (docs/observability.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import exceptions as exc
from ..wire.messages import Msg
from ..wire.transport import node_of, parse_address

DEFAULT_LIMIT = 100
"""Records a listing returns unless ``limit`` says otherwise (as Ray)."""

FIELDS: dict[str, tuple[str, ...]] = {
    "nodes": ("node_id", "node_ip", "is_head_node", "state", "state_message", "node_name", "resources_total",
              "resources_available", "address", "object_store", "control"),
    "actors": ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace",
               "namespace", "num_restarts", "max_restarts", "is_detached", "reason", "owner"),
    "tasks": ("task_id", "name", "state", "job_id", "actor_id", "type", "func_or_class_name", "node_id",
              "worker_id", "worker_pid", "error_type", "error_message", "start_time_ms", "end_time_ms"),
    "objects": ("object_id", "object_size", "reference_type", "type", "pid", "ip", "node_id", "owner",
                "copies", "spilled", "store_state"),
    "placement-groups": ("placement_group_id", "name", "creator_job_id", "state", "strategy", "bundles",
                         "stats", "reason"),
    "jobs": ("job_id", "type", "status", "entrypoint", "start_time", "end_time", "driver_info",
             "driver_node_id", "submission_id", "namespace", "driver_address"),
}
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "nodes": FIELDS["nodes"][:7],
    "actors": FIELDS["actors"][:9],
    "tasks": FIELDS["tasks"][:11],
    "objects": FIELDS["objects"][:7],
    "placement-groups": FIELDS["placement-groups"][:5],
    "jobs": FIELDS["jobs"][:8],
}
KINDS = tuple(FIELDS)

_ACTOR_STATES = {"PENDING": "PENDING_CREATION"}  # Ray's name; the others are the same words
_PG_STATES = {"PREPARING": "PENDING"}  # bundles placed, reservations not all confirmed: not created yet
_STATE_ORDER = {"RUNNING": 0, "SUBMITTED_TO_WORKER": 1}  # tasks: these first, then the other unfinished


class StateRecord(dict):
    """One listed entity: a dict whose fields also read as attributes (``actor.state``), as
    the records of Ray's state API do."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ------------------------------------------------------------------ sources


class Source:
    """How a listing reaches the mesh: ``request(msg_type, *fields, timeout=s)`` sends one
    request to a daemon and returns its REPLY's value (a driver's own daemon, or a node
    of this machine for the command line)."""

    def __init__(self, request: Callable[..., Any], timeout: float = 30.0) -> None:
        self.request = request
        self.timeout = float(timeout)

    @classmethod
    def for_node(cls, info: dict, timeout: float = 30.0) -> Source:
        """Ask a node of this machine (``info``: its daemon.json), as the command line does."""
        from ..host.launcher import request

        return cls(lambda msg, *fields, timeout: request(info, msg, *fields, timeout=timeout), timeout)

    def gcs(self, op: tuple, timeout: float | None = None) -> Any:
        """A control store read; ControlStoreUnavailableError when it has no quorum."""
        t = self.timeout if timeout is None else timeout
        answer = self.request(Msg.GCS_REQUEST, op, t, timeout=t + 5.0)
        status, value = answer if isinstance(answer, tuple) and len(answer) == 2 else ("error", answer)
        if status == "ok":
            return value
        if status == "unavailable":
            raise exc.ControlStoreUnavailableError(value)
        raise exc.MeshError(f"the control store refused {op[0]}: {value}")

    def gather(self, msg_type: Msg) -> list:
        """Every node's answer to a "mesh" request (the daemon waits at most a few seconds)."""
        value = self.request(msg_type, "mesh", timeout=self.timeout)
        return value if isinstance(value, list) else []

    def view(self) -> dict:
        """The daemon's view of the mesh: itself in full, its peers as gossiped."""
        value = self.request(Msg.NODE_INFO, "mesh", timeout=self.timeout)
        return value if isinstance(value, dict) else {}

    def drivers(self) -> dict[str, str]:
        """Driver address -> job id, or {} when the control store cannot say."""
        try:
            return {k: j.get("job_id") for k, j in self.gcs(("jobs",), min(self.timeout, 5.0)).items()}
        except exc.ControlStoreUnavailableError:
            return {}


def _ip(address: Any) -> str | None:
    """The IP of a daemon or process address; 127.0.0.1 for one without TCP (a local node)."""
    try:
        tcp = parse_address(address)[2]
    except (ValueError, TypeError, AttributeError):
        return None
    return tcp[len("tcp://"):].rpartition(":")[0] if tcp else "127.0.0.1"


def _node_ips(view: dict) -> dict[str, str | None]:
    return {n["node_id"]: _ip(n.get("address")) for n in view.get("nodes", ()) if n.get("node_id")}


def _ms(seconds: Any) -> int | None:
    return int(seconds * 1000) if isinstance(seconds, (int, float)) else None


# ------------------------------------------------------------------ records


def node_records(table: dict, view: dict) -> list[dict]:
    """The control store's nodes (registration order) and any only gossip knows yet; gossip,
    fresher, decides ALIVE (alive, suspect) or DEAD (dead, left) where it has the node."""
    seen = {n["node_id"]: n for n in view.get("nodes", ()) if n.get("node_id")}
    out = []
    for node_id in list(table) + [n for n in seen if n not in table]:
        rec, live = table.get(node_id) or {}, seen.get(node_id)
        gossip = live.get("state") if live else None
        alive = gossip in ("alive", "suspect") if gossip is not None else rec.get("state") == "ALIVE"
        message = {"suspect": "suspected by gossip (it may still refute)", "dead": "declared dead by gossip",
                   "left": "left the mesh"}.get(gossip or "")
        if message is None and not alive:
            message = "dead (the control store's record)"
        address = (live or {}).get("address") or rec.get("address")
        ip = _ip(address)
        tcp = parse_address(address)[2] if ip and address else ""
        store = (live or {}).get("store") or {}
        out.append({
            "node_id": node_id, "node_ip": ip, "is_head_node": False,  # every node is the same: no head
            "state": "ALIVE" if alive else "DEAD", "state_message": message, "node_name": rec.get("host") or ip,
            "resources_total": dict((live or {}).get("resources_total") or rec.get("resources") or {}),
            "resources_available": dict((live or {}).get("resources_available") or {}) if alive else {},
            "address": tcp.replace("tcp://", "") or None,
            "object_store": {"used": store.get("used"), "capacity": store.get("capacity")} if store else None,
            "control": (live or {}).get("control") or None,
        })
    return out


def actor_records(table: dict) -> list[dict]:
    out = []
    for actor_id, a in table.items():
        ns = a.get("namespace") or ""
        out.append({
            "actor_id": actor_id.hex() if isinstance(actor_id, bytes) else str(actor_id),
            "class_name": a.get("class_name"), "state": _ACTOR_STATES.get(a.get("state"), a.get("state")),
            "job_id": a.get("job_id") or None, "name": a.get("name") or "", "node_id": a.get("node_id"),
            "pid": a.get("pid"), "ray_namespace": ns, "namespace": ns, "num_restarts": a.get("restarts", 0),
            "max_restarts": a.get("max_restarts", 0), "is_detached": bool(a.get("detached")),
            "reason": a.get("reason") or None, "owner": a.get("owner"),
        })
    return out


def job_records(table: dict, ips: dict) -> list[dict]:
    """One DRIVER job per driver that registered.  A driver that ended is SUCCEEDED, as Ray
    reports drivers it did not start itself: its exit status is not known here."""
    out = []
    for address, j in table.items():
        node, worker = j.get("node_id"), address.partition("/")[2].partition("@")[0]
        out.append({
            "job_id": j.get("job_id"), "type": "SUBMISSION" if j.get("submission_id") else "DRIVER",
            "status": "RUNNING" if j.get("finished") is None else "SUCCEEDED",
            "entrypoint": j.get("entrypoint") or "", "start_time": _ms(j.get("started")),
            "end_time": _ms(j.get("finished")),
            "driver_info": {"id": worker[2:] if worker.startswith("p_") else worker,
                            "node_ip_address": ips.get(node), "pid": j.get("pid")},
            "driver_node_id": node, "submission_id": j.get("submission_id"), "namespace": j.get("namespace"),
            "driver_address": address,
        })
    return sorted(out, key=lambda r: r["job_id"] or "")


def pg_records(table: dict, drivers: dict[str, str]) -> list[dict]:
    out = []
    for pg_id, pg in table.items():
        nodes = pg.get("bundles_to_node_id") or {}
        out.append({
            "placement_group_id": pg_id, "name": pg.get("name") or "",
            "creator_job_id": drivers.get(pg.get("creator") or ""),
            "state": _PG_STATES.get(pg.get("state"), pg.get("state")), "strategy": pg.get("strategy"),
            "bundles": [{"bundle_index": i, "node_id": nodes.get(i), "unit_resources": dict(b)}
                        for i, b in sorted((pg.get("bundles") or {}).items())],
            "stats": {"scheduling_state": pg.get("state"), "scheduling_attempt": pg.get("attempt", 0)},
            "reason": pg.get("reason") or None,
        })
    return out


def group_objects(records: list[dict]) -> list[dict]:
    """Store records of every node, one entry per object with where its copies are (largest first)."""
    by_id: dict[str, dict] = {}
    for r in records:
        o = by_id.get(r["object_id"])
        if o is None:
            o = by_id[r["object_id"]] = {"object_id": r["object_id"], "size": r["size"], "owner": r["owner"],
                                         "owner_pid": None, "copies": [], "pins": 0, "spilled": False,
                                         "state": "sealed"}
        o["copies"].append({"node_id": r["node_id"], "primary": r["primary"], "in_memory": r["in_memory"],
                            "spilled": r["spilled"], "pins": r["pins"]})
        o["pins"] += r["pins"]
        o["spilled"] = o["spilled"] or r["spilled"]
        if r["primary"]:
            o["owner_pid"] = r.get("owner_pid")
            if not r["sealed"]:
                o["state"] = "being written"
            elif r["freed"]:
                o["state"] = "freed, still mapped"
    for o in by_id.values():
        o["copies"].sort(key=lambda c: (not c["primary"], c["node_id"]))
    return sorted(by_id.values(), key=lambda o: (-o["size"], o["object_id"]))


def object_records(records: list[dict], drivers: dict[str, str], ips: dict) -> list[dict]:
    """Objects in the stores.  The store knows whether readers pin a copy, not which refs
    exist: a pinned one is PINNED_IN_MEMORY, any other LOCAL_REFERENCE (its owner, a
    borrower or a pending task holds it, or it would have been freed)."""
    out = []
    for o in group_objects(records):
        primary = next((c["node_id"] for c in o["copies"] if c["primary"]), None)
        pinned = o["pins"] > 0 or o["state"] == "freed, still mapped"
        out.append({
            "object_id": o["object_id"], "object_size": o["size"],
            "reference_type": "PINNED_IN_MEMORY" if pinned else "LOCAL_REFERENCE",
            "type": ("DRIVER" if o["owner"] in drivers else "WORKER") if drivers else None,
            "pid": o["owner_pid"], "ip": ips.get(node_of(o["owner"])), "node_id": primary, "owner": o["owner"],
            "copies": [c["node_id"] for c in o["copies"]], "spilled": o["spilled"], "store_state": o["state"],
        })
    return out


def task_records(lanes: list) -> list[dict]:
    """Tasks from every process's lane: a worker's finished spans win over its running tasks,
    which win over what their owner says (it still waits for the result)."""
    found: dict[str, tuple[int, dict]] = {}

    def put(rank: int, rec: dict) -> None:
        old = found.get(rec["task_id"])
        if old is None or rank > old[0] or (rank == old[0] == 2 and rec["end_time_ms"] > old[1]["end_time_ms"]):
            found[rec["task_id"]] = (rank, rec)

    for lane in lanes:
        if not isinstance(lane, dict):
            continue
        where = {"node_id": lane.get("node_id"), "worker_id": lane.get("worker_id"), "worker_pid": lane.get("pid")}
        actor = lane.get("actor_id")
        for ev in _tuples(lane.get("events"), 4, 3):
            name, start, dur, task_id = ev[:4]
            if not isinstance(start, (int, float)) or not isinstance(dur, (int, float)):
                continue
            err = ev[4] if len(ev) > 4 and isinstance(ev[4], (tuple, list)) and len(ev[4]) == 2 else (None, None)
            put(2, _task(task_id, name, "FAILED" if err[0] else "FINISHED", ev[5] if len(ev) > 5 else None, actor,
                         where, err, _ms(start), _ms(start + dur)))
        for name, start, task_id, job in (ev[:4] for ev in _tuples(lane.get("running"), 4, 2)):
            put(1, _task(task_id, name, "RUNNING", job, actor, where, (None, None), _ms(start), None))
        for task_id, name, state, actor_id, node_id, job in (ev[:6] for ev in _tuples(lane.get("pending"), 6, 0)):
            put(0, _task(task_id, name, state, job, actor_id, {"node_id": node_id, "worker_id": None,
                                                               "worker_pid": None}, (None, None), None, None))
    ordered = sorted(found.values(), key=lambda rr: (rr[0] == 2, _STATE_ORDER.get(rr[1]["state"], 2),
                                                     -(rr[1]["end_time_ms"] or rr[1]["start_time_ms"] or 0)))
    return [rec for _, rec in ordered]


def _tuples(items: Any, n: int, id_at: int) -> Iterable[tuple]:
    """The entries of a lane's list with at least ``n`` fields and a task id at ``id_at``
    (a malformed entry drops only itself)."""
    for item in items if isinstance(items, list) else ():
        if isinstance(item, (tuple, list)) and len(item) >= n and isinstance(item[id_at], str):
            yield tuple(item)


def _task(task_id: str, name: Any, state: str, job: Any, actor_id: Any, where: dict, err: Any,
          start_ms: int | None, end_ms: int | None) -> dict:
    return {"task_id": task_id, "name": name, "state": state, "job_id": job or None, "actor_id": actor_id,
            "type": "ACTOR_TASK" if actor_id else "NORMAL_TASK", "func_or_class_name": name, **where,
            "error_type": err[0], "error_message": err[1], "start_time_ms": start_ms, "end_time_ms": end_ms}


def summarize_tasks(tasks: list[dict]) -> dict:
    """Ray's task summary: counts of each state per function (or actor method)."""
    summary: dict[str, dict] = {}
    for t in tasks:
        s = summary.setdefault(t["func_or_class_name"], {"func_or_class_name": t["func_or_class_name"],
                                                         "type": t["type"], "state_counts": {}})
        s["state_counts"][t["state"]] = s["state_counts"].get(t["state"], 0) + 1
    actor_tasks = sum(1 for t in tasks if t["type"] == "ACTOR_TASK")
    return {"cluster": {"summary": summary, "total_tasks": len(tasks) - actor_tasks,
                        "total_actor_tasks": actor_tasks, "summary_by": "func_name"}}


# -------------------------------------------------------------- collecting


def collect(source: Source, kind: str) -> list[dict]:
    """Every record of ``kind`` the mesh knows (before filters and the limit)."""
    if kind == "nodes":
        view = source.view()
        try:  # gossip alone still lists the nodes when the control store has no quorum
            table = source.gcs(("nodes",), min(source.timeout, 5.0))
        except exc.ControlStoreUnavailableError:
            table = {}
        return node_records(table, view)
    if kind == "actors":
        return actor_records(source.gcs(("actors",)))
    if kind == "jobs":
        return job_records(source.gcs(("jobs",)), _node_ips(source.view()))
    if kind == "placement-groups":
        return pg_records(source.gcs(("pg_table",)), source.drivers())
    if kind == "objects":
        records = source.gather(Msg.LIST_OBJECTS)
        return object_records(records, source.drivers() if records else {}, _node_ips(source.view()))
    if kind == "tasks":
        return task_records(source.gather(Msg.TIMELINE))
    raise ValueError(f"no such state to list: {kind!r} (one of {', '.join(KINDS)})")


def check_filters(kind: str, filters: Any) -> list[tuple[str, str, Any]]:
    """Ray's filters: ``[(field, "=" or "!=", value), ...]``; ValueError for a malformed one."""
    out = []
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is (field, '=' or '!=', value), got {f!r}")
        key, op, value = f
        if op not in ("=", "!="):
            raise ValueError(f"a filter's predicate is '=' or '!=', got {op!r}")
        if key not in FIELDS[kind]:
            raise ValueError(f"{kind} have no field {key!r}; they have: {', '.join(FIELDS[kind])}")
        out.append((key, op, value))
    return out


def parse_filter(text: str) -> tuple[str, str, str]:
    """``"state=ALIVE"`` or ``"name!=x"`` (the command line's --filter) as a filter tuple."""
    key, op, value = text.partition("!=")
    if not op:
        key, op, value = text.partition("=")
    if not op or not key.strip():
        raise ValueError(f"a filter reads KEY=VALUE or KEY!=VALUE, got {text!r}")
    return key.strip(), op, value.strip()


def _same(have: Any, want: Any) -> bool:
    """As Ray compares: strings without regard to case; numbers and flags by value."""
    if have is None or want is None:
        return have is None and (want is None or str(want).lower() in ("none", "null", ""))
    if isinstance(have, bool) or isinstance(want, bool):
        return str(have).lower() == str(want).lower()
    if isinstance(have, (int, float)):
        try:
            return float(want) == float(have)
        except (TypeError, ValueError):
            return False
    return str(have).lower() == str(want).lower()


def select(kind: str, records: list[dict], filters: Any, limit: int | None = DEFAULT_LIMIT,
           detail: bool = False) -> tuple[list[StateRecord], int]:
    """The records that pass ``filters``, at most ``limit`` of them (with the default fields
    unless ``detail``), and how many passed in all."""
    checked = check_filters(kind, filters)
    passed = [r for r in records if all(_same(r.get(k), v) == (op == "=") for k, op, v in checked)]
    shown = passed if limit is None else passed[:max(0, int(limit))]
    fields = FIELDS[kind] if detail else DEFAULT_FIELDS[kind]
    return [StateRecord({f: r.get(f) for f in fields}) for r in shown], len(passed)


# ------------------------------------------------------------------ tables


def _text(field: str, value: Any) -> str:
    """A field's value in a table cell (--json keeps the values as they are)."""
    from .top import human_bytes

    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if field.endswith("_ms") or field in ("start_time", "end_time"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value / 1000))
    if field == "object_size":
        return human_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {human_bytes(v) if 'memory' in str(k) else _text(str(k), v)}"
                         for k, v in value.items() if not str(k).startswith("node:"))
    if isinstance(value, list):
        return "; ".join(_text(field, v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(kind: str, records: list[dict], total: int, width: int = 80) -> Any:
    """A rich table of ``records`` (their fields are the columns) for a terminal ``width``
    columns wide, with how many were left out."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    fields = list(records[0]) if records else list(DEFAULT_FIELDS[kind])
    for same, twin in (("namespace", "ray_namespace"), ("func_or_class_name", "name")):
        if same in fields and twin in fields and all(r.get(same) == r.get(twin) for r in records):
            fields.remove(same)  # the same value twice (--json keeps both)
    more = f", {total - len(records)} more not shown (--limit)" if total > len(records) else ""
    title = f"{kind}: {len(records)}{more}"
    rows = [[_text(f, r.get(f)) for f in fields] for r in records]
    natural = [max([len(f)] + [len(row[i]) for row in rows]) for i, f in enumerate(fields)]
    room = width - 3 * len(fields) - 1  # what the cells may take: the rest is padding and edges
    widths: list[int | None] = [None] * len(fields)  # rich's own, each cell on one line
    if sum(natural) > room:
        # Long ids fold over lines (whole, to copy into a filter), sharing what the short
        # words leave; below 8 characters each record becomes a block of "field  value" lines
        # instead (rich would crop whole columns).
        ids = [i for i, f in enumerate(fields) if f.endswith("_id")]
        widths = [None if i in ids else min(n, max(12, len(f))) for i, (f, n) in enumerate(zip(fields, natural))]
        share = (room - sum(w for w in widths if w)) // max(1, len(ids))
        for i in ids:
            widths[i] = min(natural[i], share)
            if share < max(8, len(fields[i])):
                share = -1  # not even the header fits
        left = room - sum(w for w in widths if w)
        for i, n in enumerate(natural):  # what the ids did not need goes to the long words
            grow = max(0, min(left, n - (widths[i] or n)))
            widths[i] = (widths[i] or 0) + grow
            left -= grow
        if share < 0 or sum(w for w in widths if w) > room:
            widths = []
    if widths:
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for f, w in zip(fields, widths):
            t.add_column(f, overflow="fold", width=w)
        for row in rows:
            t.add_row(*row)
        return t
    blocks: list[Any] = [Text(title + "\n")]
    for row in rows:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for f, value in zip(fields, row):
            grid.add_row(f, value)
        blocks += [grid, Text("")]
    return Group(*blocks)


def summary_table(summary: dict) -> Any:
    from rich import box
    from rich.table import Table

    c = summary["cluster"]
    t = Table(title=f"tasks: {c['total_tasks']} tasks, {c['total_actor_tasks']} actor tasks",
              box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("func_or_class_name", "type", "state_counts"):
        t.add_column(col, overflow="fold")
    for s in sorted(c["summary"].values(), key=lambda s: -sum(s["state_counts"].values())):
        t.add_row(s["func_or_class_name"], s["type"], _text("state_counts", s["state_counts"]))
    return t


__all__ = ["DEFAULT_FIELDS", "DEFAULT_LIMIT", "FIELDS", "KINDS", "Source", "StateRecord", "collect",
           "check_filters", "group_objects", "parse_filter", "select", "summarize_tasks",
           "summary_table", "table"]
