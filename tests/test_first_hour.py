"""The first hour with meshcompute, on real processes: what a newcomer runs and sees.

`mesh join` fails fast, saying why, and leaves nothing behind; `mesh start` prints
a join line that works; a taken port is named with its holder; a second mesh on one
machine is asked for, and commands then say which mesh they talk to; options take
their defaults from MESH_* variables; processes say their role in `ps`; a failing
task's printed lines reach the driver before its error.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from meshcompute.host.launcher import all_sessions, local_nodes, stop_node

from .conftest import SESSIONS_ROOT, pid_alive, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small nodes: the defaults come from the environment, as a user's profile would set them.
ENV = dict(os.environ, MESH_NUM_CPUS="1", MESH_OBJECT_STORE_MEMORY=str(64 << 20), COLUMNS="200")
for _name in ("MESH_TOKEN", "MESH_ADDRESS", "MESH_HOST", "MESH_PORT"):
    ENV.pop(_name, None)


def mesh(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env or ENV)


def _sessions() -> set[str]:
    return set(os.listdir(SESSIONS_ROOT)) if os.path.isdir(SESSIONS_ROOT) else set()


def _stop_all_standing() -> None:
    for info in local_nodes():
        stop_node(info)


@pytest.fixture
def started():
    """`mesh start --port 0`, stopped afterwards; yields (host:port, token, output)."""
    assert not local_nodes(), "a standing node of another test is still up"
    try:
        r = mesh("start", "--port", "0")
        assert r.returncode == 0, r.stdout + r.stderr
        line = re.search(r"MESH_TOKEN=(\S+) mesh join (\S+)", r.stdout)
        assert line, r.stdout
        yield line.group(2), line.group(1), r.stdout
    finally:
        _stop_all_standing()


# ------------------------------------------------------------------ mesh join


@pytest.mark.timeout(60)
def test_join_with_a_bad_address_a_wrong_token_or_nobody_there_fails_fast_and_leaves_nothing(started):
    hostport, token, _ = started
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    nobody = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()  # nothing listens there now
    before = _sessions()
    cases = [
        (["nonsense", "--token", token], 2, "is not HOST:PORT"),
        (["nosuchhost.invalid:7777", "--token", token], 2, "does not resolve"),
        ([hostport, "--token", "a-wrong-token-of-the-right-length"], 1, "the token is not that mesh's"),
        ([nobody, "--token", token], 1, "nothing listens at"),
    ]
    for args, code, says in cases:
        start = time.monotonic()
        r = mesh("join", *args)
        took = time.monotonic() - start
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert says in " ".join(r.stdout.split()), (args, r.stdout)
        assert took < 10, (args, took)
        assert _sessions() == before, f"{args} left {_sessions() - before}"
        assert len(local_nodes()) == 1, f"{args} left a node running"


@pytest.mark.timeout(60)
def test_a_join_the_mesh_does_not_answer_stops_its_node(tmp_path):
    """A member that completes the handshake but never takes the node in (here: a stand-in
    holding the mesh's key that reads nothing): the node that was started is stopped and
    its session dir removed, and the command fails within ~10 s."""
    import zmq

    from meshcompute.wire.auth import MeshAuthenticator, MeshKeys, generate_token, secure_server

    token = generate_token()
    keys = MeshKeys.from_token(token)
    ctx = zmq.Context()
    auth = MeshAuthenticator(ctx, keys).start()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_server(sock, keys)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    before = _sessions()
    try:
        start = time.monotonic()
        r = mesh("join", f"127.0.0.1:{port}", "--token", token)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "did not take the node in" in r.stdout and "The node was stopped" in r.stdout, r.stdout
        assert time.monotonic() - start < 12
        assert _sessions() == before
        assert not local_nodes()
    finally:
        _stop_all_standing()
        sock.close(0)
        auth.stop()
        ctx.term()


@pytest.mark.timeout(90)
def test_the_printed_join_line_works_and_the_token_can_come_from_the_environment(started):
    hostport, token, out = started
    text = " ".join(out.split())
    # On loopback it says that other machines cannot reach it, and how to change that.
    assert "only this machine can reach it" in text and "mesh start --host" in text
    r = mesh("join", hostport, env=dict(ENV, MESH_TOKEN=token))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"joined the mesh through {hostport}" in r.stdout
    view = json.loads(mesh("status", "--json").stdout)
    assert len([n for n in view["nodes"] if n["state"] == "alive"]) == 2
    assert all(n["resources_total"]["CPU"] == 1 for n in view["nodes"])  # MESH_NUM_CPUS


@pytest.mark.timeout(30)
def test_join_refuses_to_serve_on_loopback_toward_another_machine():
    r = mesh("join", "192.0.2.1:7777", "--host", "127.0.0.1", "--token", "x" * 43)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "could not reach this node there" in " ".join(r.stdout.split())


# ---------------------------------------------------------- ports and meshes


@pytest.mark.timeout(60)
def test_a_port_in_use_is_named_with_what_holds_it(started):
    hostport, _, _ = started
    port = hostport.rpartition(":")[2]
    node = local_nodes()[0]
    r = mesh("start", "--allow-second-mesh", "--port", port)
    text = " ".join(r.stdout.split())
    assert r.returncode == 1 and f"port {port} on 127.0.0.1 is in use by meshcompute node {node['node_id']}" in text, text
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        other = holder.getsockname()[1]
        r = mesh("start", "--allow-second-mesh", "--port", str(other))
        text = " ".join(r.stdout.split())
        assert r.returncode == 1 and f"port {other} on 127.0.0.1 is in use by pid {os.getpid()}" in text, text
    finally:
        holder.close()
    assert len(local_nodes()) == 1


@pytest.mark.timeout(90)
def test_a_second_mesh_is_refused_unless_asked_and_commands_say_which_mesh(started):
    r = mesh("start", "--port", "0")
    assert r.returncode == 1 and "--allow-second-mesh" in r.stdout, r.stdout
    assert len(local_nodes()) == 1
    r = mesh("start", "--allow-second-mesh", "--port", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    newest = local_nodes()[0]
    status = mesh("status", "--json")
    assert json.loads(status.stdout)["self"] == newest["node_id"]  # stdout stays JSON
    assert "this machine runs 2 meshes" in status.stderr and newest["node_id"][:8] in status.stderr
    stop = mesh("stop")
    assert stop.stdout.count(" of mesh ") == 2, stop.stdout


# ------------------------------------------------------------- the CLI itself


@pytest.mark.timeout(60)
def test_help_shows_environment_variables_and_completion_is_available():
    for cmd, names in {"start": ("MESH_HOST", "MESH_PORT", "MESH_NUM_CPUS", "MESH_TOKEN", "MESH_SPILL_DIR"),
                       "join": ("MESH_TOKEN", "MESH_NUM_CPUS", "MESH_OBJECT_STORE_MEMORY"),
                       "status": ("MESH_ADDRESS",), "top": ("MESH_ADDRESS", "MESH_TOKEN")}.items():
        out = mesh(cmd, "--help").stdout
        for name in names:
            assert f"env var: {name}" in out, (cmd, name)
    assert "--install-completion" in mesh("--help").stdout
    # What a shell's completion asks, through the protocol the installed script uses
    # (--show-completion would guess the shell from the parent processes).
    r = mesh(env=dict(ENV, _MESH_COMPLETE="complete_bash", COMP_WORDS="mesh sta", COMP_CWORD="1"))
    assert r.returncode == 0 and r.stdout.split() == ["start", "status"], r.stdout + r.stderr


# ---------------------------------------------------------- processes, output

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import meshcompute as mesh

    mesh.init(num_cpus=1, object_store_memory=64 << 20)

    @mesh.remote
    class Counter:
        def pid(self):
            return os.getpid()

    @mesh.remote
    def fails(i):
        print(f"printed before error {i}")
        raise ValueError(f"boom {i}")

    def title(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\\0", b" ").decode().strip()
            with open(f"/proc/{pid}/comm") as f:
                return cmd, f.read().strip()
        except FileNotFoundError:  # a spare worker the node let go meanwhile: look again
            return "", ""

    if sys.argv[1] == "titles":
        import psutil
        counter = Counter.remote()  # held: an actor whose last handle is gone stops
        actor = mesh.get(counter.pid.remote())
        daemon = [p for p in psutil.Process().children() if "meshcompute.node.daemon" in " ".join(p.cmdline())][0]
        zygote = daemon.children()[0]
        # A worker forked a moment ago names itself once it runs: give each the time to.
        for _ in range(100):
            workers = [w.pid for w in zygote.children() if w.pid != actor]
            seen = {"daemon": title(daemon.pid), "zygote": title(zygote.pid),
                    "worker": title(workers[0]), "actor": title(actor)}
            if all(seen[r][1].startswith("mesh-") for r in seen):
                break
            time.sleep(0.1)
        print(json.dumps(seen), flush=True)
    else:
        for i in range(20):
            try:
                mesh.get(fails.remote(i))
            except ValueError:
                print(f"caught {i}", file=sys.stderr, flush=True)
        mesh.get(fails.remote("last"))  # uncaught: the driver exits on it
""")


