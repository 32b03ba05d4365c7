"""runtime_env={"worker_process_setup_hook": ...}: once per worker process, before its first task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import meshcompute as mesh
from meshcompute import exceptions as exc

pytestmark = pytest.mark.timeout(60)


def _mark():
    import builtins

    builtins.mesh_hook_runs = getattr(builtins, "mesh_hook_runs", 0) + 1
    os.environ["MESH_HOOKED"] = "yes"


@mesh.remote
def report():
    import builtins

    return os.getpid(), getattr(builtins, "mesh_hook_runs", 0), os.environ.get("MESH_HOOKED")


def test_the_hook_runs_once_per_process_before_tasks_and_actors(node):
    hooked = report.options(runtime_env={"worker_process_setup_hook": _mark})
    results = mesh.get([hooked.remote() for _ in range(20)], timeout=30)
    assert all(runs == 1 and flag == "yes" for _, runs, flag in results), results  # once, whatever the count

    @mesh.remote
    class Hooked:
        def runs(self):
            return report.__wrapped__()

    actor = Hooked.options(runtime_env={"worker_process_setup_hook": _mark}).remote()
    assert mesh.get(actor.runs.remote(), timeout=30)[1:] == (1, "yes")
    env = json.loads(mesh.get(mesh.remote(lambda: mesh.get_runtime_context().get_runtime_env_string()).options(
        runtime_env={"worker_process_setup_hook": _mark}).remote(), timeout=30))
    assert env == {"worker_process_setup_hook": f"{__name__}._mark"}


def test_a_hook_by_name_and_a_hook_that_fails(node):
    got = mesh.get(report.options(runtime_env={"worker_process_setup_hook": "logging.basicConfig"}).remote(),
                   timeout=30)
    assert got[0] > 0

    def broken():
        raise RuntimeError("no license server")

    with pytest.raises(exc.RuntimeEnvSetupError, match="no license server"):
        mesh.get(report.options(runtime_env={"worker_process_setup_hook": broken}, max_retries=0).remote(),
                 timeout=30)
    with pytest.raises(exc.RuntimeEnvSetupError, match="no_such_module"):
        mesh.get(report.options(runtime_env={"worker_process_setup_hook": "no_such_module.setup"}).remote(),
                 timeout=30)
    with pytest.raises(ValueError, match="worker_process_setup_hook"):
        report.options(runtime_env={"worker_process_setup_hook": 42})


def test_the_hook_of_init_sets_up_every_worker_of_the_driver(tmp_path):
    code = f"""
import logging, os, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import meshcompute as mesh

def setup_logging():
    logging.basicConfig(format="HOOKED %(message)s", level=logging.INFO, force=True)

mesh.init(num_cpus=1, runtime_env={{"worker_process_setup_hook": setup_logging}})

@mesh.remote
def work():
    logging.getLogger("app").info("from the task")
    return logging.getLogger().handlers[0].formatter._fmt

print(mesh.get(work.remote()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "HOOKED %(message)s"
    assert "HOOKED from the task" in r.stderr  # the task's log line, shipped to the driver
