"""get_runtime_context() inside tasks, actors and the driver, as in Ray."""

from __future__ import annotations

import json
import os
import time

import pytest

import meshcompute as mesh
from meshcompute.util.placement_group import placement_group, remove_placement_group
from meshcompute.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.timeout(60)


def _ctx():
    c = mesh.get_runtime_context()
    return {"name": c.get_task_name(), "resources": c.get_assigned_resources(),
            "env": json.loads(c.get_runtime_env_string()), "pg": c.get_placement_group_id(),
            "actor_name": c.get_actor_name()}


def test_a_task_knows_its_name_resources_and_runtime_env(node):
    ctx = mesh.remote(_ctx)
    got = mesh.get(ctx.remote(), timeout=30)
    assert got == {"name": "_ctx", "resources": {"CPU": 1.0}, "env": {}, "pg": None, "actor_name": None}
    got = mesh.get(ctx.options(name="renamed", num_cpus=0.5, memory=10 << 20,
                               runtime_env={"env_vars": {"A": "1"}}).remote(), timeout=30)
    assert got["name"] == "renamed"
    assert got["resources"] == {"CPU": 0.5, "memory": float(10 << 20)}
    assert got["env"] == {"env_vars": {"A": "1"}}


def test_a_child_run_inline_by_its_blocked_parent_reports_its_own_shape(node):
    child = mesh.remote(num_cpus=0.25)(_ctx)

    @mesh.remote
    def parent():
        return _ctx()["resources"], mesh.get(child.remote())["resources"]

    assert mesh.get(parent.remote(), timeout=30) == ({"CPU": 1.0}, {"CPU": 0.25})


def test_working_dir_shows_as_the_path_given(node, tmp_path):
    (tmp_path / "data.txt").write_text("x")
    got = mesh.get(mesh.remote(_ctx).options(runtime_env={"working_dir": str(tmp_path)}).remote(), timeout=30)
    assert got["env"] == {"working_dir": str(tmp_path)}


def test_the_driver_has_no_task(node):
    ctx = mesh.get_runtime_context()
    assert ctx.get_task_name() is None
    assert ctx.get_actor_name() is None
    assert ctx.get_runtime_env_string() == "{}"
    for call in (ctx.get_assigned_resources, ctx.is_canceled, lambda: ctx.current_actor,
                 lambda: ctx.was_current_actor_reconstructed):
        with pytest.raises(RuntimeError):
            call()


def test_actor_context(node):
    @mesh.remote(max_restarts=1)
    class A:
        def __init__(self):
            self.at_init = mesh.get_runtime_context().get_assigned_resources()

        def info(self):
            c = mesh.get_runtime_context()
            return (self.at_init, _ctx(), c.was_current_actor_reconstructed, c.get_actor_id())

        def die(self):
            os._exit(1)

    a = A.remote()
    at_init, ctx, restarted, actor_id = mesh.get(a.info.remote(), timeout=30)
    assert at_init == {} and ctx["resources"] == {}  # actors hold no CPU unless asked, as in Ray
    assert ctx["name"] == "A.info" and ctx["actor_name"] == ""
    assert restarted is False
    with pytest.raises(mesh.exceptions.ActorDiedError):
        mesh.get(a.die.remote(), timeout=30)
    assert mesh.get(a.info.remote(), timeout=30)[2] is True
    b = A.options(name="b", num_cpus=1, runtime_env={"env_vars": {"B": "2"}}).remote()
    at_init, ctx, _, _ = mesh.get(b.info.remote(), timeout=30)
    assert at_init == ctx["resources"] == {"CPU": 1.0}
    assert ctx["actor_name"] == "b" and ctx["env"] == {"env_vars": {"B": "2"}}
    mesh.kill(b)


def test_async_and_threaded_actor_calls_each_see_their_own_name(node):
    @mesh.remote
    class Async:
        async def one(self):
            return mesh.get_runtime_context().get_task_name()

        async def two(self):
            return mesh.get_runtime_context().get_task_name()

    @mesh.remote(max_concurrency=4)
    class Threaded:
        def one(self):
            time.sleep(0.1)
            return mesh.get_runtime_context().get_task_name()

        def two(self):
            return mesh.get_runtime_context().get_task_name()

    for cls in (Async, Threaded):
        h = cls.remote()
        refs = [h.one.remote(), h.two.remote(), h.one.remote()]
        names = [f"{cls.__name__}.one", f"{cls.__name__}.two", f"{cls.__name__}.one"]
        assert mesh.get(refs, timeout=30) == names


def test_current_actor_is_a_handle_to_itself(node):
    @mesh.remote
    def call_back(handle):
        return mesh.get(handle.value.remote())

    @mesh.remote
    class Me:
        def value(self):
            return 42

        def me(self):
            return mesh.get_runtime_context().current_actor

        def via_task(self):
            return call_back.remote(mesh.get_runtime_context().current_actor)

    a = Me.remote()
    handle = mesh.get(a.me.remote(), timeout=30)
    assert handle == a and mesh.get(handle.value.remote(), timeout=30) == 42
    # A threaded call would deadlock here: hand the ref back, the driver reads it.
    assert mesh.get(mesh.get(a.via_task.remote(), timeout=30), timeout=30) == 42


def test_is_canceled_lets_a_threaded_actor_call_stop_itself(node):
    @mesh.remote(max_concurrency=2)
    class Worker:
        def loop(self):
            deadline = time.time() + 20
            while time.time() < deadline:
                if mesh.get_runtime_context().is_canceled():
                    return "stopped"
                time.sleep(0.01)
            return "ran out"

        def ping(self):
            return mesh.get_runtime_context().is_canceled()

    w = Worker.remote()
    assert mesh.get(w.ping.remote(), timeout=30) is False
    ref = w.loop.remote()
    time.sleep(0.5)
    start = time.time()
    mesh.cancel(ref)
    with pytest.raises(mesh.exceptions.TaskCancelledError):
        mesh.get(ref, timeout=30)
    assert time.time() - start < 5
    assert mesh.get(w.ping.remote(), timeout=30) is False  # the flag was the cancelled call's only


def test_placement_group_resources_read_as_asked(node):
    pg = placement_group([{"CPU": 1}])
    mesh.get(pg.ready(), timeout=30)
    try:
        got = mesh.get(mesh.remote(_ctx).options(
            num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote(), timeout=30)
        assert got["resources"] == {"CPU": 1.0} and got["pg"] == pg.id
    finally:
        remove_placement_group(pg)


def test_get_node_ip_address(node):
    assert mesh.util.get_node_ip_address() == "127.0.0.1"
    assert mesh.get(mesh.remote(mesh.util.get_node_ip_address).remote(), timeout=30) == "127.0.0.1"
