"""Fixtures: real embedded nodes (daemon + workers), and a leak check.

Every test runs against real processes and sockets.  A module-scoped node keeps
the suite fast; tests that need their own configuration start their own node.
After the whole session no meshcompute process may be left running.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import meshcompute as mesh


def _mesh_pids() -> set[int]:
    from meshcompute._private.procutil import SESSIONS_ROOT

    # Only nodes of this sessions root: others on the host are not ours to count.
    pattern = f"meshcompute._private.daemon --session {SESSIONS_ROOT}/"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    before = _mesh_pids()
    yield
    if mesh.is_initialized():
        mesh.shutdown()
    deadline = time.time() + 10
    leaked = _mesh_pids() - before
    while leaked and time.time() < deadline:
        time.sleep(0.1)
        leaked = _mesh_pids() - before
    assert not leaked, f"meshcompute processes outlived the test session: {sorted(leaked)}"


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
    from meshcompute._private import context

    return context.core.node_info()["store"]["used"]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
