"""Nothing outlives its owner: shutdown, a killed driver, a killed daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from .conftest import pid_alive, wait_for

DRIVER = textwrap.dedent("""
    import json, os, sys, time, psutil
    import meshcompute as mesh
    info = mesh.init(num_cpus=2, object_store_memory=64 << 20)

    @mesh.remote
    def work(x):
        return os.getpid()

    worker_pids = set(mesh.get([work.remote(i) for i in range(20)]))
    daemon = [p for p in psutil.Process().children() if "meshcompute.node.daemon" in " ".join(p.cmdline())][0]
    tree = [daemon.pid] + [c.pid for c in daemon.children(recursive=True)]
    held = mesh.put(b"x" * (1 << 20))  # something in shared memory
    print(json.dumps({"session": info["session_dir"], "daemon": daemon.pid, "tree": tree,
                      "workers": sorted(worker_pids)}), flush=True)
    if sys.argv[1] == "shutdown":
        mesh.shutdown()
        print("done", flush=True)
    else:
        time.sleep(60)
""")


def _start_driver(mode: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    line = proc.stdout.readline()
    assert line, "driver failed to start"
    return proc, json.loads(line)


def _arena(session: str) -> str:
    from meshcompute.host.sessions import arena_path

    return arena_path(session)


def _all_gone(info: dict) -> bool:
    return not any(pid_alive(p) for p in info["tree"])


def test_shutdown_stops_every_process_and_removes_shared_memory():
    proc, info = _start_driver("shutdown")
    assert len(info["tree"]) >= 4  # daemon, zygote, two workers
    assert set(info["workers"]) <= set(info["tree"])
    assert os.path.exists(_arena(info["session"]))
    assert proc.stdout.readline().strip() == "done"
    proc.wait(10)
    assert wait_for(lambda: _all_gone(info), timeout=5)
    assert not os.path.exists(_arena(info["session"]))
    assert not os.path.exists(info["session"])


def test_sigkill_of_the_driver_takes_the_node_down():
    proc, info = _start_driver("sleep")
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    assert wait_for(lambda: _all_gone(info), timeout=5), [p for p in info["tree"] if pid_alive(p)]
    assert wait_for(lambda: not os.path.exists(_arena(info["session"])), timeout=5)
    assert not os.path.exists(info["session"])


def test_sigkill_of_the_daemon_leaves_nothing_after_the_next_start():
    proc, info = _start_driver("sleep")
    try:
        os.kill(info["daemon"], signal.SIGKILL)
        # Zygote and workers follow their parent at once.
        assert wait_for(lambda: _all_gone(info), timeout=5)
        # The SIGKILLed daemon could not clean up; the next start on this host does.
        assert os.path.exists(_arena(info["session"]))
        from meshcompute.host.sessions import clean_stale_sessions

        clean_stale_sessions()
        assert not os.path.exists(_arena(info["session"]))
        assert not os.path.exists(info["session"])
    finally:
        proc.kill()
        proc.wait(5)


def test_worker_killed_mid_task_is_replaced(node_for_kill):
    import meshcompute as mesh

    @mesh.remote(max_retries=1)
    def pid_then_sleep(path):
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(30)
        return os.getpid()

    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "pid")
    ref = pid_then_sleep.remote(path)
    assert wait_for(lambda: os.path.exists(path) and open(path).read(), timeout=10)
    victim = int(open(path).read())
    os.kill(victim, signal.SIGKILL)  # what the kernel's OOM killer does
    survivor = mesh.get(ref, timeout=20)
    assert survivor != victim and psutil.pid_exists(survivor)


@pytest.fixture
def node_for_kill():
    import meshcompute as mesh

    if mesh.is_initialized():
        mesh.shutdown()
    mesh.init(num_cpus=2, object_store_memory=64 << 20)
    yield
    mesh.shutdown()


def test_a_sessions_root_made_by_someone_else_is_refused(tmp_path):
    """Its session files name the pids `mesh stop` signals: a root another user created
    first (a predictable name in /tmp) must never be used or acted on."""
    import subprocess
    import sys

    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    root = tmp_path / "taken"
    root.mkdir(mode=0o777)
    (root / "s20260101000000_1_abcdef").mkdir()
    (root / "s20260101000000_1_abcdef" / "daemon.json").write_text('{"pid": 1, "address": "x"}')
    os.chown(root, 54321, 54321)
    env = dict(os.environ, MESH_SESSIONS_ROOT=str(root))
    code = ("import meshcompute as m\n"
            "try:\n    m.init()\nexcept m.exceptions.MeshError as e:\n    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "REFUSED" in out.stdout and "belongs to uid 54321" in out.stdout, out.stdout + out.stderr
    stop = subprocess.run([sys.executable, "-m", "meshcompute.cli", "stop"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (root / "s20260101000000_1_abcdef").exists(), "mesh stop acted on someone else's sessions"
    assert "s20260101000000_1_abcdef" not in stop.stdout


@pytest.mark.timeout(60)
def test_a_worker_whose_zygote_died_before_it_registered_exits_at_once(tmp_path):
    """Was: a worker forked just as its zygote died never got the parent-death signal
    (set after the fork) and waited out a 30 s registration with a daemon that was gone."""
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    (session / "daemon.addr").write_text("gone/daemon@")  # nobody will ever answer
    # A stand-in zygote forks a worker and dies before the worker starts.
    code = textwrap.dedent(f"""
        import os, sys, time
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:
            time.sleep(0.5)  # the zygote is gone by now
            from meshcompute.worker import main as worker_main
            worker_main.main({str(session)!r}, "gone", None, "w1", zygote)
            os._exit(0)
        print(pid, flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    worker = int(out.stdout.split()[0])
    start = time.monotonic()
    assert wait_for(lambda: not pid_alive(worker), timeout=10), "the orphaned worker waited on"
    assert time.monotonic() - start < 10
