"""The container image, checked without a Docker daemon: the Dockerfile has the pieces a
production image needs (read the way hadolint would), and its command -- `mesh-node` --
run here as the container would run it, starts, joins and leaves on SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from meshcompute.host import container
from meshcompute.host.launcher import all_sessions

from .conftest import pid_alive, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continued lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def test_the_image_is_multi_stage_slim_python_311(dockerfile):
    froms = [args for word, args in dockerfile if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms), froms
    assert re.fullmatch(r"python:3\.11-slim AS build", froms[0], re.I)
    final = dockerfile[max(i for i, (w, _) in enumerate(dockerfile) if w == "FROM"):]
    # The run stage takes only the built wheels from the build stage, and installs from them alone.
    assert ("COPY", "--from=build /wheels /wheels") in final
    pip = [a for w, a in final if w == "RUN" and "pip install" in a]
    assert pip and all("--no-cache-dir" in a and "--no-index" in a for a in pip)


def test_the_image_runs_as_a_user_with_tini_as_pid_1_and_mesh_node_as_its_command(dockerfile):
    words = [w for w, _ in dockerfile]
    last_from = max(i for i, w in enumerate(words) if w == "FROM")
    users = [a for i, (w, a) in enumerate(dockerfile) if w == "USER" and i > last_from]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    entry = json.loads(dict(dockerfile)["ENTRYPOINT"])  # exec form (hadolint DL3025)
    assert entry[0] == "tini" and entry[-1] == "--"
    assert json.loads(dict(dockerfile)["CMD"]) == ["mesh-node"]
    health = dict(dockerfile)["HEALTHCHECK"]
    assert "CMD" in health and '"mesh", "status", "--local", "--check"' in health
    assert "7777" in dict(dockerfile)["EXPOSE"]


def test_hadolint_rules_that_apply(dockerfile):
    for word, args in dockerfile:
        if word == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "-y" in args  # DL3015, DL3014
            assert "rm -rf /var/lib/apt/lists/*" in args  # DL3009
            assert "apt-get update" in args  # DL3009: update and install in one layer
        if word == "RUN" and "pip " in args:
            assert "--no-cache-dir" in args  # DL3042
        if word == "WORKDIR":
            assert args.startswith("/")  # DL3000
        assert word != "ADD" and word != "MAINTAINER"  # DL3020, DL4000
        if word == "RUN":
            assert not re.search(r"\bsudo\b|\bcd\b", args)  # DL3004, DL3003
    assert sum(w == "CMD" for w, _ in dockerfile) == 1 and sum(w == "ENTRYPOINT" for w, _ in dockerfile) == 1


def test_the_command_exists_and_the_build_context_has_what_the_image_copies():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project runs on 3.10)
    assert re.search(r'^mesh-node = "meshcompute\.host\.container:main"$', pyproject, re.M)
    assert callable(container.main)
    assert re.search(r'^    "prometheus_client>=', pyproject, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*"):][:4] == ["*", "!pyproject.toml", "!README.md", "!meshcompute/"]


def test_docker_build_when_a_daemon_is_there():
    if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
        pytest.skip("no Docker daemon here: the Dockerfile is checked statically above")
    r = subprocess.run(["docker", "build", "-q", "-t", "meshcompute:test", str(ROOT)], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]


# ---------------------------------------------------------------- mesh-node's choice


def test_mesh_node_starts_a_mesh_joins_one_or_waits():
    said = []
    t = [0.0]

    def clock():
        return t[0]

    def sleep(s):
        t[0] += s

    assert container.plan({}, "any", lambda: None, clock, sleep, said.append) == ["start", "--block", "--logs"]
    env = {"MESH_JOIN": "mesh.svc:7777", "MESH_FOUNDER": "mesh-0", "MESH_FOUNDER_WAIT_S": "5"}
    # The founder starts a mesh when nobody answered for MESH_FOUNDER_WAIT_S...
    assert container.plan(env, "mesh-0", lambda: None, clock, sleep, said.append)[0] == "start"
    assert t[0] >= 5 and "starting a new mesh" in said[-1]
    # ... but joins a member that answers (a founder restarted while the mesh lives).
    assert container.plan(env, "mesh-0", lambda: ("10.0.0.7", 7777), clock, sleep, said.append) == [
        "join", "10.0.0.7:7777", "--block", "--logs"]
    # Any other node waits as long as it takes.
    answers = iter([None] * 30 + [("10.0.0.8", 7777)])
    t[0] = 0.0
    assert container.plan(env, "mesh-3", lambda: next(answers), clock, sleep, said.append)[1] == "10.0.0.8:7777"
    assert t[0] == 30


def test_candidates_resolve_names_to_every_address_and_leave_this_machine_out():
    assert container.candidates("127.0.0.1:7777, localhost:7777,127.0.0.2:7000", own=set()) == [
        ("127.0.0.1", 7777), ("127.0.0.2", 7000)]
    assert container.candidates("127.0.0.1:7777", own={"127.0.0.1"}) == []
    assert container.candidates("no-such-name.invalid:7777", own=set()) == []
    with pytest.raises(ValueError):
        container.candidates("nohostport", own=set())
    assert container.answering([("a", 1), ("b", 2)], "t", lambda h, p, tok: None if h == "b" else "no") == ("b", 2)


# ------------------------------------------- the image's command, run as the container runs it


def _node_env(tmp: pathlib.Path, **extra) -> dict:
    """A container's environment: its own sessions root (its own filesystem), small figures."""
    root = tmp / "sessions"
    root.mkdir(mode=0o700, parents=True)
    env = dict(os.environ, MESH_SESSIONS_ROOT=str(root), MESH_NUM_CPUS="1", MESH_OBJECT_STORE_MEMORY=str(64 << 20),
               MESH_HOST="127.0.0.1", MESH_PORT="0", COLUMNS="200")
    env.update(extra)
    for name in ("MESH_ADDRESS", "MESH_JOIN", "MESH_FOUNDER", "MESH_METRICS_PORT"):
        if name not in extra:
            env.pop(name, None)
    return env