def _driver(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, mode], capture_output=True, text=True, timeout=90,
                          cwd=REPO, env=ENV)


@pytest.mark.timeout(120)
def test_processes_are_named_by_role():
    r = _driver("titles")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout.splitlines()[-1])
    for role in ("daemon", "zygote", "worker"):
        cmd, comm = t[role]
        assert comm == f"mesh-{role}" and cmd.startswith(f"mesh-{role} "), t[role]
        # The original command line stays, for whoever finds a node's processes by it.
        assert "meshcompute.node.daemon --session " in cmd, t[role]
    assert t["actor"][1] == "mesh-actor" and t["actor"][0].startswith("mesh-actor Counter "), t["actor"]


@pytest.mark.timeout(120)
def test_a_failing_tasks_output_reaches_the_driver_before_its_error():
    r = _driver("output")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()

    def where(text: str) -> int:
        found = [n for n, line in enumerate(lines) if line.endswith(text)]
        assert found, f"{text!r} never reached the driver:\n{r.stderr}"
        return found[0]

    for i in range(20):
        assert where(f"printed before error {i}") < where(f"caught {i}"), r.stderr
    assert where("printed before error last") < where("ValueError: boom last"), r.stderr


@pytest.fixture(autouse=True)
def _nothing_left():
    before = {int(i["pid"]) for i in all_sessions()}
    yield
    left = [i for i in all_sessions() if int(i["pid"]) not in before]
    for info in left:
        stop_node(info)
    assert wait_for(lambda: not any(pid_alive(int(i["pid"])) for i in left), timeout=10)
    assert not left, f"left running: {[i['node_id'] for i in left]}"


