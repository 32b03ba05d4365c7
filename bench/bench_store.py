"""Object store benchmark: put bandwidth against memcpy (and Ray), and scale.

    python bench/bench_store.py             # everything (Ray too when `import ray` works)
    python bench/bench_store.py --no-ray
    python bench/bench_store.py --only put  # or: physics, scale, spill
    python bench/bench_store.py --json out.json

Each part runs in a fresh subprocess.  Every bandwidth is printed next to a
memcpy of the same 100 MiB measured in the same process, interleaved with the
puts, because on a shared VM memcpy itself moves by 2x from minute to minute:
the ratio is the figure to compare.

Put cases (100 MiB numpy array, refs held so that each put takes a new block):
  * fresh, pre-allocated: a block in the arena's warm region, whose tmpfs pages
    the daemon allocated in the background, but that this process never mapped;
  * fresh, untouched: pages nobody touched yet (beyond the warm region);
  * reused: a block freed by an earlier put of this process (the steady state
    of a loop that puts and drops arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench.py's helpers
from bench import run_part  # noqa: E402

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _memcpy_gbps(src, dst) -> float:
    import numpy as np

    t = time.perf_counter()
    np.copyto(dst, src)
    return src.nbytes / (time.perf_counter() - t) / 1e9


def _med(xs) -> float:
    return round(statistics.median(xs), 2) if xs else float("nan")


def _daemon_process():
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            if "meshcompute.node.daemon" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            pass
    return None


# --------------------------------------------------------------- put (mesh)


def part_put_mesh(quick: bool) -> dict:
    import gc

    import numpy as np

    import meshcompute as mesh

    # 2 GiB store: the daemon pre-allocates the first 512 MiB in the background.
    mesh.init("local", num_cpus=1, object_store_memory=2 << 30)
    big = np.random.default_rng(0).random(100 * MiB // 8)
    dst = np.empty_like(big)
    np.copyto(dst, big)
    # Let the warm-up finish: about 0.3 s of work, at the lowest CPU priority.
    deadline = time.time() + 60
    while mesh.nodes()[0]["ObjectStore"]["prefaulted_bytes"] < 512 * MiB and time.time() < deadline:
        time.sleep(0.1)
    memcpy, warm, cold = [], [], []
    held = []
    for i in range(9):
        memcpy.append(_memcpy_gbps(big, dst))
        t = time.perf_counter()
        held.append(mesh.put(big))
        gbps = big.nbytes / (time.perf_counter() - t) / 1e9
        # Blocks 0-3 lie in the warm region [0, 512 MiB); 4 straddles its end.
        (warm if i < 4 else cold if i > 4 else []).append(gbps)
    del held
    gc.collect()
    time.sleep(1.0)  # the writer maps the blocks it wrote in the background
    reused = []
    for _ in range(5 if quick else 9):
        memcpy.append(_memcpy_gbps(big, dst))
        t = time.perf_counter()
        ref = mesh.put(big)
        reused.append(big.nbytes / (time.perf_counter() - t) / 1e9)
        del ref
    mesh.shutdown()
    return {"memcpy": _med(memcpy), "fresh_prealloc": _med(warm), "fresh_untouched": _med(cold),
            "reused": _med(reused), "reused_all": [round(x, 2) for x in reused]}


# ------------------------------------------------------- put of fresh arrays


def _arena_allocated(core) -> int:
    """Bytes of tmpfs pages the arena file holds (what the store keeps resident)."""
    return os.fstat(core.store.fd).st_blocks * 512


def part_fresh(quick: bool) -> dict:
    """A new 100 MiB array each put, as a loop that produces and stores results does.

    Baseline: numpy's own copy into fresh memory (``np.empty_like`` + ``copyto``,
    which gets transparent huge pages where the host allows), timed in the same
    process right before each put.  Two loops: the ref dropped after each put
    (the store reuses warm blocks) and refs held (each put takes a new block).
    Then the arena's allocated bytes after everything was freed: what the node
    keeps resident when idle.
    """
    import gc

    import numpy as np

    import meshcompute as mesh
    from meshcompute.owner import context

    mesh.init("local", num_cpus=1, object_store_memory=2 << 30)
    core = context.core
    rng = np.random.default_rng(0)
    n = 100 * MiB // 8
    # Idle: once the daemon pre-allocated its warm region (512 MiB of this 2 GiB store).
    deadline = time.time() + 60
    while mesh.nodes()[0]["ObjectStore"]["prefaulted_bytes"] < 512 * MiB and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    idle = _arena_allocated(core)
    rounds = 6 if quick else 12

    def fresh_copy_then_put(a: np.ndarray) -> tuple:
        """GB/s of numpy's copy of ``a`` into fresh memory, then of its put; and the ref."""
        t = time.perf_counter()
        d = np.empty_like(a)
        np.copyto(d, a)
        copy = a.nbytes / (time.perf_counter() - t) / 1e9
        del d
        t = time.perf_counter()
        ref = mesh.put(a)
        return copy, a.nbytes / (time.perf_counter() - t) / 1e9, ref

    memcpy, dropped = [], []
    for _ in range(rounds):
        copy, put, ref = fresh_copy_then_put(rng.random(n))
        memcpy.append(copy)
        dropped.append(put)
        del ref
    held, held_memcpy, refs = [], [], []
    for _ in range(6):
        copy, put, ref = fresh_copy_then_put(rng.random(n))
        held_memcpy.append(copy)
        held.append(put)
        refs.append(ref)
    del ref
    peak = _arena_allocated(core)
    del refs
    gc.collect()
    # Until back at idle (the warm pool keeps part of a burst for 30 s): (seconds, bytes) at each change.
    t0 = time.perf_counter()
    after: list = []
    while time.perf_counter() - t0 < 45:
        time.sleep(0.5)
        now = _arena_allocated(core)
        if not after or now != after[-1][1]:
            after.append((time.perf_counter() - t0, now))
        if now <= idle:
            break
    mesh.shutdown()
    med = _med(memcpy)
    return {"memcpy_fresh": med, "put_dropped": _med(dropped), "put_dropped_ratio": round(_med(dropped) / med, 2),
            "put_dropped_all": [round(x, 2) for x in dropped], "memcpy_fresh_all": [round(x, 2) for x in memcpy],
            "memcpy_fresh_held": _med(held_memcpy), "put_held": _med(held),
            "put_held_all": [round(x, 2) for x in held], "memcpy_fresh_held_all": [round(x, 2) for x in held_memcpy],
            "put_held_ratio": round(_med(held) / _med(held_memcpy), 2),
            "arena_idle_mib": round(idle / MiB), "arena_peak_mib": round(peak / MiB),
            "arena_after_free_mib": [(round(t, 1), round(x / MiB)) for t, x in after]}


