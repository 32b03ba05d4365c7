"""Observability against a real 3-node mesh: the monitor feed (Clone pattern), get(progress=True),
timelines, mesh logs, worker output on the driver, mesh memory."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

import meshcompute as mesh
from meshcompute import exceptions
from meshcompute.host.launcher import request, start_node, stop_node
from meshcompute.host.sessions import keys_for_session
from meshcompute.observe.client import MonitorState, connect, wait_for_snapshot
from meshcompute.observe.state import group_objects as _group_objects
from meshcompute.owner import context
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from meshcompute.wire.ids import random_id
from meshcompute.wire.messages import Msg, decode, encode
from meshcompute.wire.transport import Endpoint

from .conftest import loopback_mesh, wait_for

MiB = 1 << 20


def _states(info) -> dict:
    from meshcompute.host.launcher import query

    return {n["node_id"]: n["state"] for n in query(info, "mesh")["nodes"]}


@pytest.fixture(scope="module")
def obs3():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=128 * MiB) as (_token, nodes):
        try:
            seed = nodes[0][1]["tcp"].replace("tcp://", "")
            ids = {info["node_id"] for _, info in nodes}
            assert wait_for(lambda: all(set(_states(info)) == ids for _, info in nodes), timeout=15)
            mesh.init(address=seed)
            yield {"seed": seed, "nodes": [info for _, info in nodes], "ids": [info["node_id"] for _, info in nodes]}
        finally:
            if mesh.is_initialized():
                mesh.shutdown()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _pinned(node_id: str):
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@mesh.remote
def square(x):
    return x * x


@mesh.remote
def traced_task(i):
    time.sleep(0.03)
    return os.getpid(), mesh.get_runtime_context().get_node_id()


@mesh.remote
def shout(text):
    print(text)
    return os.getpid()


@mesh.remote
def nbytes(arr):
    return int(arr.nbytes)


class RawSubscriber:
    """A monitor subscriber speaking the wire protocol directly (no MonitorClient)."""

    def __init__(self, info: dict, tcp: bool = True) -> None:
        self.ctx = zmq.Context()
        self.dir = tempfile.mkdtemp(prefix="montest-")
        if tcp:
            self.ep = Endpoint(self.ctx, "montest" + random_id()[:8], f"t_{random_id()}", self.dir,
                               host="127.0.0.1", keys=keys_for_session(info["session_dir"]))
        else:  # a node without TCP: same node id, ipc in its session dir
            self.ep = Endpoint(self.ctx, info["node_id"], f"t_{random_id()}", info["session_dir"])
        self.daemon = info["address"]

    def send(self, msg_type: Msg, *fields) -> None:
        self.ep.send(self.daemon, [encode(msg_type, *fields)])

    def recv(self, timeout: float) -> tuple | None:
        if not self.ep.inboxes[-1].poll(int(timeout * 1000)):
            return None
        frames = self.ep.inboxes[-1].recv_multipart()
        return decode(frames[1])

    def close(self) -> None:
        import shutil

        self.ep.close()
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ Clone pattern


def test_monitor_state_applies_in_order_and_drops_stale_updates():
    st = MonitorState()
    assert st.apply_update(1, [("node/a", {"state": "alive"})]) == "no-snapshot"
    st.apply_snapshot(5, {"node/a": {"node_id": "a", "state": "alive", "tasks": {"finished": 3}},
                          "actor/x": {"state": "ALIVE"}})
    assert st.apply_update(4, [("node/a", {"state": "dead"})]) == "stale"
    assert st.apply_update(5, [("node/a", {"state": "dead"})]) == "stale"
    assert st.data["node/a"]["state"] == "alive" and st.stale == 2
    assert st.apply_update(6, [("node/a", {"node_id": "a", "state": "suspect", "tasks": {"finished": 9}}),
                               ("actor/x", None)]) == "applied"
    assert st.seq == 6 and "actor/x" not in st.data and st.finished_total() == 9
    assert st.apply_update(8, [("node/a", {"state": "dead"})]) == "gap"
    assert st.seq == 6 and st.data["node/a"]["state"] == "suspect"
    generation = st.generation
    st.apply_snapshot(2, {})  # a new daemon starts its own numbering
    assert st.seq == 2 and st.generation == generation + 1


def test_monitor_feed_snapshot_then_sequenced_updates_across_the_mesh(obs3):
    first = obs3["nodes"][0]
    sub = RawSubscriber(first)
    try:
        sub.send(Msg.MONITOR_SUBSCRIBE, 41, "mesh", 10.0)
        msg = sub.recv(10)
        assert msg is not None and msg[0] == Msg.MONITOR_SNAPSHOT and msg[1] == 41
        seq, snapshot = msg[2], msg[3]
        assert {k for k in snapshot if k.startswith("node/")} == {f"node/{n}" for n in obs3["ids"]}
        ctl = snapshot["control"]
        assert ctl["leader"] in obs3["ids"] and ctl["term"] >= 1 and ctl["commit_index"] > 0
        mine = snapshot[f"node/{first['node_id']}"]
        assert mine["state"] == "alive" and mine["cpu"]["total"] == 1 and mine["store"]["capacity"] == 128 * MiB
        state = MonitorState()
        state.apply_snapshot(seq, snapshot)
        base = state.finished_total()
        refs = [square.remote(i) for i in range(150)]
        seqs = []
        deadline = time.monotonic() + 30

        def peers_fed() -> bool:  # the watched daemon relays what its peers measure themselves
            return all("cpu" in n for n in state.nodes())

        while time.monotonic() < deadline and not (state.finished_total() >= base + 150 and peers_fed()):
            msg = sub.recv(2)
            assert msg is not None, "the feed went silent: no update and no heartbeat within 2 s"
            if msg[0] == Msg.MONITOR_UPDATE:
                seqs.append(msg[1])
                assert state.apply_update(msg[1], msg[2]) == "applied"
            else:
                assert msg[0] == Msg.MONITOR_HEARTBEAT and msg[1] == state.seq
            if len(seqs) % 4 == 0:
                sub.send(Msg.MONITOR_SUBSCRIBE, None, "mesh", 10.0)  # renewal: no new snapshot
        assert mesh.get(refs, timeout=30) == [i * i for i in range(150)]
        assert seqs and seqs == list(range(seq + 1, seq + 1 + len(seqs))), seqs
        assert state.finished_total() >= base + 150, (base, state.finished_total())
        assert peers_fed(), state.nodes()
        sub.send(Msg.MONITOR_UNSUBSCRIBE)
    finally:
        sub.close()


def test_monitor_client_drops_stale_updates_and_resyncs_after_a_gap(obs3):
    client = connect(obs3["nodes"][0])
    try:
        assert wait_for_snapshot(client, timeout=10)
        seq = client.state.seq
        target = client.target
        fake = ("node/feedbeef00000000", {"node_id": "feedbeef00000000", "state": "alive"})
        assert client.handle(target, (Msg.MONITOR_UPDATE, seq, [fake])) is False  # at the snapshot's seq
        assert client.handle(target, (Msg.MONITOR_UPDATE, seq - 1, [fake])) is False
        assert "node/feedbeef00000000" not in client.state.data and client.state.stale >= 2
        assert client.handle("elsewhere/daemon@tcp://127.0.0.1:9", (Msg.MONITOR_UPDATE, seq + 1, [fake])) is False
        assert "node/feedbeef00000000" not in client.state.data  # not from the daemon we watch
        generation = client.state.generation
        client.handle(target, (Msg.MONITOR_UPDATE, client.state.seq + 5, [fake]))  # a gap
        assert not client.connected  # subscribed again, waiting for a fresh snapshot
        assert wait_for_snapshot(client, timeout=10) and client.state.generation == generation + 1
        assert "node/feedbeef00000000" not in client.state.data
        assert {n["node_id"] for n in client.state.nodes()} == set(obs3["ids"])
    finally:
        client.close()


def test_monitor_heartbeats_when_idle_and_drops_a_subscriber_that_stops_renewing():
    proc, info = start_node(num_cpus=1, object_store_memory=64 * MiB,
                            extra_env={"MESH_MONITOR_SAMPLE_S": "60"})  # nothing changes by itself
    sub = RawSubscriber(info, tcp=False)
    try:
        sub.send(Msg.MONITOR_SUBSCRIBE, 1, "mesh", 1.0)
        msg = sub.recv(10)
        assert msg is not None and msg[0] == Msg.MONITOR_SNAPSHOT
        seq = msg[2]
        assert set(msg[3]) == {f"node/{info['node_id']}", "control"}
        beats = []
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            # Renew well inside the 1 s lease, as a client does (a renewal that
            # arrives after the lease lapsed would start a new feed).
            sub.send(Msg.MONITOR_SUBSCRIBE, None, "mesh", 1.0)
            msg = sub.recv(0.3)
            if msg is not None:
                assert msg[0] == Msg.MONITOR_HEARTBEAT, msg  # a renewal never brings a new snapshot
                assert msg[1] == seq
                beats.append(time.monotonic())
        assert len(beats) >= 3, beats
        # Stop renewing: the subscription expires after its 1 s and the feed stops.
        time.sleep(2.0)
        while sub.recv(0.1) is not None:
            pass
        assert sub.recv(2.0) is None
        # Subscribing again gives a fresh snapshot.
        sub.send(Msg.MONITOR_SUBSCRIBE, 2, "mesh", 1.0)
        msg = sub.recv(5)
        assert msg is not None and msg[0] == Msg.MONITOR_SNAPSHOT and msg[1] == 2 and msg[2] >= seq
        log = open(os.path.join(info["session_dir"], "logs", "daemon.log")).read()
        assert "did not renew; dropped" in log
    finally:
        sub.close()
        stop_node(info)
        proc.wait(10)


# --------------------------------------------------------------------- progress


def test_get_with_progress_returns_the_same_values(obs3, capfd):
    refs = [square.remote(i) for i in range(40)]
    assert mesh.get(refs, progress=True) == [i * i for i in range(40)] == mesh.get(refs)
    assert mesh.get(refs[3], progress=True) == 9
    assert mesh.get(refs + refs[:5], progress=True) == [i * i for i in range(40)] + [i * i for i in range(5)]
    err = capfd.readouterr().err
    assert "40/40" in err and "100%" in err

    @mesh.remote
    def slow():
        time.sleep(1.5)
        return 1

    ref = slow.remote()
    with pytest.raises(exceptions.GetTimeoutError):
        mesh.get([ref], progress=True, timeout=0.3)
    assert mesh.get(ref, progress=True, timeout=30) == 1


# --------------------------------------------------------------------- timeline


def test_timeline_has_one_event_per_task_and_one_lane_per_worker(obs3, tmp_path):
    t0 = time.time()
    results = mesh.get([traced_task.remote(i) for i in range(24)], timeout=60)
    t1 = time.time()
    events = mesh.timeline()
    spans = [e for e in events if e["ph"] == "X" and e["name"] == "traced_task"]
    assert len(spans) == 24
    assert len({e["args"]["task_id"] for e in spans}) == 24
    for e in spans:
        assert set(e) == {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        assert (t0 - 0.5) * 1e6 <= e["ts"] and e["ts"] + e["dur"] <= (t1 + 0.5) * 1e6, (t0, t1, e)
        assert 0.025e6 <= e["dur"] <= 5e6, e
    # One lane per worker (its pid), one process per node.
    assert {e["tid"] for e in spans} == {pid for pid, _ in results}
    node_of_lane = {}
    for e in spans:
        assert node_of_lane.setdefault(e["pid"], e["args"]["node_id"]) == e["args"]["node_id"]
    assert set(node_of_lane.values()) == {node for _, node in results}
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert all(names[pid] == f"node {node}" for pid, node in node_of_lane.items())
    # The command line writes the same trace as a JSON array.
    out = tmp_path / "trace.json"
    r = _cli("timeline", "--output", str(out), "--address", obs3["seed"])
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert isinstance(data, list)
    assert len([e for e in data if e.get("ph") == "X" and e["name"] == "traced_task"]) == 24
    assert "ui.perfetto.dev" in r.stdout


# ----------------------------------------------------------------------- memory


def test_mesh_memory_lists_a_put_object_with_its_owner_and_copies(obs3):
    a, c = obs3["ids"][0], obs3["ids"][2]
    arr = np.arange(2 * MiB // 8, dtype=np.int64)
    ref = mesh.put(arr)
    oid = ref.hex()
    r = _cli("memory", "--json", "--address", obs3["seed"])
    assert r.returncode == 0, r.stderr
    objects = {o["object_id"]: o for o in json.loads(r.stdout)}
    o = objects[ref.hex()]
    assert o["size"] >= 2 * MiB and o["owner"] == context.core.address and o["owner_pid"] == os.getpid()
    assert [(cp["node_id"], cp["primary"]) for cp in o["copies"]] == [(a, True)]
    # Read on node C: a secondary copy appears there.
    assert mesh.get(nbytes.options(scheduling_strategy=_pinned(c)).remote(ref), timeout=60) == 2 * MiB

    def copies():
        records = request(obs3["nodes"][0], Msg.LIST_OBJECTS, "mesh", timeout=10)
        found = {o["object_id"]: o for o in _group_objects(records)}.get(oid)
        return found and sorted((cp["node_id"], cp["primary"]) for cp in found["copies"])

    assert wait_for(lambda: copies() == sorted([(a, True), (c, False)]), timeout=15), copies()
    pretty = _cli("memory", "--address", obs3["seed"])
    assert pretty.returncode == 0 and oid[:16] in pretty.stdout and "objects" in pretty.stdout
    del ref
    assert wait_for(lambda: copies() is None, timeout=15)  # freed everywhere with its last ref


# ------------------------------------------------------------------------- logs


def test_mesh_logs_prints_and_follows_a_nodes_logs(obs3):
    a = obs3["ids"][0]
    marker = f"log-marker-{uuid.uuid4().hex[:8]}"
    mesh.get(shout.options(scheduling_strategy=_pinned(a)).remote(marker), timeout=30)
    r = _cli("logs", a, "-n", "500")
    assert r.returncode == 0, r.stderr
    assert "==> daemon (" in r.stdout and "==> worker " in r.stdout and marker in r.stdout
    missing = _cli("logs", "ffffffffdeadbeef")
    assert missing.returncode == 1
    follower = subprocess.Popen([sys.executable, "-m", "meshcompute.cli", "logs", a[:8], "--follow", "-n", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True).start()
    try:
        # Wait until the follower runs (it prints the last line of a log), then write.
        first = lines.get(timeout=30)
        assert first, first
        time.sleep(0.3)
        marker2 = f"follow-marker-{uuid.uuid4().hex[:8]}"
        mesh.get(shout.options(scheduling_strategy=_pinned(a)).remote(marker2), timeout=30)
        deadline = time.monotonic() + 15
        seen = None
        while time.monotonic() < deadline and seen is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if marker2 in line:
                seen = line
        assert seen is not None and seen.startswith("[worker "), seen
    finally:
        follower.kill()
        follower.wait(10)


# --------------------------------------------------------------- worker output

DRIVER = textwrap.dedent('''
    import sys, time
    import meshcompute as mesh

    mesh.init(address=sys.argv[1], log_to_driver=sys.argv[2] == "1")

    @mesh.remote
    def chatty(i):
        print("hello from task", i)
        print("to stderr", i, file=sys.stderr)
        return i

    @mesh.remote
    def parent():
        return mesh.get(chatty.remote(99))

    @mesh.remote
    class Talker:
        def talk(self):
            print("hello from actor")
            return 1

    assert mesh.get([chatty.remote(i) for i in range(3)]) == [0, 1, 2]
    assert mesh.get(parent.remote()) == 99
    t = Talker.remote()
    assert mesh.get(t.talk.remote()) == 1
    time.sleep(0.5)
    print("driver done")
''')


def test_worker_output_reaches_the_driver_with_a_prefix(obs3, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(script), obs3["seed"], "1"], capture_output=True, text=True,
                       timeout=90, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "driver done"
    prefix = r"\((\w[\w.<>]*) pid=(\d+), node=([0-9a-f]{8})\) "
    for i in range(3):
        assert re.search(rf"^\(chatty pid=\d+, node=[0-9a-f]{{8}}\) hello from task {i}$", r.stderr, re.M), r.stderr
        assert re.search(rf"^\(chatty pid=\d+, node=[0-9a-f]{{8}}\) to stderr {i}$", r.stderr, re.M), r.stderr
    # A nested task's output travels through its owner (a worker) to the driver.
    assert re.search(r"^\(chatty pid=\d+, node=[0-9a-f]{8}\) hello from task 99$", r.stderr, re.M), r.stderr
    assert re.search(r"^\(Talker pid=\d+, node=[0-9a-f]{8}\) hello from actor$", r.stderr, re.M), r.stderr
    nodes = {m.group(3) for m in re.finditer(prefix, r.stderr)}
    assert nodes <= {n[:8] for n in obs3["ids"]}
    quiet = subprocess.run([sys.executable, str(script), obs3["seed"], "0"], capture_output=True, text=True,
                           timeout=90, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "hello from" not in quiet.stderr and "to stderr" not in quiet.stderr


def test_mesh_top_once_prints_one_screen_of_the_mesh(obs3):
    r = _cli("top", "--once", "--address", obs3["seed"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines), r.stdout
    assert f"watching {obs3['ids'][0][:8]}" in lines[0]
    for node in obs3["ids"]:
        assert re.search(rf"^{node[:8]}\*?\s+(alive|suspect)\s", r.stdout, re.M), r.stdout
    assert "tasks/s" in lines[-2] and "quit" in lines[-1]
    wide = _cli("top", "--once", "--address", obs3["seed"], "--width", "140", "--height", "12")
    assert wide.returncode == 0 and "ADDRESS" in wide.stdout and "WORKERS" in wide.stdout
    assert len(wide.stdout.rstrip("\n").split("\n")) == 12