def _spawn(env: dict, out: pathlib.Path) -> subprocess.Popen:
    with open(out, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "meshcompute.host.container"], env=env, stdout=f,
                                stderr=subprocess.STDOUT)


def _sessions(env: dict) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", "import json; from meshcompute.host.launcher import local_nodes; "
                          "print(json.dumps(local_nodes()))"], capture_output=True, text=True, env=env, timeout=30)
    return json.loads(out.stdout or "[]")


@pytest.fixture
def short_tmp():
    """A short directory (a session's socket paths must fit in 107 characters), removed afterwards."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="mop-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(120)
def test_mesh_node_starts_then_another_joins_and_sigterm_makes_each_leave(short_tmp):
    tmp_path = short_tmp
    from meshcompute.wire.auth import generate_token

    token = generate_token()
    procs = []
    try:
        env1 = _node_env(tmp_path / "a", MESH_TOKEN=token)
        p1 = _spawn(env1, tmp_path / "a.out")
        procs.append(p1)
        first = wait_for(lambda: _sessions(env1), timeout=30)
        assert first, (tmp_path / "a.out").read_text()
        assert int(first[0]["pid"]) != p1.pid and pid_alive(p1.pid)  # p1 became `mesh start --block`
        seed = first[0]["tcp"].replace("tcp://", "")
        env2 = _node_env(tmp_path / "b", MESH_TOKEN=token, MESH_JOIN=f"{seed}", MESH_FOUNDER="nobody")
        p2 = _spawn(env2, tmp_path / "b.out")
        procs.append(p2)
        assert wait_for(lambda: "joined the mesh through" in (tmp_path / "b.out").read_text(), timeout=40), \
            (tmp_path / "b.out").read_text()
        # Ready once the learner it joined as is promoted (a mesh of two: two voters).
        assert wait_for(lambda: subprocess.run([sys.executable, "-m", "meshcompute.cli", "status", "--local",
                                                "--check"], env=env2, capture_output=True, timeout=30).returncode == 0,
                        timeout=20, interval=0.5)
        for p, env in ((p2, env2), (p1, env1)):
            pids = [int(n["pid"]) for n in _sessions(env)]
            p.send_signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert wait_for(lambda pids=pids: not any(pid_alive(x) for x in pids), timeout=10)
            assert not os.listdir(env["MESH_SESSIONS_ROOT"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for env in [e for e in (locals().get("env1"), locals().get("env2")) if e]:
            for info in _sessions(env):
                os.kill(int(info["pid"]), signal.SIGKILL)
        assert not [s for s in all_sessions() if s.get("standalone")]


def test_mesh_node_refuses_a_malformed_join_list(tmp_path):
    env = _node_env(tmp_path, MESH_JOIN="not-an-address")
    r = subprocess.run([sys.executable, "-m", "meshcompute.host.container"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "MESH_JOIN" in r.stderr, shlex.join([r.stdout, r.stderr])


DRIVER = """
import meshcompute as mesh
mesh.init()
@mesh.remote
def square(x):
    return (x * x, mesh.get_runtime_context().get_node_id())
out = mesh.get([square.remote(i) for i in range(50)])
assert [v for v, _ in out] == [i * i for i in range(50)]
here = mesh.get_runtime_context().get_node_id()
print("ran on", sorted({n for _, n in out}), "driver node", here, "elsewhere", here not in {n for _, n in out})
raise SystemExit(3)
"""


@pytest.mark.timeout(120)
def test_mesh_node_runs_a_driver_on_a_node_of_no_cpu_and_leaves_with_its_exit_status(short_tmp):
    from meshcompute.wire.auth import generate_token

    token = generate_token()
    env1 = _node_env(short_tmp / "a", MESH_TOKEN=token)
    p1 = _spawn(env1, short_tmp / "a.out")
    try:
        first = wait_for(lambda: _sessions(env1), timeout=30)
        assert first, (short_tmp / "a.out").read_text()
        env2 = _node_env(short_tmp / "job", MESH_TOKEN=token, MESH_JOIN=first[0]["tcp"].replace("tcp://", ""),
                         MESH_NUM_CPUS="0")
        job = subprocess.run([sys.executable, "-m", "meshcompute.host.container", "--", sys.executable, "-c",
                              DRIVER], env=env2, capture_output=True, text=True, timeout=90)
        assert job.returncode == 3, job.stdout + job.stderr
        assert "elsewhere True" in job.stdout and first[0]["node_id"] in job.stdout, job.stdout
        assert not os.listdir(env2["MESH_SESSIONS_ROOT"])  # the driver's node left
        p1.send_signal(signal.SIGTERM)
        assert p1.wait(20) == 0
    finally:
        if p1.poll() is None:
            p1.kill()
            p1.wait(10)
        for env in (env1, locals().get("env2")):
            for info in _sessions(env) if env else []:
                os.kill(int(info["pid"]), signal.SIGKILL)


def test_mesh_node_refuses_the_examples_placeholder_token(tmp_path):
    env = _node_env(tmp_path, MESH_TOKEN="REPLACE-ME-with-a-random-secret-of-32-characters-or-more")
    r = subprocess.run([sys.executable, "-m", "meshcompute.host.container"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "placeholder" in r.stderr
