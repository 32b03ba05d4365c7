"""What a node has: its store capacity, its GPUs, its resource totals (from flags and the host)."""

from __future__ import annotations

import os

import psutil

DEFAULT_STORE_FRACTION = 0.3
"""Default store capacity as a share of RAM: Ray's default, leaving 70% for the
heaps of the driver and workers; also capped by /dev/shm's free space."""
PREFAULT_MAX = 512 << 20
"""At most this much of the arena is pre-allocated in the background (a quarter
of the capacity below 2 GiB); ``MESH_STORE_PREFAULT`` (bytes, 0 = off) overrides."""


def default_prefault(capacity: int) -> int:
    env = os.environ.get("MESH_STORE_PREFAULT")
    if env is not None:
        return max(0, min(int(env), capacity))
    return min(capacity // 4, PREFAULT_MAX)


def default_store_capacity() -> int:
    total = psutil.virtual_memory().total
    try:
        st = os.statvfs("/dev/shm")
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = total
    return int(min(total * DEFAULT_STORE_FRACTION, shm_free * 0.9))


def detect_gpus() -> int:
    """Count NVIDIA GPUs from their device nodes (cheap; no driver library needed)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    try:
        return len([n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()])
    except OSError:
        return 0


def node_resources(node_id: str, num_cpus: float, num_gpus: int, store_capacity: int,
                   custom: dict | None) -> dict[str, float]:
    """The node's resource totals: CPU, GPU, memory (RAM less the store), the store,
    custom resources, and the ``node:<id>`` marker that hard affinity asks for."""
    total: dict[str, float] = {"CPU": float(num_cpus)}
    if num_gpus:
        total["GPU"] = float(num_gpus)
    mem = psutil.virtual_memory().total
    total["memory"] = float(max(0, mem - store_capacity))
    total["object_store_memory"] = float(store_capacity)
    for k, v in (custom or {}).items():
        total[k] = float(v)
    total[f"node:{node_id}"] = 1.0
    return total
