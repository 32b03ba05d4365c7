"""meshcompute.experimental.tqdm_ray: bars in tasks and actors, shown by the driver."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from meshcompute.observe.progress_lines import MAGIC, decode, encode, render

pytestmark = pytest.mark.timeout(120)

DRIVER = r"""
import time
import meshcompute as ray
from meshcompute.experimental.tqdm_ray import tqdm

ray.init(num_cpus=2)

@ray.remote
def rows(n):
    total = 0
    for i in tqdm(range(n), desc="rows", flush_interval_s=0):
        total += i
    return total

@ray.remote
class Loader:
    def load(self):
        bar = tqdm(total=3, desc="files", unit="file")
        for _ in range(3):
            time.sleep(0.05)
            bar.update(1)
        bar.close()
        return "loaded"

assert ray.get(rows.remote(4)) == 6
assert ray.get(Loader.remote().load.remote()) == "loaded"
with tqdm(total=2, desc="driver") as bar:
    bar.update(2)
time.sleep(0.3)
print("done")
"""


def test_bars_in_tasks_and_actors_reach_the_driver_as_lines():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=90, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stdout + r.stderr
    err = r.stderr
    assert MAGIC not in err, err
    prefix = r"\((rows|Loader) pid=\d+, node=[0-9a-f]{8}\) "
    assert re.search(prefix + r"rows:   0%\|          \| 0/4 \[00:00<\?, \?it/s\]", err), err
    assert len(re.findall(r"rows: 100%", err)) == 1, err  # closing repeats nothing
    assert re.search(prefix + r"rows: 100%\|██████████\| 4/4 \[\d\d:\d\d<00:00, [\d.]+it/s\]", err), err
    assert re.search(prefix + r"files: 100%\|██████████\| 3/3 \[.*file/s\]", err), err
    assert re.search(r"^driver: 100%\|██████████\| 2/2 ", err, re.M), err


def test_the_line_format():
    state = {"desc": "x", "n": 40, "total": 100, "unit": "it", "start": 100.0}
    assert render(state, now=102.0) == "x:  40%|████      | 40/100 [00:02<00:03, 20.00it/s]"
    assert render(dict(state, t=102.0)) == render(state, now=102.0)  # as of the report
    assert render(dict(state, total=None), now=102.0) == "x: 40it [00:02, 20.00it/s]"
    assert render(dict(state, n=0), now=100.0) == "x:   0%|          | 0/100 [00:00<?, ?it/s]"
    assert decode(encode(state)) == state and decode("plain text") is None and decode(MAGIC + "{bad") is None
