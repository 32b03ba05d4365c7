"""Ray Core documentation examples run unchanged after changing the import."""

from __future__ import annotations

import os
import subprocess
import sys


def test_ray_core_doc_examples_run_after_changing_the_import():
    script = os.path.join(os.path.dirname(__file__), "examples", "ray_core_docs.py")
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_ray_core_doc_examples_of_the_rest_of_the_surface_run_after_changing_the_import():
    script = os.path.join(os.path.dirname(__file__), "examples", "ray_core_surface.py")
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_ray_generator_and_runtime_env_doc_examples_run_after_changing_the_import():
    script = os.path.join(os.path.dirname(__file__), "examples", "ray_generators_runtime_env.py")
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
