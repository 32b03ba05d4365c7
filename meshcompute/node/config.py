"""What a node has and how it is started: store capacity, GPUs, resource totals, the command line."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from typing import Any

import psutil

from ..host.proctitle import set_title
from ..host.sessions import clean_stale_sessions, keys_for_session, pid_alive, set_parent_death_signal
from ..store.spill import spill_dir_for
from ..wire import ids

DEFAULT_STORE_FRACTION = 0.3
"""Default store capacity as a share of RAM (or of a container's memory limit): Ray's default,
leaving 70% for the heaps of the driver and workers; also capped by /dev/shm's free space."""
PREFAULT_MAX = 512 << 20
"""At most this much of the arena is pre-allocated in the background (a quarter
of the capacity below 2 GiB); ``MESH_STORE_PREFAULT`` (bytes, 0 = off) overrides."""


def default_prefault(capacity: int) -> int:
    env = os.environ.get("MESH_STORE_PREFAULT")
    if env is not None:
        return max(0, min(int(env), capacity))
    return min(capacity // 4, PREFAULT_MAX)


WARM_POOL_MAX = 1 << 30
"""Bytes: at most this much freed arena memory stays resident for the next puts (the whole
capacity of a smaller store); the rest goes back to the kernel.  Within it the pool follows the
bytes allocated in the last 2 s (``store/pages.py``): a put into a kept page is a memcpy, into a
returned one ~4-8x slower (docs/store.md), so a put loop (or a store that spills and restores
objects) keeps its pages while an idle node keeps only the pre-allocated region.  The cap bounds
what a burst of puts leaves resident for those 2 s.  ``MESH_STORE_WARM_POOL`` (bytes) overrides;
0 keeps only the pre-allocated region."""


def default_warm_pool(capacity: int) -> int:
    env = os.environ.get("MESH_STORE_WARM_POOL")
    if env is not None:
        return max(0, min(int(env), capacity))
    return min(capacity, WARM_POOL_MAX)


WARM_POOL_LINGER_MAX = 256 << 20
"""Bytes: above the pre-allocated region, the warm pool keeps up to this much (a quarter of the
capacity of a smaller store) of what was allocated in the last 30 s, within its cap: work that
pauses between bursts (a pull every few seconds, a put loop with a pause) finds its pages
resident instead of zeroing fresh ones (a 256 MiB pull into fresh pages ran at two thirds of its
speed).  So for 30 s after a burst a node holds at most this much above idle.
``MESH_STORE_WARM_LINGER`` (bytes) overrides; 0 returns all but the region after 2 s."""


def default_warm_linger(capacity: int) -> int:
    env = os.environ.get("MESH_STORE_WARM_LINGER")
    if env is not None:
        return max(0, min(int(env), capacity))
    return min(capacity // 4, WARM_POOL_LINGER_MAX)


CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with a number near 2**63


def cgroup_limits(root: str = CGROUP_ROOT,
                  self_cgroup: str = "/proc/self/cgroup") -> tuple[float | None, int | None]:
    """The CPUs (quota / period) and the bytes of memory that this process's cgroup allows, None
    where it sets no limit or none can be read: the tightest of its cgroup and the cgroup's
    ancestors, in cgroup v2 (``cpu.max``, ``memory.max``) or v1 (``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, ``memory.limit_in_bytes``).  A container's limits (Kubernetes
    ``resources.limits``, ``docker run --cpus/--memory``) are these."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    cpus: float | None = None
    mem: int | None = None
    if os.path.exists(os.path.join(root, "cgroup.controllers")):  # v2: one hierarchy
        for d in _cgroup_dirs(root, paths.get("", "/")):
            cpus = _tighter(cpus, _cpu_v2(d))
            mem = _tighter(mem, _read_int(os.path.join(d, "memory.max")))
        return cpus, mem
    for base in (os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct")):
        for d in _cgroup_dirs(base, paths.get("cpu", "/")):
            quota = _read_int(os.path.join(d, "cpu.cfs_quota_us"))
            period = _read_int(os.path.join(d, "cpu.cfs_period_us"))
            if quota is not None and quota > 0 and period:
                cpus = _tighter(cpus, quota / period)
    for d in _cgroup_dirs(os.path.join(root, "memory"), paths.get("memory", "/")):
        limit = _read_int(os.path.join(d, "memory.limit_in_bytes"))
        mem = _tighter(mem, limit if limit is not None and limit < _UNLIMITED else None)
    return cpus, mem


def _cgroup_dirs(base: str, path: str) -> list[str]:
    """``base/path`` and its ancestors up to ``base`` that exist (in a container the mount is the
    container's own cgroup, and the path the kernel shows may be the host's)."""
    parts = [p for p in path.split("/") if p]
    dirs = [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None  # "max": no limit


def _cpu_v2(d: str) -> float | None:
    try:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        return int(quota) / int(period or 100000) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _tighter(a, b):
    return b if a is None else a if b is None else min(a, b)


def detect_cpus(limits: tuple[float | None, int | None] | None = None) -> float:
    """CPUs to offer by default: those this process may run on (affinity), at most its cgroup's
    CPU quota rounded down (at least 1: a pod limited to 2.5 CPUs runs 2 one-CPU tasks at once)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = (limits or cgroup_limits())[0]
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return float(n)


def memory_total(limits: tuple[float | None, int | None] | None = None) -> int:
    """This machine's RAM, or the cgroup's memory limit when that is lower (a container)."""
    total = psutil.virtual_memory().total
    limit = (limits or cgroup_limits())[1]
    return min(total, limit) if limit else total


def default_store_capacity() -> int:
    total = memory_total()
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


def gpu_count(num_gpus: int | None, in_resources: float | None) -> int:
    """The node's GPUs: ``--num-gpus``, else ``{"GPU": n}`` in its resources, else those detected.

    GPUs given either way are devices ``0..n-1`` whether or not the machine has them:
    work granted some gets ``CUDA_VISIBLE_DEVICES`` (and ``get_gpu_ids()``) from them."""
    if in_resources is not None:
        if isinstance(in_resources, bool) or not isinstance(in_resources, (int, float)) \
                or in_resources < 0 or in_resources != int(in_resources):
            raise ValueError(f"resources={{'GPU': {in_resources!r}}}: a node's GPUs are a whole number")
        if num_gpus is not None and num_gpus != int(in_resources):
            raise ValueError(f"the node is given {num_gpus} GPUs (num_gpus) and {in_resources:g} (resources): "
                             "give one of them")
        return int(in_resources)
    return num_gpus if num_gpus is not None else detect_gpus()


def node_resources(node_id: str, num_cpus: float, num_gpus: int, store_capacity: int,
                   custom: dict | None) -> dict[str, float]:
    """The node's resource totals: CPU, GPU, memory (RAM, or the container's memory limit, less
    the store), the store,
    custom resources, and the ``node:<id>`` marker that hard affinity asks for."""
    total: dict[str, float] = {"CPU": float(num_cpus)}
    if num_gpus:
        total["GPU"] = float(num_gpus)
    mem = memory_total()
    total["memory"] = float(max(0, mem - store_capacity))
    total["object_store_memory"] = float(store_capacity)
    for k, v in (custom or {}).items():
        total[k] = float(v)
    total[f"node:{node_id}"] = 1.0
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The daemon's command line (host/launcher.py builds it)."""
    p = argparse.ArgumentParser(prog="meshcompute-daemon")
    p.add_argument("--session", required=True)
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=int, default=None)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-memory", type=int, default=None)
    p.add_argument("--spill-dir", default=None,
                   help="directory for spill files (a per-node subdirectory is made in it); "
                        "default $MESH_SPILL_DIR, else <session dir>/spill")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--ready-fd", type=int, default=None)
    p.add_argument("--host", default=None, help="IP to serve the mesh on (no TCP without it)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    p.add_argument("--join", default="", help="comma-separated host:port of live members")
    p.add_argument("--standalone", action="store_true", help="started by `mesh start`/`mesh join`")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this TCP port (0: any free port; default: off)")
    p.add_argument("--gcs-voters", type=int, default=3, choices=(1, 3, 5, 7),
                   help="voters of the control store, when this node starts a new mesh")
    return p.parse_args(argv)


def main(daemon_class: Any, argv: list[str] | None = None) -> None:
    """Run a node daemon (``python -m meshcompute.node.daemon``): parse the command line,
    make the arena, fork the zygote, serve until SIGTERM or the parent's death, clean up."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent_pid:
        set_parent_death_signal(signal.SIGTERM)
        if not pid_alive(args.parent_pid):
            sys.exit(1)
    os.makedirs(os.path.join(args.session, "logs"), exist_ok=True)
    clean_stale_sessions()
    num_cpus = args.num_cpus if args.num_cpus is not None else detect_cpus()
    custom = json.loads(args.resources)
    try:
        num_gpus = gpu_count(args.num_gpus, custom.pop("GPU", None))
    except ValueError as e:
        sys.exit(str(e))
    capacity = args.object_store_memory or default_store_capacity()
    keys = keys_for_session(args.session)
    if args.host and keys is None:
        sys.exit("refusing to serve TCP without the mesh token in the session dir")
    spill_dir = spill_dir_for(args.session, args.spill_dir or os.environ.get("MESH_SPILL_DIR") or None)
    node_id = ids.random_id()
    set_title("mesh-daemon", f"{node_id[:8]} {args.host or 'embedded'}")
    d = daemon_class(args.session, num_cpus, num_gpus, custom, capacity,
               args.parent_pid, node_id, spill_dir, host=args.host, port=args.port, keys=keys,
               gcs_voters=args.gcs_voters)
    d.standalone = args.standalone
    d.metrics_port = args.metrics_port  # node/metrics.py
    d.seeds = [a.strip() for a in args.join.split(",") if a.strip()]

    def _term(signum, frame):
        d.stop_requests += 1  # the loop drains, then stops (Daemon._stop_requested)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    failure_fd = None
    try:
        d.create_arena()
        d.start_zygote()
        # A copy of the ready pipe, taken after the zygote's fork so no worker holds it:
        # a node that fails before it serves says why there (its log goes with its
        # session dir, which stop() removes).
        failure_fd = os.dup(args.ready_fd) if args.ready_fd is not None else None
        d.serve(args.ready_fd)
    except Exception as e:
        if failure_fd is not None and not os.path.exists(os.path.join(args.session, "daemon.json")):
            _report_failure(failure_fd, e)
        raise
    finally:
        if failure_fd is not None:
            os.close(failure_fd)
        d.stop()


def _report_failure(fd: int, error: Exception) -> None:
    try:
        os.write(fd, (json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n").encode())
    except OSError:
        pass
