"""The public surface is deliberate: adding or removing a name is a visible change."""

from __future__ import annotations

import pickle

import meshcompute as mesh
from meshcompute import exceptions

EXPECTED = {
    "ActorClass", "ActorHandle", "ObjectRef", "RemoteFunction", "RuntimeContext", "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes",
    "put", "remote", "shutdown", "timeline", "wait", "kv", "util", "actor",
}

EXPECTED_EXCEPTIONS = {
    "MeshError", "TaskError", "GetTimeoutError", "WorkerCrashedError", "ActorError", "ActorDiedError",
    "ObjectLostError", "OwnerDiedError", "NodeDiedError", "TaskCancelledError", "ObjectStoreFullError",
    "RayError", "RayTaskError", "RayActorError", "ControlStoreUnavailableError", "PlacementGroupRemovedError",
    "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError", "LocalNodeDiedError", "PendingCallsLimitExceeded",
    # Ray's other names (tests/test_ray_exceptions.py says which meshcompute raises):
    "MeshSystemError", "RaySystemError", "RuntimeEnvSetupError", "TaskUnschedulableError",
    "ActorUnschedulableError", "ActorUnavailableError", "OutOfDiskError", "OutOfMemoryError",
    "ObjectFetchTimedOutError", "TaskPlacementGroupRemoved", "ActorPlacementGroupRemoved", "LocalRayletDiedError",
}


EXPECTED_UTIL = {
    "ActorPool", "PlacementGroup", "get_node_ip_address", "get_placement_group", "placement_group",
    "placement_group_table", "remove_placement_group",
}

# meshcompute.util's modules, reachable as attributes (imported on first use), and their names.
EXPECTED_UTIL_MODULES = {
    "accelerators": {"NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_T4", "NVIDIA_TESLA_P4",
                     "NVIDIA_TESLA_K80", "NVIDIA_TESLA_A10G", "NVIDIA_L4", "NVIDIA_L40S", "NVIDIA_A100",
                     "NVIDIA_A100_40G", "NVIDIA_A100_80G", "NVIDIA_H100", "NVIDIA_H200", "NVIDIA_B200",
                     "AMD_INSTINCT_MI100", "AMD_INSTINCT_MI210", "AMD_INSTINCT_MI250", "AMD_INSTINCT_MI250x",
                     "AMD_INSTINCT_MI300x", "INTEL_MAX_1550", "INTEL_MAX_1100", "INTEL_GAUDI", "AWS_NEURON_CORE",
                     "GOOGLE_TPU_V4"},
    "futures": {"MeshExecutor", "MeshFuture"},
    "joblib": {"register_mesh", "register_ray"},
    "multiprocessing": {"AsyncResult", "IMapIterator", "Pool", "TimeoutError"},
    "queue": {"Empty", "Full", "Queue"},
    "scheduling_strategies": {"NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"},
    "state": {"list_actors", "list_jobs", "list_nodes", "list_objects", "list_placement_groups", "list_tasks",
              "summarize_tasks"},
}


# Modules of meshcompute that are attributes without an import (as ray.cloudpickle, ray.dag...).
EXPECTED_LAZY = {"cloudpickle", "dag", "experimental", "job_submission"}

# Ray's ray.job_submission names (the client, and what it returns).
EXPECTED_JOB_SUBMISSION = {"JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"}


def test_lazy_modules_are_attributes():
    import importlib
    import subprocess
    import sys

    assert set(mesh._LAZY) == EXPECTED_LAZY
    for name in EXPECTED_LAZY:
        assert getattr(mesh, name) is importlib.import_module(f"meshcompute.{name}")
    # in a fresh interpreter: `import meshcompute` alone is enough, and imports none of them
    code = (f"import sys, meshcompute as m; lazy = {sorted(EXPECTED_LAZY)!r}; assert not [n for n in lazy if "
            "'meshcompute.' + n in sys.modules]; [getattr(m, n) for n in lazy]; m.util.accelerators.NVIDIA_A100")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert mesh.cloudpickle.loads(mesh.cloudpickle.dumps(lambda x: x + 1))(1) == 2


def test_job_submission_surface_is_locked():
    from meshcompute import job_submission

    assert set(job_submission.__all__) == EXPECTED_JOB_SUBMISSION
    assert {s.value for s in job_submission.JobStatus} == {"PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"}


def test_exports_are_locked():
    assert set(mesh.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(mesh, name), name
    assert set(exceptions.__all__) == EXPECTED_EXCEPTIONS


def test_exception_hierarchy():
    for name in EXPECTED_EXCEPTIONS:
        assert issubclass(getattr(exceptions, name), exceptions.MeshError)
    assert issubclass(exceptions.OwnerDiedError, exceptions.ObjectLostError)
    for name in ("ObjectReconstructionFailedMaxAttemptsExceededError", "ObjectReconstructionFailedLineageEvictedError"):
        assert issubclass(getattr(exceptions, name), exceptions.ObjectReconstructionFailedError)
    assert issubclass(exceptions.ObjectReconstructionFailedError, exceptions.ObjectLostError)
    assert issubclass(exceptions.LocalNodeDiedError, exceptions.NodeDiedError)
    assert issubclass(exceptions.ActorDiedError, exceptions.ActorError)
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)


def test_task_error_is_both_task_error_and_the_cause_class_and_pickles():
    try:
        raise ValueError("bad value")
    except ValueError as cause:
        err = exceptions.TaskError("f", "Traceback ...\nValueError: bad value", cause, 123, "node")
    dual = err.as_instanceof_cause()
    assert isinstance(dual, exceptions.TaskError) and isinstance(dual, ValueError)
    assert dual.args == ("bad value",) and "bad value" in str(dual)
    again = pickle.loads(pickle.dumps(err))
    assert again.traceback_str == err.traceback_str and isinstance(again.cause, ValueError)


def test_util_scheduling_strategies_importable_as_in_ray():
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    s = NodeAffinitySchedulingStrategy(node_id="abc", soft=True)
    assert s.node_id == "abc" and s.soft


def test_util_surface_is_locked():
    import importlib

    assert set(mesh.util.__all__) == EXPECTED_UTIL
    assert set(mesh.util._SUBMODULES) == set(EXPECTED_UTIL_MODULES)
    for name, names in EXPECTED_UTIL_MODULES.items():
        module = getattr(mesh.util, name)
        assert module is importlib.import_module(f"meshcompute.util.{name}")
        assert set(module.__all__) == names, name
        assert name in dir(mesh.util)
