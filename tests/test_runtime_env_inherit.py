"""A task or actor started from inside another inherits its runtime_env, as in Ray."""

import os

import pytest

import meshcompute as mesh

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def node():
    mesh.init(num_cpus=2)
    yield
    mesh.shutdown()


def _env_of(names):
    return {n: os.environ.get(n) for n in names}, mesh.get_runtime_context().get_runtime_env_string()


@mesh.remote
def child(names):
    return _env_of(names)


@mesh.remote
def parent(names, child_env=None):
    c = child.options(runtime_env=child_env) if child_env else child
    return mesh.get(c.remote(names))


def test_a_child_task_inherits_its_parents_env_vars(node):
    got, described = mesh.get(parent.options(runtime_env={"env_vars": {"INH_A": "1"}}).remote(["INH_A"]))
    assert got == {"INH_A": "1"}
    assert '"INH_A"' in described


def test_the_childs_own_fields_override_and_env_vars_merge(node):
    env = {"env_vars": {"INH_A": "parent", "INH_B": "parent"}}
    got, _ = mesh.get(parent.options(runtime_env=env).remote(
        ["INH_A", "INH_B", "INH_C"], {"env_vars": {"INH_B": "child", "INH_C": "child"}}))
    assert got == {"INH_A": "parent", "INH_B": "child", "INH_C": "child"}


def test_a_child_of_a_task_without_env_gets_none(node):
    # The same worker may have run a task with an environment before: nothing leaks.
    mesh.get(parent.options(runtime_env={"env_vars": {"INH_A": "1"}}).remote(["INH_A"]))
    got, described = mesh.get(parent.remote(["INH_A"]))
    assert got == {"INH_A": None}
    assert described in ("{}", "")


def test_an_actor_created_in_a_task_inherits_its_working_dir(node, tmp_path):
    (tmp_path / "inh_mod.py").write_text("VALUE = 42\n")

    @mesh.remote
    class Reader:
        def value(self):
            import inh_mod

            return inh_mod.VALUE, os.path.basename(os.getcwd())

    @mesh.remote
    def make():
        r = Reader.remote()
        return mesh.get(r.value.remote())

    value, cwd = mesh.get(make.options(runtime_env={"working_dir": str(tmp_path)}).remote(), timeout=60)
    assert value == 42 and cwd != os.path.basename(os.getcwd())


def test_an_actors_method_passes_its_env_to_tasks_it_submits(node):
    @mesh.remote
    class Spawner:
        def spawn(self, names):
            return mesh.get(child.remote(names))

    s = Spawner.options(runtime_env={"env_vars": {"INH_D": "actor"}}).remote()
    got, _ = mesh.get(s.spawn.remote(["INH_D"]))
    assert got == {"INH_D": "actor"}
