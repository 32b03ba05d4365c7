"""`mesh start --block`, as a container runs it: SIGTERM makes the node leave and the command
exit 0; a SIGKILLed command takes its node (daemon, zygote, workers) with it; a node that dies
by itself makes the command exit non-zero; `--logs` prints the node's log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from meshcompute.host.launcher import local_nodes
from meshcompute.host.sessions import clean_stale_sessions

from .conftest import pid_alive, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, MESH_NUM_CPUS="1", MESH_OBJECT_STORE_MEMORY=str(64 << 20), COLUMNS="200")
for _name in ("MESH_TOKEN", "MESH_ADDRESS", "MESH_HOST", "MESH_PORT", "MESH_METRICS_PORT"):
    ENV.pop(_name, None)


def _session_pids(session_dir: str) -> set[int]:
    """Every process of a node: the daemon (its command line names the session) and its zygote
    and workers (children of the daemon and of the zygote)."""
    out = subprocess.run(["pgrep", "-f", "--", f"--session {session_dir}"], capture_output=True, text=True)
    pids = {int(p) for p in out.stdout.split()}
    for _ in range(2):
        for pid in list(pids):
            kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
            pids |= {int(p) for p in kids.stdout.split()}
    return pids


@pytest.fixture
def blocking(tmp_path):
    """`mesh start --block --logs --port 0` in the background; yields (process, node info, stdout path)."""
    assert not local_nodes(), "a standing node of another test is still up"
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "meshcompute.cli", "start", "--block", "--logs",
                                 "--port", "0"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    try:
        nodes = wait_for(local_nodes, timeout=30)
        assert nodes, out_path.read_text()
        assert wait_for(lambda: _session_pids(nodes[0]["session_dir"]) - {nodes[0]["pid"]}, timeout=10)
        yield proc, nodes[0], out_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for info in local_nodes():
            os.kill(int(info["pid"]), signal.SIGKILL)
            wait_for(lambda info=info: not pid_alive(int(info["pid"])), timeout=5)
        clean_stale_sessions()  # what a SIGKILLed node left


@pytest.mark.timeout(60)
def test_sigterm_makes_the_node_leave_and_the_command_exit_0(blocking):
    proc, info, out_path = blocking
    assert wait_for(lambda: "[daemon]" in out_path.read_text(), timeout=10), out_path.read_text()
    pids = _session_pids(info["session_dir"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, out_path.read_text()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    assert not os.path.exists(info["session_dir"])  # the daemon cleaned up after itself


@pytest.mark.timeout(60)
def test_a_sigkilled_command_takes_its_node_with_it(blocking):
    proc, info, _ = blocking
    # The daemon forks its zygote first and the zygote its first worker after: wait for all three.
    def whole_node() -> set[int] | None:
        found = _session_pids(info["session_dir"])
        return found if len(found) >= 3 else None

    pids = wait_for(whole_node, timeout=20)
    assert pids and int(info["pid"]) in pids, _session_pids(info["session_dir"])  # daemon, zygote, a worker
    proc.kill()
    proc.wait(10)
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10), [p for p in pids if pid_alive(p)]
    # It went the graceful way (parent-death signal: SIGTERM): its session dir and arena are gone.
    assert wait_for(lambda: not os.path.exists(info["session_dir"]), timeout=5)
    assert not os.path.exists(info["store_path"])


@pytest.mark.timeout(60)
def test_a_node_that_dies_by_itself_makes_the_command_fail(blocking):
    proc, info, out_path = blocking
    os.kill(int(info["pid"]), signal.SIGKILL)
    assert proc.wait(15) == 1
    assert "The node stopped by itself" in out_path.read_text()
    assert not any(pid_alive(p) for p in _session_pids(info["session_dir"]))


def _mesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=ENV, timeout=60)


@pytest.mark.timeout(90)
def test_status_check_is_a_probe_of_this_machines_node(blocking):
    proc, info, _ = blocking
    ok = _mesh("status", "--local", "--check")
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    assert _mesh("status", "--check", "--alive").returncode == 0
    local = _mesh("status", "--local", "--json")
    assert local.returncode == 0, local.stderr
    view = json.loads(local.stdout)
    assert [n["node_id"] for n in view["nodes"]] == [info["node_id"]] and view["leader"] == info["node_id"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    gone = _mesh("status", "--local", "--check")
    assert gone.returncode == 1 and "no meshcompute node runs on this machine" in gone.stdout


def test_a_node_not_yet_taken_in_is_alive_but_not_ready(monkeypatch):
    from meshcompute.host import launcher

    monkeypatch.setattr(launcher, "query", lambda info, what, timeout: {"node_id": "n1", "control": {"role": "joining"}})
    assert "has not taken it in yet" in launcher.node_problem({"node_id": "n1"})
    assert launcher.node_problem({"node_id": "n1"}, member=False) is None
    def control(**ctl):
        monkeypatch.setattr(launcher, "query", lambda info, what, timeout: {"node_id": "n1", "control": ctl})

    control(role="learner", voters=["a", "b", "c"], learners=["n1"], target_voters=3)
    assert launcher.node_problem({"node_id": "n1"}) is None
    # A voter left and its replacement is not promoted yet: nobody is ready until it is.
    control(role="follower", voters=["a", "b"], learners=["n1"], target_voters=3)
    assert "2 of its 3 voters" in launcher.node_problem({"node_id": "n1"})
    assert launcher.node_problem({"node_id": "n1"}, member=False) is None
    control(role="leader", voters=["a", "n1"], learners=[], target_voters=3)  # two nodes: two voters
    assert launcher.node_problem({"node_id": "n1"}) is None
