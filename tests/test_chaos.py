"""The chaos scenarios of scripts/chaos.py, on three hosts in network namespaces.

Two small ones run in the default suite; all of them, full size, with ``-m chaos``
(their figures are in docs/reliability.md).  Needs root and ``ip netns``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshcompute.testing.netns import netns_unavailable_reason

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "chaos.py")

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())),
]


def _run(scenario: str, quick: bool, timeout: float) -> dict:
    argv = [sys.executable, SCRIPT, scenario] + (["--quick"] if quick else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{") and '"scenario"' in ln]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["ok"], result
    assert proc.returncode == 0
    return result


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", ["worker_kills", "driver_kill"])
def test_quick_chaos(scenario):
    result = _run(scenario, quick=True, timeout=170)
    if scenario == "worker_kills":
        assert result["workers_killed"] > 0  # it did break something


@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["worker_kills", "node_kill", "driver_kill", "cut_heal", "leader_kill",
                                      "cpu_saturate"])
def test_chaos(scenario):
    _run(scenario, quick=False, timeout=880)
