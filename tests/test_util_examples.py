"""Ray's util documentation examples (multiprocessing, joblib, queue, futures) run after
changing the import: each script starts its own node, checks its results, prints OK."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")


def _run(name: str) -> None:
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


@pytest.mark.timeout(180)
def test_multiprocessing_pool_example():
    _run("ray_util_multiprocessing.py")


@pytest.mark.timeout(180)
def test_futures_executor_example():
    _run("ray_util_futures.py")


@pytest.mark.timeout(180)
def test_queue_example():
    _run("ray_util_queue.py")


@pytest.mark.timeout(180)
def test_joblib_example():
    pytest.importorskip("sklearn")
    _run("ray_util_joblib.py")
