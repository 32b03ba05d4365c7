"""Ray's state API (meshcompute.util.state, `mesh list`, `mesh summary`): the pure record
building and filtering, Ray's documentation example on an embedded node, and the listings
of a real 3-node loopback mesh, filtered across its nodes, from a driver and from the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.host.launcher import query
from meshcompute.observe.state import (
    DEFAULT_FIELDS,
    FIELDS,
    StateRecord,
    check_filters,
    job_records,
    node_records,
    parse_filter,
    select,
    summarize_tasks,
    task_records,
)
from meshcompute.util import state
from meshcompute.util.placement_group import placement_group, remove_placement_group
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for

MiB = 1 << 20
EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")


# ------------------------------------------------------------------ pure parts


def test_filters_parse_check_and_compare_as_ray_does():
    assert parse_filter("state=ALIVE") == ("state", "=", "ALIVE")
    assert parse_filter(" name != a=b ") == ("name", "!=", "a=b")
    with pytest.raises(ValueError):
        parse_filter("state")
    with pytest.raises(ValueError, match="no field 'colour'"):
        check_filters("actors", [("colour", "=", "red")])
    with pytest.raises(ValueError, match="predicate"):
        check_filters("actors", [("state", ">", "ALIVE")])
    with pytest.raises(ValueError):
        check_filters("actors", ["state=ALIVE"])
    records = [{"actor_id": "a1", "state": "ALIVE", "pid": 10, "is_detached": False, "node_id": None},
               {"actor_id": "a2", "state": "DEAD", "pid": 11, "is_detached": True, "node_id": "n1"}]
    ids = lambda filters: [r["actor_id"] for r in select("actors", records, filters, detail=True)[0]]  # noqa: E731
    assert ids([("state", "=", "alive")]) == ["a1"]  # strings: any case
    assert ids([("state", "!=", "ALIVE")]) == ["a2"]
    assert ids([("pid", "=", "11")]) == ["a2"] and ids([("pid", "=", 10)]) == ["a1"]  # numbers by value
    assert ids([("is_detached", "=", "true")]) == ["a2"]
    assert ids([("node_id", "=", None)]) == ["a1"] and ids([("node_id", "!=", "none")]) == ["a2"]
    assert ids([("state", "!=", "ALIVE"), ("pid", "=", 10)]) == []  # all must hold
    shown, total = select("actors", records * 3, None, limit=4)
    assert len(shown) == 4 and total == 6
    assert list(shown[0]) == list(DEFAULT_FIELDS["actors"])
    assert list(select("actors", records, None, detail=True)[0][0]) == list(FIELDS["actors"])


def test_records_read_as_attributes_and_dump_as_json():
    r = StateRecord(state="ALIVE", pid=3)
    assert r.state == "ALIVE" and r["pid"] == 3 and json.loads(json.dumps(r)) == {"state": "ALIVE", "pid": 3}
    with pytest.raises(AttributeError):
        r.colour  # noqa: B018


def test_tables_fit_the_terminal_or_become_blocks_of_lines():
    from rich.console import Console

    from meshcompute.observe.state import table

    tasks = [{"task_id": f"{'ab' * 10}{i:04x}", "name": "train", "state": "PENDING_NODE_ASSIGNMENT",
              "job_id": "00000001", "actor_id": None, "type": "NORMAL_TASK", "func_or_class_name": "train",
              "node_id": "c" * 16, "worker_id": None, "worker_pid": None, "error_type": None} for i in range(3)]

    def shown(width: int) -> list[str]:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table("tasks", tasks, 5, width))
        return console.export_text().splitlines()

    wide = shown(200)
    header = next(line for line in wide if "task_id" in line).split()
    assert header == [f for f in DEFAULT_FIELDS["tasks"] if f != "func_or_class_name"]  # the same as name
    assert wide[0].startswith("tasks: 3, 2 more not shown") and sum(tasks[0]["task_id"] in w for w in wide) == 1
    assert all(len(line.rstrip()) <= 200 for line in wide)
    narrow = shown(60)
    assert [line.split()[0] for line in narrow if line.startswith("task_id")] == ["task_id"] * 3
    assert any(line.split() == ["state", "PENDING_NODE_ASSIGNMENT"] for line in narrow)
    assert all(len(line.rstrip()) <= 60 for line in narrow)


def test_nodes_merge_the_control_store_table_with_gossip():
    table = {"a": {"state": "ALIVE", "address": "a/daemon@tcp://10.0.0.1:7777", "resources": {"CPU": 2.0},
                   "host": "10.0.0.1"},
             "b": {"state": "ALIVE", "address": "b/daemon@tcp://10.0.0.2:7777", "resources": {"CPU": 1.0}},
             "c": {"state": "DEAD", "address": "c/daemon@tcp://10.0.0.3:7777", "resources": {}}}
    view = {"nodes": [{"node_id": "a", "state": "alive", "address": "a/daemon@tcp://10.0.0.1:7777",
                       "resources_total": {"CPU": 2.0}, "resources_available": {"CPU": 1.5}},
                      {"node_id": "b", "state": "left", "address": "b/daemon@tcp://10.0.0.2:7777",
                       "resources_total": {"CPU": 1.0}},
                      {"node_id": "d", "state": "suspect", "address": "d/daemon@tcp://10.0.0.4:7777",
                       "resources_total": {"CPU": 4.0}}]}
    nodes = {n["node_id"]: n for n in node_records(table, view)}
    assert [n for n in nodes] == ["a", "b", "c", "d"]  # registration order, then what only gossip knows
    assert nodes["a"]["state"] == "ALIVE" and nodes["a"]["node_ip"] == "10.0.0.1"
    assert nodes["a"]["resources_available"] == {"CPU": 1.5} and nodes["a"]["address"] == "10.0.0.1:7777"
    assert nodes["b"]["state"] == "DEAD" and nodes["b"]["state_message"] == "left the mesh"  # gossip is fresher
    assert nodes["c"]["state"] == "DEAD"
    assert nodes["d"]["state"] == "ALIVE" and "suspect" in nodes["d"]["state_message"]
    assert not any(n["is_head_node"] for n in nodes.values())


def test_tasks_merge_spans_running_and_pending_by_precedence():
    lanes = [
        {"kind": "worker", "node_id": "n1", "pid": 7, "worker_id": "w1", "actor_id": None,
         "events": [("f", 100.0, 0.5, "t1", None, "00000001"),
                    ("g", 101.0, 0.1, "t2", ("TASK_EXECUTION_EXCEPTION", "ValueError: x"), "00000001"),
                    ("old", 50.0, 0.1, "t5")],  # a lane of an older worker: 4 fields
         "running": [("h", 102.0, "t3", "00000001")], "pending": []},
        {"kind": "driver", "node_id": "n1", "pid": 9, "worker_id": "d", "events": [], "running": [],
         "pending": [("t1", "f", "SUBMITTED_TO_WORKER", None, "n1", "00000001"),  # finished meanwhile
                     ("t3", "h", "SUBMITTED_TO_WORKER", None, "n1", "00000001"),
                     ("t4", "k", "PENDING_NODE_ASSIGNMENT", None, None, "00000001"),
                     ("bad",)]},
        "not a lane",
    ]
    tasks = {t["task_id"]: t for t in task_records(lanes)}
    assert tasks["t1"]["state"] == "FINISHED" and tasks["t1"]["end_time_ms"] == 100500
    assert tasks["t2"]["state"] == "FAILED" and tasks["t2"]["error_type"] == "TASK_EXECUTION_EXCEPTION"
    assert tasks["t3"]["state"] == "RUNNING" and tasks["t3"]["worker_pid"] == 7
    assert tasks["t4"]["state"] == "PENDING_NODE_ASSIGNMENT" and tasks["t4"]["worker_id"] is None
    assert tasks["t5"]["job_id"] is None and tasks["t5"]["state"] == "FINISHED"
    # Unfinished first (running before waiting), then the newest finished.
    assert [t["task_id"] for t in task_records(lanes)] == ["t3", "t4", "t2", "t1", "t5"]
    summary = summarize_tasks(list(tasks.values()))["cluster"]
    assert summary["total_tasks"] == 5 and summary["summary"]["f"]["state_counts"] == {"FINISHED": 1}


def test_jobs_are_drivers_running_until_their_process_ends():
    table = {"n1/p_abc@": {"job_id": "00000002", "node_id": "n1", "pid": 5, "started": 10.0, "finished": 12.5,
                           "entrypoint": "python x.py"},
             "n1/p_def@": {"job_id": "00000001", "node_id": "n1", "pid": 6, "started": 9.0, "finished": None}}
    jobs = job_records(table, {"n1": "10.0.0.1"})
    assert [(j["job_id"], j["status"]) for j in jobs] == [("00000001", "RUNNING"), ("00000002", "SUCCEEDED")]
    assert jobs[1]["end_time"] == 12500 and jobs[1]["entrypoint"] == "python x.py"
    assert jobs[1]["driver_info"] == {"id": "abc", "node_ip_address": "10.0.0.1", "pid": 5}
    assert jobs[0]["type"] == "DRIVER" and jobs[0]["submission_id"] is None


def test_a_drivers_own_job_add_keeps_its_id_and_adds_what_its_daemons_lacked():
    from meshcompute.gcs.state import GcsState

    s = GcsState()
    assert s.apply(1, None, ("job_add", "n/p_d@", {"pid": 1, "started": 5.0})) == "00000001"
    assert s.apply(2, None, ("job_add", "n/p_d@", {"pid": 2, "entrypoint": "python x.py"})) == "00000001"
    assert s.read(("jobs",))["n/p_d@"] == {"pid": 1, "started": 5.0, "entrypoint": "python x.py",
                                           "job_id": "00000001", "finished": None}
    assert s.apply(3, None, ("job_add", "n/p_e@", {})) == "00000002"


# ------------------------------------------------------- Ray's documentation example


@pytest.mark.timeout(150)
def test_ray_state_api_example_runs_after_changing_the_import():
    # Before the mesh below exists: the example starts an embedded node of its own.
    if mesh.is_initialized():
        mesh.shutdown()
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "ray_state_api.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


# ---------------------------------------------------------------- a real mesh


@pytest.fixture(scope="module")
def mesh3():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=128 * MiB) as (_token, nodes):
        infos = [info for _, info in nodes]
        ids = [info["node_id"] for info in infos]
        assert wait_for(lambda: all({n["node_id"] for n in query(i, "mesh")["nodes"]} == set(ids) for i in infos),
                        timeout=20)
        seed = infos[0]["tcp"].replace("tcp://", "")
        try:
            mesh.init(address=seed)
            yield {"seed": seed, "nodes": infos, "ids": ids}
        finally:
            mesh.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess:
    # A wide terminal: tables keep each cell on one line (an 80-column one folds the ids).
    return subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "250"})


def _on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@mesh.remote
def where(i):
    return mesh.get_runtime_context().get_node_id(), mesh.get_runtime_context().get_job_id()


@mesh.remote
def located(i):
    return mesh.get_runtime_context().get_node_id()


@mesh.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@mesh.remote
def fails():
    raise KeyError("no such key")


@mesh.remote
def parent():
    # A nested task: the job travels from the driver through this worker to the child.
    return mesh.get(child.remote()), mesh.get_runtime_context().get_job_id()


@mesh.remote
def child():
    return mesh.get_runtime_context().get_job_id()


@mesh.remote
class Keeper:
    def job(self):
        return mesh.get_runtime_context().get_job_id()


@pytest.mark.timeout(120)
def test_the_driver_and_its_tasks_and_actors_know_the_job_id(mesh3):
    job_id = mesh.get_runtime_context().get_job_id()
    assert len(job_id) == 8 and int(job_id, 16) >= 1
    assert {j for _, j in mesh.get([where.remote(i) for i in range(6)], timeout=60)} == {job_id}
    assert mesh.get(parent.remote(), timeout=60) == (job_id, job_id)
    keeper = Keeper.options(scheduling_strategy=_on(mesh3["ids"][2])).remote()
    assert mesh.get(keeper.job.remote(), timeout=60) == job_id
    mine = state.list_jobs(filters=[("job_id", "=", job_id)], detail=True)
    assert len(mine) == 1 and mine[0]["status"] == "RUNNING" and mine[0]["driver_info"]["pid"] == os.getpid()
    assert mine[0]["driver_node_id"] == mesh3["ids"][0] and "pytest" in mine[0]["entrypoint"]
    assert mine[0]["driver_info"]["id"] == mesh.get_runtime_context().get_worker_id()


@pytest.mark.timeout(120)
def test_tasks_listed_and_filtered_across_the_nodes(mesh3):
    a, b, c = mesh3["ids"]
    job_id = mesh.get_runtime_context().get_job_id()
    got = mesh.get([located.options(scheduling_strategy=_on(n)).remote(i) for i, n in enumerate((a, b, c, b))],
                   timeout=60)
    assert got == [a, b, c, b]
    with pytest.raises(KeyError):
        mesh.get(fails.options(scheduling_strategy=_on(c)).remote(), timeout=60)
    # One CPU per node: the first nap runs on b, the next two wait for it.
    naps = [nap.options(scheduling_strategy=_on(b)).remote(3) for _ in range(3)]

    def listed():
        ts = state.list_tasks(filters=[("func_or_class_name", "=", "nap")], limit=None)
        return ts if {t["state"] for t in ts} >= {"RUNNING"} and len(ts) == 3 else None

    naps_listed = wait_for(listed, timeout=20)
    assert naps_listed, state.list_tasks(limit=None)
    assert [t["state"] for t in naps_listed].count("RUNNING") == 1
    assert {t["state"] for t in naps_listed} - {"RUNNING"} <= {"PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER"}
    running = next(t for t in naps_listed if t["state"] == "RUNNING")
    assert running["node_id"] == b and running["job_id"] == job_id and running["worker_pid"]

    on_b = state.list_tasks(filters=[("node_id", "=", b), ("name", "=", "located")])
    assert len(on_b) == 2 and {t["state"] for t in on_b} == {"FINISHED"}
    assert sorted(t["node_id"] for t in state.list_tasks(filters=[("name", "=", "located")])) == sorted([a, b, c, b])
    assert len(state.list_tasks(filters=[("name", "=", "located"), ("node_id", "!=", b)])) == 2
    failed = state.list_tasks(filters=[("state", "=", "FAILED"), ("name", "=", "fails")], detail=True)
    assert len(failed) == 1 and failed[0]["node_id"] == c
    assert failed[0]["error_type"] == "TASK_EXECUTION_EXCEPTION" and "KeyError" in failed[0]["error_message"]
    assert failed[0]["start_time_ms"] <= failed[0]["end_time_ms"]
    assert len(state.list_tasks(limit=2)) == 2

    # The same through the command line, asking another node than the driver's.
    r = _cli("list", "tasks", "--filter", f"node_id={c}", "--filter", "name=located", "--json",
             "--address", mesh3["nodes"][1]["tcp"].replace("tcp://", ""))
    assert r.returncode == 0, r.stderr
    listed_c = json.loads(r.stdout)
    assert len(listed_c) == 1 and listed_c[0]["node_id"] == c and listed_c[0]["job_id"] == job_id
    r = _cli("summary", "tasks", "--json", "--address", mesh3["seed"])
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["cluster"]["summary"]
    assert counts["fails"]["state_counts"] == {"FAILED": 1} and counts["located"]["type"] == "NORMAL_TASK"
    pretty = _cli("summary", "tasks", "--address", mesh3["seed"])
    assert pretty.returncode == 0 and "located" in pretty.stdout
    assert mesh.get(naps, timeout=60) == [3, 3, 3]


@pytest.mark.timeout(120)
def test_nodes_actors_objects_and_placement_groups(mesh3):
    a, b, c = mesh3["ids"]
    nodes = state.list_nodes()
    assert [n["node_id"] for n in nodes] == [a, b, c]
    assert all(n["state"] == "ALIVE" and n["node_ip"] == "127.0.0.1" and n["resources_total"]["CPU"] == 1
               for n in nodes)
    assert [n.node_id for n in state.list_nodes(filters=[("node_id", "!=", a)])] == [b, c]

    named = Keeper.options(name="keeper-b", scheduling_strategy=_on(b)).remote()
    other = Keeper.options(scheduling_strategy=_on(c)).remote()
    mesh.get([named.job.remote(), other.job.remote()], timeout=60)
    on_b = state.list_actors(filters=[("node_id", "=", b), ("state", "=", "ALIVE")])
    assert [x["name"] for x in on_b] == ["keeper-b"] and on_b[0]["class_name"] == "Keeper" and on_b[0]["pid"]
    assert on_b[0]["ray_namespace"] == on_b[0]["namespace"] == mesh.get_runtime_context().namespace
    mesh.kill(other)
    wait_for(lambda: state.list_actors(filters=[("node_id", "=", c), ("state", "=", "DEAD")]), timeout=15)
    dead = state.list_actors(filters=[("node_id", "=", c), ("state", "=", "DEAD")], detail=True)
    assert dead and dead[0]["reason"]

    ref = mesh.put(np.zeros(2 * MiB, dtype=np.uint8))
    objects = state.list_objects(filters=[("object_id", "=", ref.hex())], detail=True)
    assert len(objects) == 1 and objects[0]["object_size"] >= 2 * MiB and objects[0]["node_id"] == a
    assert objects[0]["type"] == "DRIVER" and objects[0]["pid"] == os.getpid()
    assert objects[0]["reference_type"] in ("LOCAL_REFERENCE", "PINNED_IN_MEMORY")

    pg = placement_group([{"CPU": 1}], strategy="PACK", name="state-pg")
    mesh.get(pg.ready(), timeout=30)
    pgs = state.list_placement_groups(filters=[("name", "=", "state-pg")], detail=True)
    assert len(pgs) == 1 and pgs[0]["state"] == "CREATED" and pgs[0]["strategy"] == "PACK"
    assert pgs[0]["creator_job_id"] == mesh.get_runtime_context().get_job_id()
    assert pgs[0]["bundles"][0]["unit_resources"] == {"CPU": 1.0} and pgs[0]["bundles"][0]["node_id"] in (a, b, c)
    remove_placement_group(pg)
    assert wait_for(lambda: state.list_placement_groups(filters=[("name", "=", "state-pg")])[0]["state"]
                    == "REMOVED", timeout=15)

    r = _cli("list", "actors", "--filter", "name=keeper-b", "--address", mesh3["seed"])
    assert r.returncode == 0 and "actors: 1" in r.stdout and "Keeper" in r.stdout, r.stdout + r.stderr
    r = _cli("list", "nodes", "--json", "--detail", "--address", mesh3["seed"])
    assert r.returncode == 0 and [n["node_id"] for n in json.loads(r.stdout)] == [a, b, c]
    assert "resources_available" in json.loads(r.stdout)[0]
    r = _cli("list", "objects", "--address", mesh3["seed"])
    assert r.returncode == 0 and ref.hex() in r.stdout, r.stdout
    r = _cli("list", "actors", "--filter", "colour=red", "--address", mesh3["seed"])
    assert r.returncode == 2 and "colour" in r.stderr


@pytest.mark.timeout(120)
def test_jobs_of_drivers_that_ended_and_listing_without_a_driver(mesh3, tmp_path):
    script = tmp_path / "short_driver.py"
    script.write_text(textwrap.dedent(f"""
        import meshcompute as mesh
        mesh.init(address={mesh3['seed']!r})
        print(mesh.get_runtime_context().get_job_id())
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    short_job = proc.stdout.strip().splitlines()[-1]
    assert len(short_job) == 8 and short_job != mesh.get_runtime_context().get_job_id()

    def ended():
        jobs = state.list_jobs(filters=[("job_id", "=", short_job)])
        return jobs and jobs[0]["status"] == "SUCCEEDED" and jobs[0]

    job = wait_for(ended, timeout=15)
    assert job and job["end_time"] >= job["start_time"] and "short_driver.py" in job["entrypoint"]
    # The command line asks a node directly: no driver of its own, so no job of its own.
    before = {j["job_id"] for j in state.list_jobs(limit=None)}
    r = _cli("list", "jobs", "--json", "--limit", "1000", "--address", mesh3["seed"])
    assert r.returncode == 0, r.stderr
    assert {j["job_id"] for j in json.loads(r.stdout)} == before
    r = _cli("list", "jobs", "--filter", "status=RUNNING", "--address", mesh3["seed"])
    assert r.returncode == 0 and mesh.get_runtime_context().get_job_id() in r.stdout


def test_a_listing_outside_a_driver_needs_a_node(monkeypatch):
    monkeypatch.setattr("meshcompute.util.state.find_any_node", lambda ref: None)
    from meshcompute.owner import context

    monkeypatch.setattr(context, "core", None)
    with pytest.raises(ConnectionError):
        state.list_nodes()
    with pytest.raises(ValueError):  # before it looks for a node
        state.list_actors(filters=[("colour", "=", "red")])