# ------------------------------------------------------------------ physics


def part_physics(quick: bool) -> dict:
    """What writing 100 MiB into a tmpfs file costs, by method and page state.

    Ratios to a memcpy measured right before each case (medians of 5 rounds), in
    CPU time of the thread (user + system), so that other load on the machine
    does not count; this is the cost, not the wall time a put takes.
    """
    import mmap

    import numpy as np

    from meshcompute.store.shm import mapping_address, populate_write

    n = 100 * MiB
    src = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    path = f"/dev/shm/meshcompute_bench_{os.getpid()}"

    def case(pages: str, how: str) -> float:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, n)
            if pages in ("allocated", "mapped"):
                os.posix_fallocate(fd, 0, n)
            mm = mmap.mmap(fd, n)
            arr = np.frombuffer(mm, np.uint8)
            if pages == "mapped":
                arr[:] = 0
            t = time.thread_time()
            if how == "mmap":
                arr[:] = src
            elif how == "populate+mmap":
                populate_write(mapping_address(mm), 0, n)
                arr[:] = src
            else:
                os.pwritev(fd, [memoryview(src)], 0)
            dt = time.thread_time() - t
            del arr
            mm.close()
            return dt
        finally:
            os.close(fd)
            os.unlink(path)

    cases = [("untouched", "mmap"), ("untouched", "pwritev"), ("allocated", "mmap"),
             ("allocated", "populate+mmap"), ("allocated", "pwritev"), ("mapped", "mmap"), ("mapped", "pwritev")]
    ratios: dict = {c: [] for c in cases}
    memcpy = []
    for _ in range(3 if quick else 5):
        for c in cases:
            t = time.thread_time()
            np.copyto(dst, src)
            m = time.thread_time() - t
            memcpy.append(n / m / 1e9)
            ratios[c].append(m / case(*c))
    return {"memcpy": _med(memcpy), **{f"{p} pages, {h}": _med(r) for (p, h), r in ratios.items()}}


