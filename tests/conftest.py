"""Fixtures: real embedded nodes (daemon + workers), and a leak check.

Every test runs against real processes and sockets.  A module-scoped node keeps
the suite fast; tests that need their own configuration start their own node.
After the whole session no meshcompute process may be left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

# Every node this test session starts keeps its session dir under this root (the
# variable is inherited by drivers the tests spawn), so the leak check below sees
# only our processes, even when another suite runs beside this one.
# (Made only when unset: processes the tests start import this file again, and each made an
# empty directory that nothing removed.)
SESSIONS_ROOT = os.environ.get("MESH_SESSIONS_ROOT") or tempfile.mkdtemp(prefix="mesh-test-")
os.environ["MESH_SESSIONS_ROOT"] = SESSIONS_ROOT

import meshcompute as mesh  # noqa: E402  (after the root is set)
from meshcompute.host.sessions import pid_alive  # noqa: E402,F401  (re-exported to tests)


def _mesh_pids() -> set[int]:
    # "--" first: the pattern starts with "--", which pgrep would take for an option (and find nothing).
    out = subprocess.run(["pgrep", "-f", "--", f"--session {SESSIONS_ROOT}/"], capture_output=True, text=True)
    assert out.returncode in (0, 1), f"pgrep failed: {out.stderr.strip()}"
    return {int(p) for p in out.stdout.split()}


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    yield
    if mesh.is_initialized():
        mesh.shutdown()
    leaked = wait_for(lambda: not _mesh_pids(), timeout=10) or _mesh_pids()
    leftovers = [n for n in os.listdir(SESSIONS_ROOT)] if os.path.isdir(SESSIONS_ROOT) else []
    from meshcompute.host.sessions import arena_path

    tag = os.path.basename(arena_path(os.path.join(SESSIONS_ROOT, "x")))[:-1]
    arenas = [n for n in os.listdir("/dev/shm") if n.startswith(tag)]
    for name in arenas:
        os.unlink(os.path.join("/dev/shm", name))
    shutil.rmtree(SESSIONS_ROOT, ignore_errors=True)
    assert leaked is True, f"meshcompute processes outlived the test session: {sorted(leaked)}"
    assert not leftovers, f"session directories left behind: {leftovers}"
    assert not arenas, f"shared memory left behind: {arenas}"


@pytest.fixture(scope="module")
def node():
    """A 2-CPU embedded node with a 512 MiB store, shared by a test module."""
    if mesh.is_initialized():
        mesh.shutdown()
    info = mesh.init(num_cpus=2, object_store_memory=512 << 20)
    yield info
    mesh.shutdown()


@pytest.fixture
def fresh_node(request):
    """A node of its own for one test; pass init kwargs with @pytest.mark.node_options(...)."""
    marker = request.node.get_closest_marker("node_options")
    kwargs = dict(num_cpus=2, object_store_memory=256 << 20)
    if marker:
        kwargs.update(marker.kwargs)
    if mesh.is_initialized():
        mesh.shutdown()
    info = mesh.init(**kwargs)
    yield info
    mesh.shutdown()


def store_used() -> int:
    from meshcompute.owner import context

    return context.core.node_info()["store"]["used"]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@contextlib.contextmanager
def loopback_mesh(n: int = 3, *, num_cpus: float, object_store_memory: int, voters: int | None = None):
    """Start ``n`` standing nodes on loopback, each joining through the first.

    Yields ``(token, [(process, info), ...])``; every node is stopped afterwards.
    """
    from meshcompute.host.launcher import start_node, stop_node
    from meshcompute.wire.auth import generate_token

    token = generate_token()
    nodes: list = []
    try:
        nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=num_cpus, token=token, standalone=True,
                                object_store_memory=object_store_memory, voters=voters))
        seed = nodes[0][1]["tcp"].replace("tcp://", "")
        for _ in range(n - 1):
            nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=num_cpus, token=token, join=[seed],
                                    standalone=True, object_store_memory=object_store_memory))
        yield token, nodes
    finally:
        for proc, info in nodes:
            stop_node(info)
            proc.wait(10)


@contextlib.contextmanager
def driver_on_loopback_mesh(n: int = 2, *, num_cpus: float, object_store_memory: int):
    """``loopback_mesh`` with this process as a driver on its first node, once every node is
    seen alive; yields ``(token, nodes)`` and shuts the driver down before the nodes."""
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(n, num_cpus=num_cpus, object_store_memory=object_store_memory) as (token, nodes):
        try:
            mesh.init(address=nodes[0][1]["tcp"].replace("tcp://", ""))
            assert wait_for(lambda: len([x for x in mesh.nodes() if x["alive"]]) == n, timeout=30)
            yield token, nodes
        finally:
            if mesh.is_initialized():
                mesh.shutdown()
