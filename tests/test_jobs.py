"""Submitted jobs and drivers from machines that run no node, on real daemons.

A mesh of two nodes (A votes alone in the control store, B joins it); "another
machine" is a process with a sessions directory of its own and the mesh's token,
which reaches the nodes over TCP only.  Jobs: a job that prints and returns
(its statuses counted, its output followed), a failed job's exit code, a stopped
job's processes gone, listing and logs from the other node and from the other
machine, a working_dir shipped and imported, a node killed under its job.
Drivers: ``init("HOST:PORT")`` from the other machine joins with a node of its
own that leaves with it; a missing or wrong token and a dead address say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from meshcompute.gcs.state import GcsState
from meshcompute.host.launcher import find_node, local_nodes, query, stop_node
from meshcompute.job_submission import JobStatus, JobSubmissionClient

from .conftest import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, MESH_NUM_CPUS="1", MESH_OBJECT_STORE_MEMORY=str(64 << 20), COLUMNS="200",
           PYTHONPATH=REPO)
for _name in ("MESH_TOKEN", "MESH_ADDRESS", "MESH_HOST", "MESH_PORT"):
    ENV.pop(_name, None)


def mesh(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcompute.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env or ENV)


@pytest.fixture(scope="module")
def two_nodes():
    """Nodes A (1 CPU, the only voter) and B (no CPU): yields (A's host:port, B's, token)."""
    assert not local_nodes(), "a standing node of another test is still up"
    try:
        r = mesh("start", "--port", "0", "--voters", "1")
        assert r.returncode == 0, r.stdout + r.stderr
        token, a = re.search(r"MESH_TOKEN=(\S+) mesh join (\S+)", r.stdout).groups()
        r = mesh("join", a, env=dict(ENV, MESH_TOKEN=token, MESH_NUM_CPUS="0"))
        assert r.returncode == 0, r.stdout + r.stderr
        b = next(i["tcp"][6:] for i in local_nodes() if i["tcp"][6:] != a)
        yield a, b, token
    finally:
        for info in local_nodes():
            stop_node(info)


@pytest.fixture
def elsewhere(two_nodes):
    """The environment of a process on "another machine": its own sessions dir, the token."""
    root = tempfile.mkdtemp(prefix="mop-")
    os.chmod(root, 0o700)
    yield dict(ENV, MESH_SESSIONS_ROOT=root, MESH_TOKEN=two_nodes[2])
    left = os.listdir(root)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"the other machine kept {left}"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# --------------------------------------------------------------- the record


def test_the_control_store_records_a_submission_once_and_a_final_status_stays():
    s = GcsState()
    assert s.apply(1, None, ("node_add", "n1", {}))
    status, rec = s.apply(2, None, ("sub_add", "j1", {"entrypoint": "true", "node_id": "n1"}))
    assert (status, rec["status"], rec["statuses"]) == ("ok", "PENDING", ["PENDING"])
    assert s.apply(3, None, ("sub_add", "j1", {"entrypoint": "other"}))[0] == "exists"
    assert s.apply(4, None, ("sub_update", "j1", {"status": "RUNNING"}))
    assert s.apply(5, None, ("sub_delete", "j1")) is False  # running: not deleted
    assert s.apply(6, None, ("node_dead", "n1"))
    rec = s.read(("sub", "j1"))
    assert rec["status"] == "FAILED" and "n1" in rec["message"] and "died" in rec["message"]
    assert s.apply(7, None, ("sub_update", "j1", {"status": "SUCCEEDED"})) is False  # too late
    assert GcsState.restore(s.snapshot()).read(("subs",)) == [rec]
    assert s.apply(8, None, ("sub_delete", "j1")) and s.read(("subs",)) == []


# --------------------------------------------------------------------- jobs


@pytest.mark.timeout(90)
def test_a_job_from_another_machine_prints_and_returns_and_any_node_knows_it(two_nodes, elsewhere):
    a, b, _ = two_nodes
    code = "import time; print('hello from the job', flush=True); time.sleep(1); print('bye')"
    r = mesh("job", "submit", "--address", a, "--submission-id", "hello-1", "--metadata-json", '{"team": "x"}',
             "--", sys.executable, "-c", code, env=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["hello from the job", "bye"]  # followed until it ended
    assert "succeeded" in r.stderr
    with JobSubmissionClient(b) as other_node:  # the node it did not run on
        info = other_node.get_job_info("hello-1")
        assert info.statuses == ["PENDING", "RUNNING", "SUCCEEDED"]
        assert (info.status, info.driver_exit_code, info.metadata) == (JobStatus.SUCCEEDED, 0, {"team": "x"})
        assert info.start_time <= info.end_time
        assert other_node.get_job_logs("hello-1") == "hello from the job\nbye\n"  # relayed from A
        assert "hello-1" in [j.submission_id for j in other_node.list_jobs()]
    r = mesh("job", "list", "--address", b, env=elsewhere)
    assert r.returncode == 0 and "hello-1" in r.stdout and "SUCCEEDED" in r.stdout, r.stdout + r.stderr
    r = mesh("job", "logs", "hello-1", "--address", b, env=elsewhere)
    assert r.stdout == "hello from the job\nbye\n", r.stdout + r.stderr
    # An id is the mesh's: submitted again, through the other node, it is refused.
    r = mesh("job", "submit", "--address", b, "--submission-id", "hello-1", "--", "true", env=elsewhere)
    assert r.returncode == 1 and "exists already" in r.stdout, r.stdout + r.stderr


@pytest.mark.timeout(60)
def test_a_failed_job_says_its_exit_code_and_the_end_of_its_output(two_nodes):
    r = mesh("job", "submit", "--address", two_nodes[0], "--submission-id", "fails-1", "--",
             "echo about to fail >&2; exit 7")
    assert r.returncode == 1, r.stdout + r.stderr
    with JobSubmissionClient(two_nodes[0]) as client:
        info = client.get_job_info("fails-1")
    assert info.statuses == ["PENDING", "RUNNING", "FAILED"]
    assert info.driver_exit_code == 7
    assert "exited with code 7" in info.message and "about to fail" in info.message
    r = mesh("job", "logs", "fails-1", "--follow", "--address", two_nodes[1])  # ended: prints it all, returns
    assert (r.returncode, r.stdout) == (0, "about to fail\n"), r.stdout + r.stderr


@pytest.mark.timeout(60)
def test_stopping_a_job_ends_every_process_it_started(two_nodes):
    with JobSubmissionClient(two_nodes[0]) as client:
        sid = client.submit_job(entrypoint="sleep 300 & python -c \"import os, time; "
                                           "print(os.getpgid(0), flush=True); time.sleep(300)\"")
        assert wait_for(lambda: client.get_job_logs(sid).strip(), timeout=20)
        pgid = int(client.get_job_logs(sid).split()[0])
        assert not _group_gone(pgid) and client.get_job_status(sid) == JobStatus.RUNNING
        r = mesh("job", "stop", sid, "--address", two_nodes[1])  # through the other node
        assert r.returncode == 0 and "STOPPED" in r.stdout, r.stdout + r.stderr
        assert wait_for(lambda: _group_gone(pgid), timeout=10)  # the background sleep too
        info = client.get_job_info(sid)
        assert info.statuses == ["PENDING", "RUNNING", "STOPPED"]
        assert client.stop_job(sid) is False  # it had ended
        assert client.delete_job(sid) and sid not in [j.submission_id for j in client.list_jobs()]


@pytest.mark.timeout(90)
def test_a_job_runs_in_its_shipped_working_dir_and_its_tasks_import_from_it_and_its_py_modules(two_nodes, elsewhere):
    wd, mods = tempfile.mkdtemp(prefix="mop-wd-"), tempfile.mkdtemp(prefix="mop-mods-")
    try:
        with open(os.path.join(wd, "shapes.py"), "w") as f:
            f.write("def area(w, h):\n    return w * h\n")
        units = os.path.join(mods, "units")
        os.makedirs(units)
        with open(os.path.join(units, "__init__.py"), "w") as f:
            f.write("CM = 'cm2'\n")
        with open(os.path.join(wd, "main.py"), "w") as f:
            f.write(textwrap.dedent("""
                import os
                import meshcompute as mesh
                import shapes

                mesh.init()

                @mesh.remote
                def area(w, h):
                    import shapes, units
                    return f"{shapes.area(w, h)}{units.CM}"

                print("areas", mesh.get([area.remote(i, 2) for i in range(3)]), shapes.area(3, 3))
                print("env", os.environ["GREETING"], os.path.exists("main.py"))
                print("job", mesh.get_runtime_context().get_job_id())
            """))
        env = json.dumps({"env_vars": {"GREETING": "hi"}, "py_modules": [units]})
        r = mesh("job", "submit", "--address", two_nodes[1], "--working-dir", wd, "--runtime-env-json", env,
                 "--submission-id", "wd-1", "--", "python", "main.py", env=elsewhere, timeout=80)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "areas ['0cm2', '2cm2', '4cm2'] 9" in r.stdout and "env hi True" in r.stdout, r.stdout
        with JobSubmissionClient(two_nodes[0]) as client:
            info = client.get_job_info("wd-1")
        assert info.job_id and f"job {info.job_id}" in r.stdout  # its driver's job id
        assert info.runtime_env == {"working_dir": wd, "env_vars": {"GREETING": "hi"}, "py_modules": [units]}
    finally:
        shutil.rmtree(wd, ignore_errors=True)
        shutil.rmtree(mods, ignore_errors=True)


@pytest.mark.timeout(200)
def test_a_jobs_tasks_run_in_its_pip_environment(two_nodes, tmp_path):
    from .test_pip_env import make_wheel

    wheel = make_wheel(str(tmp_path), "meshpipdemo", "3.0", "VERSION = '3.0'\n")
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import meshcompute as mesh
        mesh.init()

        @mesh.remote
        def version():
            import meshpipdemo
            return meshpipdemo.VERSION

        print("version", mesh.get(version.remote()))
    """))
    with JobSubmissionClient(two_nodes[0]) as client:
        sid = client.submit_job(entrypoint=f"python {script}", runtime_env={"pip": [wheel]})
        assert wait_for(lambda: client.get_job_status(sid) in (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=180)
        logs = client.get_job_logs(sid)
        assert client.get_job_status(sid) == JobStatus.SUCCEEDED, logs
        assert "version 3.0" in logs


@pytest.mark.timeout(90)
def test_a_job_whose_node_dies_is_marked_failed(two_nodes):
    a, _, token = two_nodes
    r = mesh("join", a, env=dict(ENV, MESH_TOKEN=token, MESH_NUM_CPUS="0"))
    assert r.returncode == 0, r.stdout + r.stderr
    doomed = next(i for i in local_nodes() if i["tcp"][6:] not in two_nodes[:2])
    try:
        with JobSubmissionClient(doomed["tcp"][6:]) as client:
            sid = client.submit_job(entrypoint="python -c \"import os, time; print(os.getpgid(0), flush=True); "
                                               "time.sleep(300)\"")
            assert wait_for(lambda: client.get_job_logs(sid).strip(), timeout=20)
            pgid = int(client.get_job_logs(sid).split()[0])
        os.kill(int(doomed["pid"]), signal.SIGKILL)
        assert wait_for(lambda: _group_gone(pgid), timeout=10)  # the job went with its node
        with JobSubmissionClient(a) as client:
            assert wait_for(lambda: client.get_job_status(sid) == JobStatus.FAILED, timeout=40)
            info = client.get_job_info(sid)
            assert "died or left the mesh" in info.message and doomed["node_id"] in info.message
            with pytest.raises(RuntimeError, match="is gone"):
                client.get_job_logs(sid)
    finally:
        stop_node(doomed)


@pytest.mark.timeout(30)
def test_job_options_that_cannot_take_effect_are_refused(two_nodes):
    with pytest.raises(ValueError, match="no HTTP job server"):
        JobSubmissionClient("http://127.0.0.1:8265")
    with JobSubmissionClient(two_nodes[0]) as client:
        with pytest.raises(ValueError, match="entrypoint_num_cpus"):
            client.submit_job(entrypoint="true", entrypoint_num_cpus=1)
        with pytest.raises(ValueError, match="conda"):
            client.submit_job(entrypoint="true", runtime_env={"conda": "env"})
        with pytest.raises(RuntimeError, match="does not exist"):
            client.get_job_status("no-such-job")


# ------------------------------------------------------- drivers from anywhere

REMOTE_DRIVER = """
import sys, meshcompute as mesh
info = mesh.init(address=sys.argv[1])

@mesh.remote
def where():
    return mesh.get_runtime_context().get_node_id()

big = mesh.put(b"x" * (1 << 20))   # in the store of this machine's node
print("ran on", mesh.get(where.remote()), "from", info["node_id"], "nodes", len(mesh.nodes()),
      "got", len(mesh.get(big)))
"""


@pytest.mark.timeout(90)
def test_a_driver_on_a_machine_without_a_node_joins_for_its_life(two_nodes, elsewhere):
    a = two_nodes[0]
    r = subprocess.run([sys.executable, "-c", REMOTE_DRIVER, a], capture_output=True, text=True, timeout=80,
                       env=elsewhere, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    ran_on, own = re.search(r"ran on (\w+) from (\w+) nodes \d+ got 1048576", r.stdout).groups()
    assert ran_on != own  # its own node offers no CPU: the task ran on A
    # The node it joined with left with it (the fixture checks its sessions dir is empty).
    assert wait_for(lambda: not any(n["node_id"] == own and n["state"] == "alive"
                                    for n in query(find_node(a), "mesh")["nodes"]), timeout=10)


@pytest.mark.timeout(60)
def test_a_driver_elsewhere_is_told_what_is_wrong(two_nodes, elsewhere):
    def run(address: str, env: dict) -> str:
        code = "import sys, meshcompute as mesh\ntry:\n    mesh.init(address=sys.argv[1])\n" \
               "except ConnectionError as e:\n    print(e)\n    sys.exit(3)\n"
        r = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=30,
                           env=env, cwd=REPO)
        assert r.returncode == 3, r.stdout + r.stderr
        return r.stdout

    no_token = {k: v for k, v in elsewhere.items() if k != "MESH_TOKEN"}
    assert "MESH_TOKEN" in run(two_nodes[0], no_token)
    from meshcompute.wire.auth import generate_token

    assert "token is not that mesh's" in run(two_nodes[0], dict(elsewhere, MESH_TOKEN=generate_token()))
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    assert "Cannot reach the mesh at " + closed in run(closed, elsewhere)
    r = mesh("job", "list", "--address", closed, env=elsewhere)
    assert r.returncode == 1 and "Cannot reach the mesh" in r.stdout, r.stdout + r.stderr