# ------------------------------------------------------------------ options


def part_options(quick: bool) -> dict:
    """Ways of writing 100 MiB into a tmpfs file, next to numpy's copy into fresh memory.

    Wall time in one process, medians of several rounds (``GB/s`` and the ratio to
    ``np.copyto(np.empty_like(a), a)``).  Shows what a put of fresh data can reach
    by each route: pages punched (what the warm pool returned), allocated but not
    mapped, or mapped; ``pwritev`` from one or two threads; ``MADV_HUGEPAGE`` on
    the mapping; ``MADV_POPULATE_WRITE``; hole punching itself.  Also whether
    ``memfd_create(MFD_HUGETLB)`` works on this host.
    """
    import mmap
    import threading

    import numpy as np

    from meshcompute.store.layout import write_object_behind
    from meshcompute.store.pages import punch_hole
    from meshcompute.store.shm import (
        PUT_CHUNK,
        PopulatedRanges,
        Prefaulter,
        mapping_address,
        populate,
        populate_write,
        unmap_pages,
    )

    n = 100 * MiB
    src = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    path = f"/dev/shm/meshcompute_bench_{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.unlink(path)
    os.ftruncate(fd, n)
    mm = mmap.mmap(fd, n)
    base = mapping_address(mm)
    view = [np.frombuffer(mm, np.uint8)]  # released before the mapping closes
    times: dict = {}

    def timed(name, fn, before=None):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.setdefault(name, []).append(n / (time.perf_counter() - t) / 1e9)

    def punch():
        punch_hole(fd, 0, n)

    def allocate():
        punch()
        os.posix_fallocate(fd, 0, n)

    def fresh_copy():
        d = np.empty_like(src)
        np.copyto(d, src)

    def pwritev_threads(k):
        part = n // k
        ts = [threading.Thread(target=os.pwritev, args=(fd, [memoryview(src)[i * part:(i + 1) * part]], i * part))
              for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def write_mapping():
        view[0][:] = src

    def written_unmapped():
        # What the daemon's warm region and warm pool hold: pages written once, not in this page table.
        allocate()
        populate(base, 0, n)
        unmap_pages(base, 0, n)

    populator = Prefaulter(base, PopulatedRanges(n), idle_unmap_s=None)

    def copy_behind_populating():
        job = populator.populate_now(0, n)
        # (the object: a header and one buffer, 4 KiB short of the 100 MiB for it)
        assert write_object_behind(memoryview(mm), b"", [memoryview(src)[: n - 4096]], False, job.wait, PUT_CHUNK)

    for _ in range(3 if quick else 5):
        timed("numpy copy into fresh memory", fresh_copy)
        timed("memcpy through a mapping, punched pages", write_mapping, punch)
        timed("memcpy through a mapping, mapped pages", write_mapping)
        timed("memcpy through a mapping, allocated pages", write_mapping, allocate)
        timed("memcpy, punched pages, MADV_HUGEPAGE", write_mapping,
              lambda: (punch(), mm.madvise(mmap.MADV_HUGEPAGE)))
        timed("pwritev, punched pages", lambda: os.pwritev(fd, [memoryview(src)], 0), punch)
        timed("pwritev, allocated pages", lambda: os.pwritev(fd, [memoryview(src)], 0), allocate)
        timed("pwritev 2 threads, punched pages", lambda: pwritev_threads(2), punch)
        timed("pwritev 2 threads, allocated pages", lambda: pwritev_threads(2), allocate)
        timed("MADV_POPULATE_WRITE alone, punched pages", lambda: populate_write(base, 0, n), punch)
        timed("pwritev, written pages", lambda: os.pwritev(fd, [memoryview(src)], 0), written_unmapped)
        timed("MADV_POPULATE_READ alone, written pages", lambda: populate(base, 0, n), written_unmapped)
        timed("MADV_POPULATE_READ, then memcpy, written pages", lambda: (populate(base, 0, n), write_mapping()),
              written_unmapped)
        timed("memcpy behind a thread populating, written pages", copy_behind_populating, written_unmapped)
        timed("fallocate alone", lambda: os.posix_fallocate(fd, 0, n), punch)
        timed("punching alone", punch)
    populator.close()
    view.clear()
    mm.close()
    os.close(fd)
    try:
        mfd = os.memfd_create("meshcompute_bench", os.MFD_HUGETLB)
        try:
            os.ftruncate(mfd, 2 * MiB)
            m2 = mmap.mmap(mfd, 2 * MiB)
            m2[:1] = b"x"
            m2.close()
            hugetlb = "works"
        finally:
            os.close(mfd)
    except (OSError, AttributeError) as e:
        hugetlb = f"fails: {e}"
    ref = statistics.median(times["numpy copy into fresh memory"])
    out: dict = {"memfd MFD_HUGETLB": hugetlb}
    for name, xs in times.items():
        out[name] = {"gbps": _med(xs), "min": round(min(xs), 2), "max": round(max(xs), 2),
                     "ratio": round(statistics.median(xs) / ref, 2)}
    return out


# ---------------------------------------------------------------- put (Ray)


def part_put_ray(quick: bool) -> dict:
    import gc

    import numpy as np
    import ray

    ray.init(num_cpus=1, object_store_memory=2 << 30, include_dashboard=False, log_to_driver=False)
    big = np.random.default_rng(0).random(100 * MiB // 8)
    dst = np.empty_like(big)
    np.copyto(dst, big)
    time.sleep(2.0)
    memcpy, fresh = [], []
    held = []
    for _ in range(5):
        memcpy.append(_memcpy_gbps(big, dst))
        t = time.perf_counter()
        held.append(ray.put(big))
        fresh.append(big.nbytes / (time.perf_counter() - t) / 1e9)
    del held
    gc.collect()
    time.sleep(1.0)
    reused = []
    for _ in range(5 if quick else 9):
        memcpy.append(_memcpy_gbps(big, dst))
        t = time.perf_counter()
        ref = ray.put(big)
        reused.append(big.nbytes / (time.perf_counter() - t) / 1e9)
        del ref
    ray.shutdown()
    return {"memcpy": _med(memcpy), "fresh": _med(fresh), "reused": _med(reused),
            "reused_all": [round(x, 2) for x in reused], "version": ray.__version__}


# -------------------------------------------------------------------- scale


def part_scale(quick: bool) -> dict:
    import gc

    import numpy as np
    import psutil

    import meshcompute as mesh

    mesh.init("local", num_cpus=1, object_store_memory=2 << 30)
    daemon = _daemon_process()
    me = psutil.Process()
    out = {"daemon_rss_mib_start": round(daemon.memory_info().rss / MiB, 1)}
    n_small = 20_000 if quick else 100_000
    t = time.perf_counter()
    small = [mesh.put(i) for i in range(n_small)]
    out["small_put_s"] = round(time.perf_counter() - t, 2)
    out["small_n"] = n_small
    t = time.perf_counter()
    assert mesh.get(small[-1]) == n_small - 1 and sum(mesh.get(small)) == n_small * (n_small - 1) // 2
    out["small_get_s"] = round(time.perf_counter() - t, 2)
    out["small_store_objects"] = mesh.nodes()[0]["ObjectStore"]["objects"]  # inline: 0
    out["driver_rss_mib_small"] = round(me.memory_info().rss / MiB, 1)
    out["daemon_rss_mib_small"] = round(daemon.memory_info().rss / MiB, 1)
    del small
    gc.collect()
    # 1k large objects of mixed sizes (256 KiB .. 2.25 MiB), ~1.2 GiB, then free
    # every other one and put 1k more into the holes: the allocator's worst case.
    rng = np.random.default_rng(1)
    sizes = rng.integers(256 * 1024, 2304 * 1024, 1000) // 8
    payload = rng.random(int(sizes.max()))
    t = time.perf_counter()
    large = [mesh.put(payload[:n]) for n in sizes]
    out["large_put_s"] = round(time.perf_counter() - t, 2)
    out["large_gib"] = round(int(sizes.sum()) * 8 / (1 << 30), 2)
    del large[::2]
    gc.collect()
    time.sleep(0.5)
    t = time.perf_counter()
    large += [mesh.put(payload[:n]) for n in sizes[::-1][:1000]]
    out["large_put_fragmented_s"] = round(time.perf_counter() - t, 2)
    st = mesh.nodes()[0]["ObjectStore"]
    out["large_store_objects"] = st["objects"]
    out["large_spilled_objects"] = st["spilled_objects"]
    t = time.perf_counter()
    for ref in large[:200]:
        mesh.get(ref)
    out["large_get_200_s"] = round(time.perf_counter() - t, 2)
    out["daemon_rss_mib_large"] = round(daemon.memory_info().rss / MiB, 1)
    del large, ref
    gc.collect()
    t = time.perf_counter()
    while mesh.nodes()[0]["ObjectStore"]["objects"]:
        time.sleep(0.01)
    out["large_free_s"] = round(time.perf_counter() - t, 2)
    out["daemon_rss_mib_end"] = round(daemon.memory_info().rss / MiB, 1)
    mesh.shutdown()
    return out


# -------------------------------------------------------------------- spill


def part_spill(quick: bool) -> dict:
    import gc

    import numpy as np

    import meshcompute as mesh

    mesh.init("local", num_cpus=1, object_store_memory=256 * MiB)
    n = 32 * MiB // 8
    rnd = np.random.default_rng(2).random(n)
    pattern = np.arange(n, dtype=np.int64) % 4096
    count = 12 if quick else 24
    t = time.perf_counter()
    refs = [mesh.put(rnd if i % 2 else pattern) for i in range(count)]
    put_s = time.perf_counter() - t
    st = mesh.nodes()[0]["ObjectStore"]
    t = time.perf_counter()
    for ref in refs:
        arr = mesh.get(ref)
        del arr
    get_s = time.perf_counter() - t
    st2 = mesh.nodes()[0]["ObjectStore"]
    total = count * 32 * MiB
    out = {"objects": count, "object_mib": 32, "store_mib": 256,
           "put_all_s": round(put_s, 2), "put_gbps": round(total / put_s / 1e9, 2),
           "spilled_after_put": st["spilled_objects"], "spill_file_ratio": round(
               st["spilled_bytes"] / max(1, st["spilled_objects"] * 32 * MiB), 2),
           "get_all_s": round(get_s, 2), "get_gbps": round(total / get_s / 1e9, 2),
           "restores": st2["restores"], "spills": st2["spills"]}
    del refs, ref
    gc.collect()
    mesh.shutdown()
    return out


PARTS = {"put": part_put_mesh, "fresh": part_fresh, "options": part_options, "ray": part_put_ray, "scale": part_scale, "spill": part_spill,
         "physics": part_physics}


def _run_part(name: str, quick: bool) -> dict:
    return run_part(__file__, [name] + (["--quick"] if quick else []), 900)


def _ray_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["physics", "options", "put", "fresh", "scale", "spill"], default=None)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args.quick)), flush=True)
        return
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                     "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1)}
    if args.only in (None, "physics"):
        results["physics"] = r = _run_part("physics", args.quick)
        print(f"writing 100 MiB into /dev/shm: speed as a fraction of memcpy's, in CPU time "
              f"(memcpy: {r.get('memcpy')} GB/s)")
        for k, v in r.items():
            if k != "memcpy":
                print(f"  {k:<36} {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.only in (None, "options"):
        results["options"] = r = _run_part("options", args.quick)
        print("writing 100 MiB into /dev/shm, wall time, next to numpy's copy into fresh memory")
        for k, v in r.items():
            if isinstance(v, dict):
                print(f"  {k:<44} {v['gbps']:6.2f} GB/s [{v['min']:.2f}-{v['max']:.2f}]  {v['ratio']:.2f}")
            else:
                print(f"  {k}: {v}")
    if args.only in (None, "put"):
        results["put"] = r = _run_part("put", args.quick)
        print(f"put of a 100 MiB numpy array, GB/s (memcpy in the same process: {r.get('memcpy')} GB/s)")
        if "error" not in r:
            for key, label in [("fresh_prealloc", "fresh, pre-allocated by the daemon"),
                               ("fresh_untouched", "fresh, pages never touched"), ("reused", "reused block")]:
                print(f"  meshcompute {label:<38} {r[key]:6.2f}  ({r[key] / r['memcpy']:.0%} of memcpy)")
        else:
            print("  meshcompute failed:", r["error"])
        if not args.no_ray and _ray_available():
            results["ray"] = q = _run_part("ray", args.quick)
            if "error" not in q:
                print(f"  ray {q['version']} put (its memcpy: {q['memcpy']} GB/s)")
                for key, label in [("fresh", "fresh"), ("reused", "reused")]:
                    print(f"  ray {label:<46} {q[key]:6.2f}  ({q[key] / q['memcpy']:.0%} of memcpy)")
            else:
                print("  ray failed:", q["error"][-300:])
        elif not args.no_ray:
            print("  ray: not installed")
    if args.only in (None, "fresh"):
        results["fresh"] = r = _run_part("fresh", args.quick)
        if "error" not in r:
            print("put of a new 100 MiB array each time, GB/s, next to numpy's copy into fresh memory")
            print(f"  ref dropped after each put: put {r['put_dropped']}, memcpy {r['memcpy_fresh']} "
                  f"({r['put_dropped_ratio']:.0%})")
            print(f"  refs held (a new block each): put {r['put_held']}, memcpy {r['memcpy_fresh_held']} "
                  f"({r['put_held_ratio']:.0%})")
            print(f"  arena allocated, MiB: idle {r['arena_idle_mib']}, peak {r['arena_peak_mib']}, "
                  "after freeing (seconds: MiB, at each change): "
                  + ", ".join(f"{t} s: {m}" for t, m in r["arena_after_free_mib"]))
        else:
            print("  fresh puts failed:", r["error"])
    if args.only in (None, "scale"):
        results["scale"] = r = _run_part("scale", args.quick)
        print("scale:")
        for k, v in r.items():
            print(f"  {k:<28} {v}")
    if args.only in (None, "spill"):
        results["spill"] = r = _run_part("spill", args.quick)
        print("spill (objects alternate random / compressible):")
        for k, v in r.items():
            print(f"  {k:<28} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
