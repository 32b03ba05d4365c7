"""Logical GPUs: CUDA_VISIBLE_DEVICES and get_gpu_ids() for tasks and actors, on a machine without GPUs."""

from __future__ import annotations

import os

import pytest

import meshcompute as mesh

pytestmark = pytest.mark.timeout(60)


@mesh.remote
class Gpu:
    def devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES"), mesh.get_gpu_ids(), \
            mesh.get_runtime_context().get_accelerator_ids()["GPU"]


@pytest.mark.node_options(num_cpus=2, resources={"GPU": 2})
def test_gpus_given_as_a_resource_are_devices_for_tasks_and_actors(fresh_node):
    assert mesh.cluster_resources()["GPU"] == 2

    @mesh.remote(num_gpus=1)
    def task_devices():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), mesh.get_gpu_ids()

    env, ids = mesh.get(task_devices.remote(), timeout=30)  # waited forever before: no device to take
    assert env in ("0", "1") and ids == [int(env)]

    a, b = Gpu.options(num_gpus=1).remote(), Gpu.options(num_gpus=1).remote()
    (env_a, ids_a, acc_a), (env_b, ids_b, _) = mesh.get([a.devices.remote(), b.devices.remote()], timeout=30)
    assert {env_a, env_b} == {"0", "1"}
    assert ids_a == [int(env_a)] and ids_b == [int(env_b)] and acc_a == [env_a]
    assert mesh.get(a.devices.remote(), timeout=30)[0] == env_a  # for the actor's life
    mesh.kill(a)
    c = Gpu.options(num_gpus=1).remote()  # a's device is free again
    assert mesh.get(c.devices.remote(), timeout=30)[0] == env_a
    mesh.kill(b)
    halves = [Gpu.options(num_gpus=0.5).remote() for _ in range(2)]
    envs = {mesh.get(h.devices.remote(), timeout=30)[0] for h in halves}
    assert len(envs) == 1 and envs <= {"0", "1"}  # fractions share one device


def test_an_actor_without_gpus_sees_none(node):
    env, ids, acc = mesh.get(Gpu.remote().devices.remote(), timeout=30)
    assert ids == [] and acc == [] and env == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_fractional_gpu_count_for_a_node_is_refused():
    if mesh.is_initialized():
        mesh.shutdown()
    with pytest.raises(ValueError, match="whole number"):
        mesh.init(num_cpus=1, resources={"GPU": 1.5})
    with pytest.raises(ValueError, match="give one of them"):
        mesh.init(num_cpus=1, num_gpus=1, resources={"GPU": 2})
    assert not mesh.is_initialized()