# ------------------------------------------------------------------- the demo


@pytest.mark.timeout(120)
def test_the_demo_shows_the_cli_an_error_with_its_traceback_and_what_next():
    import glob

    import psutil

    def demo_pids() -> set[int]:
        out = set()
        for p in psutil.process_iter(["cmdline"]):
            if any("mesh-demo-" in part for part in p.info["cmdline"] or ()):
                out.add(p.pid)
        return out

    pattern = os.path.join(tempfile.gettempdir(), "mesh-demo-*")
    before, dirs = demo_pids(), set(glob.glob(pattern))
    start = time.monotonic()
    # One stream, unbuffered: the order of what the driver and its tasks print is part of the test.
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "demo.py")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=100, cwd=REPO,
                       env=dict(ENV, PYTHONUNBUFFERED="1"))
    out = r.stdout
    assert r.returncode == 0, out
    assert time.monotonic() - start < 60
    for shown in ("$ mesh start", "$ mesh status", "$ mesh memory", "$ mesh stop", "What to try next"):
        assert shown in out, shown
    # The remote traceback starts at the user's code, after what the task printed.
    assert out.index("parsing 'forty-two'") < out.index("Traceback (most recent call last)")
    trace = out[out.index("Traceback (most recent call last)"):out.index("$ mesh status")]
    assert 'in parse_age\n    return int(text)' in trace and "ValueError: invalid literal" in trace
    assert "executor.py" not in trace, trace
    assert wait_for(lambda: not (demo_pids() - before), timeout=10), demo_pids() - before
    assert set(glob.glob(pattern)) == dirs
