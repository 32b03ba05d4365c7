"""The joblib backend on a real node: joblib.Parallel and a real scikit-learn GridSearchCV
run their n_jobs work in mesh processes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import meshcompute as mesh
from meshcompute.owner import context
from meshcompute.wire.messages import Msg

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from meshcompute.util.joblib import register_mesh, register_ray  # noqa: E402

register_mesh()


def pid_of(_):
    return os.getpid()


def fail(x):
    if x == 3:
        raise ValueError("three")
    return x


def total_and_writeable(a, i):
    return float(a.sum()) + i, bool(a.flags.writeable)


def blas_threads():
    from threadpoolctl import threadpool_info

    return sorted({info["num_threads"] for info in threadpool_info()})


def test_parallel_runs_in_mesh_processes_under_both_names(node):
    assert register_ray is register_mesh
    for name in ("mesh", "ray"):
        with joblib.parallel_backend(name, n_jobs=2):
            pids = joblib.Parallel()(joblib.delayed(pid_of)(i) for i in range(20))
        assert os.getpid() not in pids
    with joblib.parallel_backend("mesh"):
        assert joblib.effective_n_jobs(-1) == 2  # every CPU of the mesh
        gen = joblib.Parallel(n_jobs=2, return_as="generator")(joblib.delayed(abs)(-i) for i in range(5))
        assert list(gen) == [0, 1, 2, 3, 4]
    with joblib.parallel_backend("mesh", n_jobs=1):  # one job: joblib runs it here, as with its own backends
        assert joblib.Parallel()(joblib.delayed(pid_of)(i) for i in range(3)) == [os.getpid()] * 3


def test_errors_reach_the_caller(node):
    with joblib.parallel_backend("mesh", n_jobs=2):
        with pytest.raises(ValueError, match="three"):
            joblib.Parallel()(joblib.delayed(fail)(i) for i in range(8))
        # the backend is usable again after an abort
        assert joblib.Parallel()(joblib.delayed(abs)(i) for i in range(4)) == [0, 1, 2, 3]


def test_grid_search_cv_matches_the_sequential_run(node):
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "kernel": ["linear", "rbf"]}
    sequential = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("mesh"):
        on_mesh = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(X, y)
    assert on_mesh.best_params_ == sequential.best_params_
    assert np.allclose(on_mesh.cv_results_["mean_test_score"], sequential.cv_results_["mean_test_score"])


def _store_creates() -> int:
    return context.core.sent.get(Msg.STORE_CREATE, 0)


def test_large_arrays_are_stored_once_per_call_and_read_only(node):
    a = np.ones(500_000)  # 4 MB, over joblib's 1 MB max_nbytes
    expected = [500_000.0 + i for i in range(12)]
    with joblib.parallel_backend("mesh", n_jobs=2):
        before = _store_creates()
        out = joblib.Parallel(batch_size=1)(joblib.delayed(total_and_writeable)(a, i) for i in range(12))
        assert [t for t, _ in out] == expected and not any(w for _, w in out)
        assert _store_creates() - before == 1
        out = joblib.Parallel(batch_size=1, mmap_mode="c")(
            joblib.delayed(total_and_writeable)(a, i) for i in range(4))
        assert all(w for _, w in out)  # a private, writable copy
        before = _store_creates()
        out = joblib.Parallel(batch_size=1, max_nbytes=None)(
            joblib.delayed(total_and_writeable)(a, i) for i in range(12))
        assert [t for t, _ in out] == expected
        assert _store_creates() - before == 12  # not shared: stored with every batch


def test_inner_max_num_threads_caps_native_thread_pools(node):
    with joblib.parallel_backend("mesh", n_jobs=2, inner_max_num_threads=1):
        limits = joblib.Parallel()(joblib.delayed(blas_threads)() for _ in range(2))
    assert limits == [[1], [1]]  # numpy's OpenBLAS runs 2 threads here, 1 in the workers


def test_options_take_effect_or_raise(node):
    with pytest.raises(ValueError, match="unknown option"):
        with joblib.parallel_backend("mesh", bogus=1):
            pass
    with joblib.parallel_backend("mesh", n_jobs=2):
        with pytest.raises(ValueError, match="mmap_mode"):
            joblib.Parallel(mmap_mode="w+")(joblib.delayed(abs)(1) for _ in range(2))
        with pytest.raises(ValueError, match="temp_folder"):
            joblib.Parallel(temp_folder="/tmp")(joblib.delayed(abs)(1) for _ in range(2))
    with joblib.parallel_backend("mesh", n_jobs=2, ray_remote_args={"num_cpus": 1}):
        assert joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2)) == [1, 1]
    with joblib.parallel_backend("mesh", n_jobs=3, ray_remote_args={"num_cpus": 1}):
        with pytest.raises(ValueError, match="need 3 CPUs"):
            joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2))
    assert mesh.is_initialized()
