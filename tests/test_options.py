"""Every option of remote()/.options() and init() takes effect or raises: none is accepted and ignored.

Each option in the accepted sets is listed below with a check that it took effect
(run on a real node), or that it raised saying what to do instead.  A new option
added to the accepted sets without a row here fails ``test_every_option_has_a_check``.
"""

from __future__ import annotations

import os

import pytest

import meshcompute as mesh
from meshcompute import exceptions as exc
from meshcompute.api import remote as remote_mod
from meshcompute.util.placement_group import placement_group, remove_placement_group
from meshcompute.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

pytestmark = pytest.mark.usefixtures("node")


@mesh.remote
def env_of(name):
    return os.environ.get(name)


@mesh.remote
def node_of():
    return mesh.get_runtime_context().get_node_id()


@mesh.remote
def cwd_and_module():
    import helper_mod  # from the working_dir

    return os.path.basename(os.getcwd()), helper_mod.VALUE


@mesh.remote
class Env:
    def get(self, name):
        return os.environ.get(name)


def test_task_options_take_effect(tmp_path):
    # resources, num_cpus, num_gpus, memory, accelerator_type: an impossible ask is infeasible (never runs)
    for opts in ({"num_cpus": 64}, {"num_gpus": 8}, {"resources": {"nope": 1}}, {"memory": 1 << 50},
                 {"accelerator_type": "H100"}):
        with pytest.raises(exc.GetTimeoutError):
            mesh.get(node_of.options(**opts).remote(), timeout=1.5)
    # runtime_env: env_vars, working_dir, py_modules
    assert mesh.get(env_of.options(runtime_env={"env_vars": {"MESH_T": "1"}}).remote("MESH_T")) == "1"
    assert mesh.get(env_of.remote("MESH_T")) is None  # restored after the task
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "helper_mod.py").write_text("VALUE = 42\n")
    cwd, value = mesh.get(cwd_and_module.options(runtime_env={"working_dir": str(wd)}).remote(), timeout=60)
    assert value == 42 and len(cwd) == 32  # the node's unpacked copy, named by content hash
    mods = tmp_path / "mods"
    (mods / "helper_mod").mkdir(parents=True)
    (mods / "helper_mod" / "__init__.py").write_text("VALUE = 7\n")

    @mesh.remote(runtime_env={"py_modules": [str(mods / "helper_mod")]})
    def via_module():
        import helper_mod

        return helper_mod.VALUE

    assert mesh.get(via_module.remote(), timeout=60) == 7
    # scheduling_strategy, placement_group(+bundle index): where it runs
    me = mesh.get_runtime_context().get_node_id()
    assert mesh.get(node_of.options(scheduling_strategy=NodeAffinitySchedulingStrategy(me)).remote()) == me
    pg = placement_group([{"CPU": 1}])
    mesh.get(pg.ready(), timeout=30)
    try:
        assert mesh.get(node_of.options(placement_group=pg, placement_group_bundle_index=0).remote(), timeout=30) == me
        with pytest.raises(ValueError, match="placement_group_bundle_index"):
            node_of.options(placement_group=pg, placement_group_bundle_index=3).remote()
    finally:
        remove_placement_group(pg)
    # name: the task's name in the timeline
    ref = node_of.options(name="renamed").remote()
    mesh.get(ref)
    assert any(e["name"] == "renamed" for e in mesh.timeline() if e.get("ph") == "X")


def test_actor_options_take_effect():
    a = Env.options(runtime_env={"env_vars": {"MESH_A": "yes"}}).remote()
    assert mesh.get(a.get.remote("MESH_A"), timeout=30) == "yes"
    slow = Env.options(max_pending_calls=1).remote()
    mesh.get(slow.get.remote("X"), timeout=30)
    first = slow.get.remote("X")
    with pytest.raises(exc.PendingCallsLimitExceeded):
        for _ in range(50):  # the first is pending while we submit
            slow.get.remote("X")
    mesh.get(first)
    with pytest.raises(exc.GetTimeoutError):
        mesh.get(Env.options(accelerator_type="H100").remote().get.remote("X"), timeout=1.5)


REFUSED = [
    ("task", {"max_calls": 1}, "max_calls"),
    ("task", {"label_selector": {"zone": "a"}}, "label_selector"),
    ("task", {"runtime_env": {"pip": {"packages": ["requests"], "pip_version": "==23"}}}, "pip_version"),
    ("task", {"runtime_env": {"uv": ["requests"]}}, "uv"),
    ("task", {"runtime_env": {"working_dir": "s3://bucket/x.zip"}}, "remote URIs"),
    ("task", {"num_returns": "many"}, "num_returns"),
    ("actor", {"concurrency_groups": {"io": 2}}, "concurrency_groups"),
    ("actor", {"max_pending_calls": 0}, "max_pending_calls"),
    ("actor", {"runtime_env": {"conda": "env"}}, "conda"),
]


@pytest.mark.parametrize(("kind", "opts", "match"), REFUSED)
def test_unsupported_options_raise_saying_what_to_do(kind, opts, match):
    with pytest.raises(ValueError, match=match):
        if kind == "task":
            node_of.options(**opts).remote()
        else:
            Env.options(**opts).remote()


def test_other_refusals():
    with pytest.raises(ValueError, match="capture_child_tasks"):
        PlacementGroupSchedulingStrategy(None, placement_group_capture_child_tasks=True)
    with pytest.raises(ValueError, match="concurrency_group"):
        mesh.method(concurrency_group="io")
    with pytest.raises(ValueError, match="unknown option"):
        node_of.options(num_cpu=1)


# Every accepted option, with the test that shows it at work.
CHECKED = {
    "num_cpus": "test_task_options_take_effect", "num_gpus": "test_task_options_take_effect",
    "resources": "test_task_options_take_effect", "memory": "test_task_options_take_effect",
    "accelerator_type": "test_task_options_take_effect", "runtime_env": "test_task_options_take_effect",
    "scheduling_strategy": "test_task_options_take_effect", "placement_group": "test_task_options_take_effect",
    "placement_group_bundle_index": "test_task_options_take_effect", "name": "test_task_options_take_effect",
    "max_calls": "REFUSED", "label_selector": "REFUSED", "concurrency_groups": "REFUSED",
    "max_pending_calls": "test_actor_options_take_effect",
    "num_returns": "tests/test_tasks.py, tests/test_generators.py",
    "_generator_backpressure_num_objects": "tests/test_generators.py",
    "max_retries": "tests/test_tasks.py", "retry_exceptions": "tests/test_tasks.py",
    "max_restarts": "tests/test_actors.py", "max_task_retries": "tests/test_actors.py",
    "max_concurrency": "tests/test_actors.py", "namespace": "tests/test_actors.py", "lifetime": "tests/test_actors.py",
    "get_if_exists": "tests/test_actors.py",
}


def test_every_option_has_a_check():
    assert remote_mod._TASK_OPTIONS | remote_mod._ACTOR_OPTIONS == set(CHECKED)


def test_init_refuses_ray_options_it_cannot_honour():
    with pytest.raises(RuntimeError, match="already initialized"):
        mesh.init()
    assert mesh.init(ignore_reinit_error=True)
    from meshcompute.api.session import _check_ray_options

    _check_ray_options({"local_mode": False, "include_dashboard": False, "dashboard_port": None})
    for bad, match in (({"local_mode": True}, "local_mode"), ({"include_dashboard": True}, "mesh top"),
                       ({"_system_config": {"x": 1}}, "system config")):
        with pytest.raises(ValueError, match=match):
            _check_ray_options(bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        _check_ray_options({"nonsense": 1})
