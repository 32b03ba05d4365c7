"""Object chunks do not hold up gossip: hosts with their own IPs on links shaped to
200 Mbit/s, one object read at once by tasks on four other hosts.

Before chunks had connections of their own (node/bulk.py), the holder's gossip
answers queued behind the chunks it sent and its peers declared it dead within
seconds; the reads then failed (OwnerDiedError: the driver was on the holder).
Here every read must succeed and no daemon may declare any peer dead.

Suspicions are counted and printed, not asserted: on a machine whose CPUs are
shared (2 cores, load 7) an idle bed of five daemons logs several a minute when a
loop is not scheduled for 200 ms, with no data moving at all; they say nothing
about the data path there.  Needs root, ``ip netns`` and ``tc``; skipped otherwise.
The 256 MiB version is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import pytest

from meshcompute.testing.netns import TestBed, netns_unavailable_reason
from meshcompute.wire.auth import generate_token

from .conftest import wait_for
from .test_mesh_netns import _mesh, _node_infos, _status, _stop_bed_nodes

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())),
    pytest.mark.skipif(shutil.which("tc") is None, reason="the `tc` command is not installed"),
]

PORT = 7777
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK_MBIT = 200

DRIVER = textwrap.dedent("""
    import hashlib, json, sys, time
    import numpy as np
    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mesh.init(address=sys.argv[1])
    readers = sys.argv[3].split(",")

    def on(node):
        return NodeAffinitySchedulingStrategy(node, soft=False)

    @mesh.remote
    def ping():
        return mesh.get_runtime_context().get_node_id()

    @mesh.remote
    def digest(arr):
        return hashlib.sha256(arr.tobytes()).hexdigest(), mesh.get_runtime_context().get_node_id()

    # A worker up on every reader's host first, so that the reads start together.
    assert sorted(mesh.get([ping.options(scheduling_strategy=on(n)).remote() for n in readers],
                           timeout=120)) == sorted(readers)
    arr = np.random.default_rng(5).integers(0, 2**62, size=int(sys.argv[2]) // 8, dtype=np.int64)
    want = hashlib.sha256(arr.tobytes()).hexdigest()
    ref = mesh.put(arr)
    print("reading", flush=True)
    t = time.time()
    got = mesh.get([digest.options(scheduling_strategy=on(n)).remote(ref) for n in readers], timeout=300)
    print(json.dumps({"ok": all(g == want for g, _ in got), "on": sorted(n for _, n in got),
                      "seconds": time.time() - t}), flush=True)
    mesh.shutdown()
""")


def _membership(info: dict, since: int, kind: str) -> list[str]:
    """Lines of a daemon's log from byte ``since`` on where it marked a peer ``kind``."""
    with open(os.path.join(info["session_dir"], "logs", "daemon.log"), errors="replace") as f:
        f.seek(since)
        return [line.strip() for line in f if f"membership: {kind} " in line]


def _log_size(info: dict) -> int:
    return os.path.getsize(os.path.join(info["session_dir"], "logs", "daemon.log"))


@pytest.mark.parametrize("mib", [
    pytest.param(32, marks=pytest.mark.timeout(240)),
    pytest.param(256, marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
])
def test_one_object_read_by_four_hosts_on_slow_links_loses_no_node(mib):
    token = generate_token()
    with TestBed(5, prefix="mtbulk") as bed:
        try:
            for i in bed.hosts:
                bed.shape(i, LINK_MBIT)
            addrs = {i: f"{bed.address(i)}:{PORT}" for i in bed.hosts}
            common = ["--port", str(PORT), "--num-cpus", "1", "--token", token,
                      "--object-store-memory", str((mib + 64) << 20)]
            out = _mesh(bed, 1, "start", "--host", bed.address(1), *common)
            assert out.returncode == 0, out.stdout + out.stderr
            for i in bed.hosts[1:]:
                out = _mesh(bed, i, "join", addrs[1], "--host", bed.address(i), *common)
                assert out.returncode == 0, out.stdout + out.stderr
            infos = {i: next(n for n in _node_infos() if n["host"] == bed.address(i)) for i in bed.hosts}
            assert wait_for(lambda: len([n for n in _status(bed, 1, addrs[1]).values() if n["state"] == "alive"]) == 5,
                            timeout=30)
            since = {i: _log_size(infos[i]) for i in bed.hosts}
            readers = [infos[i]["node_id"] for i in bed.hosts[1:]]
            drv = bed.exec(1, [sys.executable, "-c", DRIVER, addrs[1], str(mib << 20), ",".join(readers)],
                           timeout=500, cwd=REPO)
            dead = {i: _membership(infos[i], since[i], "dead") for i in bed.hosts}
            suspected = sum(len(_membership(infos[i], since[i], "suspect")) for i in bed.hosts)
            assert drv.returncode == 0, drv.stdout[-2000:] + drv.stderr[-3000:]
            result = json.loads(drv.stdout.strip().splitlines()[-1])
            print(f"{mib} MiB read on 4 hosts at {LINK_MBIT} Mbit/s in {result['seconds']:.1f} s; "
                  f"{suspected} suspicion events logged meanwhile (all refuted)")
            assert result["ok"] and result["on"] == sorted(readers), result
            assert not any(dead.values()), dead
            # The chunks came over the bulk channel, none was refused there.
            for i in bed.hosts:
                dropped = _node_info(bed, i, addrs[i])["dropped"]
                assert not [k for k in dropped if "bulk" in k], dropped
        finally:
            _stop_bed_nodes()


def _node_info(bed, i: int, addr: str) -> dict:
    out = _mesh(bed, i, "status", "--json", "--address", addr)
    assert out.returncode == 0, out.stdout + out.stderr
    return next(n for n in json.loads(out.stdout)["nodes"] if n.get("dropped") is not None)
