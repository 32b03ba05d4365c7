"""The rest of Ray's exception names, raised where they fit."""

from __future__ import annotations

import os
import signal
import time

import pytest

import meshcompute as mesh
from meshcompute import exceptions as exc
from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import loopback_mesh, wait_for

pytestmark = pytest.mark.timeout(60)


def test_ray_names_and_where_they_sit():
    assert exc.RaySystemError is exc.MeshSystemError and exc.LocalRayletDiedError is exc.LocalNodeDiedError
    assert issubclass(exc.OutOfDiskError, exc.ObjectStoreFullError)
    assert issubclass(exc.ObjectFetchTimedOutError, exc.ObjectLostError)
    for name in ("ActorUnschedulableError", "ActorUnavailableError", "ActorPlacementGroupRemoved"):
        assert issubclass(getattr(exc, name), exc.ActorError)
    for name in exc.__all__:  # each says when meshcompute raises it, or that it never does
        assert (getattr(exc, name).__doc__ or "").strip(), name


@pytest.mark.parametrize("errno_, error", [(28, "OutOfDiskError"), (5, "ObjectStoreFullError")])
def test_a_spill_that_runs_out_of_disk_reads_as_out_of_disk(tmp_path, monkeypatch, errno_, error):
    from meshcompute.owner.store_client import store_full
    from meshcompute.store import spill as spill_mod
    from meshcompute.store.table import StoreFull, StoreTable

    page = 4096
    fd = os.open(tmp_path / "arena", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 64 * page)
        table = StoreTable(64 * page, fd, str(tmp_path / "spill"), "test-node")
        off = table.create(b"a", 40 * page, "owner", "writer")  # fills the store: the next must spill it
        os.pwrite(fd, b"x" * 40 * page, off)
        table.seal(b"a")
        monkeypatch.setattr(spill_mod.os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno_, "no")))
        with pytest.raises(StoreFull) as info:
            table.create(b"b", 40 * page, "owner", "writer")
    finally:
        os.close(fd)
    err = store_full(str(info.value))
    assert type(err) is getattr(exc, error) and isinstance(err, exc.ObjectStoreFullError)
    assert "spilling to" in str(err)


def test_a_working_dir_that_cannot_be_unpacked_raises_runtime_env_setup_error(node, tmp_path):
    bad = tmp_path / "project.zip"
    bad.write_bytes(b"this is not a zip archive")

    @mesh.remote(max_retries=0)
    def f():
        return "ran"

    with pytest.raises(exc.RuntimeEnvSetupError, match="could not unpack"):
        mesh.get(f.options(runtime_env={"working_dir": str(bad)}).remote(), timeout=30)

    @mesh.remote
    class A:
        def ping(self):
            return "pong"

    with pytest.raises(exc.ActorDiedError, match="RuntimeEnvSetupError"):
        mesh.get(A.options(runtime_env={"py_modules": [str(bad)]}).remote().ping.remote(), timeout=30)
    assert mesh.get(f.remote(), timeout=30) == "ran"  # the worker that failed to set up serves on


@pytest.mark.timeout(120)
def test_a_task_pinned_to_a_node_that_died_is_unschedulable():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(2, num_cpus=1, object_store_memory=128 << 20) as (_, nodes):
        try:
            mesh.init(address=nodes[0][1]["tcp"].replace("tcp://", ""))
            assert wait_for(lambda: len([n for n in mesh.nodes() if n["Alive"]]) == 2, timeout=15)
            victim_proc, victim = nodes[1]
            there = NodeAffinitySchedulingStrategy(node_id=victim["node_id"], soft=False)
            anywhere = NodeAffinitySchedulingStrategy(node_id=victim["node_id"], soft=True)

            @mesh.remote
            def nap(seconds):
                time.sleep(seconds)
                return mesh.get_runtime_context().get_node_id()

            assert mesh.get(nap.options(scheduling_strategy=there).remote(0), timeout=30) == victim["node_id"]
            running = nap.options(scheduling_strategy=there).remote(60)  # its one CPU: the next waits
            waiting = nap.options(scheduling_strategy=there).remote(0)
            elsewhere = nap.options(scheduling_strategy=anywhere).remote(1)
            time.sleep(1)
            os.kill(victim["pid"], signal.SIGKILL)
            victim_proc.wait(10)
            for ref in (running, waiting):
                with pytest.raises(exc.TaskUnschedulableError, match="pinned to node"):
                    mesh.get(ref, timeout=30)
            assert mesh.get(elsewhere, timeout=30) == nodes[0][1]["node_id"]  # soft: it ran on
            with pytest.raises(exc.TaskUnschedulableError):  # submitted after the death
                mesh.get(nap.options(scheduling_strategy=there).remote(0), timeout=10)
        finally:
            mesh.shutdown()
