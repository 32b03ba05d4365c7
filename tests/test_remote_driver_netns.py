"""A driver on a host that runs no node, and jobs submitted from it, over real addresses.

Three hosts (network namespaces on a bridge) form a mesh; a fourth runs no node: its
driver connects with ``init("HOST:PORT")`` and the mesh's token, and uses tasks,
actors, puts and gets; a job submitted from it with a working dir ends SUCCEEDED
with its logs, a failing one FAILED, a stopped one STOPPED; a wrong token fails
fast.  The fourth host keeps its own sessions directory, as another machine would.
Needs root and ``ip netns``; marked ``netns`` and ``slow`` (about a minute: run it with
``pytest -m slow``; tests/test_jobs.py covers the same on loopback in the default suite).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import time

import pytest

from meshcompute.testing.netns import TestBed, netns_unavailable_reason
from meshcompute.wire.auth import generate_token

from .test_mesh_netns import _stop_bed_nodes

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())),
    pytest.mark.timeout(300),
]

PORT = 7781
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import meshcompute as mesh

    t = time.time()
    mesh.init(sys.argv[1])
    joined = time.time() - t

    @mesh.remote
    def where(x):
        return mesh.get_runtime_context().get_node_id(), float(np.asarray(x).sum())

    @mesh.remote
    class Counter:
        def __init__(self):
            self.n = 0
        def add(self, k):
            self.n += k
            return self.n

    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: through the stores
    ref = mesh.put(arr)
    got = mesh.get([where.remote(ref) for _ in range(30)], timeout=120)
    c = Counter.remote()
    mesh.get([c.add.remote(1) for _ in range(10)], timeout=60)
    me = mesh.get_runtime_context().get_node_id()
    nodes = [n for n in mesh.nodes() if n["Alive"]]
    print(json.dumps({"joined_s": joined, "ran_on": sorted({n for n, _ in got}), "sums_ok": all(s == arr.sum() for _, s in got),
                      "count": mesh.get(c.add.remote(0)), "me": me, "cpus": mesh.cluster_resources().get("CPU"),
                      "nodes": len(nodes)}), flush=True)
    mesh.shutdown()
""")


def _cli(bed, i, *args, env=None, timeout=90):
    return bed.exec(i, [sys.executable, "-m", "meshcompute.cli", *args], timeout=timeout, cwd=REPO, env=env)


def test_a_driver_and_jobs_from_a_host_without_a_node():
    token = generate_token()
    elsewhere_root = tempfile.mkdtemp(prefix="mesh-elsewhere-")
    with TestBed(4, prefix="mtdrv") as bed:
        try:
            entry = f"{bed.address(1)}:{PORT}"
            common = ["--port", str(PORT), "--num-cpus", "1", "--token", token, "--object-store-memory", str(128 << 20)]
            out = _cli(bed, 1, "start", "--host", bed.address(1), *common)
            assert out.returncode == 0, out.stdout + out.stderr
            for i in (2, 3):
                out = _cli(bed, i, "join", entry, "--host", bed.address(i), *common)
                assert out.returncode == 0, out.stdout + out.stderr

            env4 = dict(os.environ, MESH_TOKEN=token, MESH_SESSIONS_ROOT=elsewhere_root)
            drv = bed.exec(4, [sys.executable, "-c", DRIVER, entry], timeout=180, cwd=REPO, env=env4)
            assert drv.returncode == 0, drv.stdout[-2000:] + drv.stderr[-3000:]
            result = json.loads(drv.stdout.strip().splitlines()[-1])
            assert result["sums_ok"] and result["count"] == 10 and result["nodes"] == 4, result
            assert result["me"] not in result["ran_on"] and len(result["ran_on"]) >= 2, result  # 0 CPUs here
            assert result["cpus"] == 3, result
            assert os.listdir(elsewhere_root) == [], os.listdir(elsewhere_root)  # its node left with it
            print(f"driver on host 4 joined in {result['joined_s']:.2f} s")

            # Jobs from host 4: a working dir, its own module, its runtime_env.
            wd = tempfile.mkdtemp(prefix="mesh-jobwd-")
            with open(os.path.join(wd, "helper.py"), "w") as f:
                f.write("def greet():\n    return 'hello from helper'\n")
            with open(os.path.join(wd, "main.py"), "w") as f:
                f.write(textwrap.dedent("""
                    import os, helper
                    import meshcompute as mesh
                    mesh.init()
                    @mesh.remote
                    def shout():
                        import helper
                        return helper.greet().upper() + " " + os.environ["MOOD"]
                    print(helper.greet(), mesh.get(shout.remote()))
                """))
            renv = json.dumps({"env_vars": {"MOOD": "calm"}})
            ok = _cli(bed, 4, "job", "submit", "--address", entry, "--working-dir", wd, "--runtime-env-json", renv,
                      "--submission-id", "ok-1", "--", "python", "main.py", env=env4, timeout=150)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert "hello from helper HELLO FROM HELPER calm" in ok.stdout, ok.stdout
            bad = _cli(bed, 4, "job", "submit", "--address", entry, "--submission-id", "bad-1", "--",
                       "python", "-c", "raise SystemExit(5)", env=env4, timeout=90)
            assert bad.returncode != 0
            long = _cli(bed, 4, "job", "submit", "--address", entry, "--submission-id", "long-1", "--no-wait", "--",
                        "sleep", "300", env=env4)
            assert long.returncode == 0, long.stdout + long.stderr
            stop = _cli(bed, 4, "job", "stop", "long-1", "--address", f"{bed.address(2)}:{PORT}", env=env4)
            assert stop.returncode == 0, stop.stdout + stop.stderr
            listed = _cli(bed, 4, "job", "list", "--json", "--address", f"{bed.address(3)}:{PORT}", env=env4)
            assert listed.returncode == 0, listed.stdout + listed.stderr
            statuses = {j["submission_id"]: str(j["status"]) for j in json.loads(listed.stdout)}
            assert statuses == {"ok-1": "SUCCEEDED", "bad-1": "FAILED", "long-1": "STOPPED"}, statuses
            logs = _cli(bed, 4, "job", "logs", "ok-1", "--address", entry, env=env4)
            assert "hello from helper" in logs.stdout, logs.stdout + logs.stderr

            # A wrong token fails fast, saying so.
            t = time.monotonic()
            wrong = bed.exec(4, [sys.executable, "-c", f"import meshcompute as m; m.init({entry!r})"], timeout=60,
                             cwd=REPO, env=dict(env4, MESH_TOKEN=generate_token()))
            assert wrong.returncode != 0 and "token" in wrong.stderr.lower(), wrong.stderr[-2000:]
            assert time.monotonic() - t < 20
        finally:
            _stop_bed_nodes()
            import shutil

            shutil.rmtree(elsewhere_root, ignore_errors=True)
