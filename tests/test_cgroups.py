"""A node's default CPUs and memory follow its container's cgroup limits (v2 and v1),
read from a cgroup tree made in a temporary directory; and a real node started with
those defaults offers what this machine's cgroup allows."""

from __future__ import annotations

import os

import psutil
import pytest

from meshcompute.node.config import cgroup_limits, detect_cpus, memory_total, node_resources

GiB = 1 << 30


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_v2_limits_of_the_cgroup_and_its_ancestors(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "kubepods" / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "memory.max", str(6 * GiB))
    _write(root / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")  # 2.5 CPUs
    _write(root / "kubepods" / "pod1" / "memory.max", "max\n")  # the parent's 6 GiB applies
    _write(tmp_path / "self", "0::/kubepods/pod1\n")
    assert cgroup_limits(str(root), str(tmp_path / "self")) == (2.5, 6 * GiB)
    # Inside a container (cgroup namespace) the process sees itself at "/" of its own mount.
    _write(tmp_path / "ns-root" / "cgroup.controllers", "cpu memory\n")
    _write(tmp_path / "ns-root" / "cpu.max", "50000 100000\n")
    _write(tmp_path / "ns-root" / "memory.max", str(GiB))
    _write(tmp_path / "self-ns", "0::/\n")
    assert cgroup_limits(str(tmp_path / "ns-root"), str(tmp_path / "self-ns")) == (0.5, GiB)


def test_v1_limits_and_no_limits(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    _write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(3 * GiB))
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    _write(tmp_path / "self", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n")
    assert cgroup_limits(str(root), str(tmp_path / "self")) == (3.0, 3 * GiB)
    # A quota of -1 and the unlimited number: no limits.
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_limits(str(root), str(tmp_path / "self")) == (None, None)
    # No cgroup file at all (not Linux, or hidden): no limits, never an error.
    assert cgroup_limits(str(root), str(tmp_path / "missing")) == (None, None)


def test_defaults_take_the_tighter_of_the_machine_and_the_cgroup():
    cpus = len(os.sched_getaffinity(0))
    ram = psutil.virtual_memory().total
    assert detect_cpus((None, None)) == cpus
    assert detect_cpus((2.5, None)) == min(cpus, 2)  # whole CPUs, rounded down
    assert detect_cpus((0.25, None)) == 1  # never none
    assert memory_total((None, 2 * GiB)) == min(ram, 2 * GiB)
    assert memory_total((None, None)) == ram
    res = node_resources("n1", 2, 0, 256 << 20, None)
    assert res["memory"] == memory_total() - (256 << 20)


@pytest.mark.timeout(60)
def test_a_node_started_without_figures_offers_what_the_cgroup_allows():
    import meshcompute as mesh

    if mesh.is_initialized():
        mesh.shutdown()
    mesh.init(object_store_memory=64 << 20)
    try:
        total = mesh.cluster_resources()
        assert total["CPU"] == detect_cpus()
        assert total["memory"] == memory_total() - (64 << 20)
    finally:
        mesh.shutdown()
