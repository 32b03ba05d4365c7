"""Side-by-side benchmark: the same workloads through meshcompute and Ray.

    python bench/bench.py              # both (Ray when installed: pip install .[bench])
    python bench/bench.py --only mesh  # one framework
    python bench/bench.py --json out.json
    python bench/bench.py --baseline ../old-checkout --rounds 3   # also meshcompute from another checkout

With ``--baseline DIR`` a third column runs the same workloads with meshcompute
imported from DIR (a checkout of an earlier commit, say), in the same run, so a
change is measured against what it replaces under the same machine load;
"vs base" is how many times better this checkout is than that one.

Each framework runs in a fresh subprocess with its default settings, as a user
would call it (``init()`` with no arguments).  The same code drives both: only
the imported module differs.  Figures are medians over ``--repeat`` runs of each
workload inside that process; "ratio" is how many times better meshcompute is
(higher is better for us, whatever the unit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKLOADS = [
    # key, label, unit, higher_is_better
    ("cold_start_s", "cold start: import + init + first result", "s", False),
    ("task_sync_us", "task latency, sync (get after each)", "us", False),
    ("task_async_per_s", "tasks, async: 10k no-op, submit then get", "tasks/s", True),
    ("actor_sync_us", "actor call latency, sync", "us", False),
    ("actor_async_per_s", "actor calls, async: 5k", "calls/s", True),
    ("put_get_small_per_s", "small put + get", "ops/s", True),
    ("put_100mib_gbps", "put of a 100 MiB numpy array", "GB/s", True),
    ("get_100mib_us", "get of a 100 MiB numpy array", "us", False),
    ("ref_arg_50mib_per_s", "tasks taking a 50 MiB ref argument", "tasks/s", True),
    ("fib10_s", "nested tasks: recursive fib(10)", "s", False),
    ("wait_2000_s", "wait loop over 2,000 task refs", "s", False),
    ("rss_mib", "total RSS of all processes (idle, after the run)", "MiB", False),
    ("pss_mib", "total PSS of all processes (shared pages split)", "MiB", False),
    ("memcpy_gbps", "memcpy of 100 MiB in this process (reference)", "GB/s", True),
    ("memcpy_fresh_gbps", "copy of 100 MiB into fresh memory (limit for a put)", "GB/s", True),
    ("put_of_memcpy", "put of 100 MiB / copy into fresh memory", "ratio", True),
    ("zmq_rtt_us", "raw pyzmq round trip between 2 processes (limit)", "us", False),
    ("sync_of_rtt", "task latency, sync / raw pyzmq round trip", "ratio", False),
]

# Figures that compare a framework with a limit measured in the same process:
# they are not compared across frameworks.
LIMITS = {"memcpy_gbps", "memcpy_fresh_gbps", "put_of_memcpy", "zmq_rtt_us", "sync_of_rtt"}


def _echo_server(addr: str) -> None:
    """The other end of the raw round trip: a ROUTER that sends back what it gets."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(addr)
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            return
        sock.send_multipart(frames)


def zmq_round_trip_us(n: int) -> float:
    """One DEALER -> ROUTER -> DEALER round trip over ipc between two processes, in us.

    The floor under a synchronous task: a task's request and its answer each
    cross one such pipe (plus the work of both runtimes around them).
    """
    import multiprocessing
    import tempfile

    import zmq

    addr = f"ipc://{tempfile.mkdtemp()}/echo"
    proc = multiprocessing.get_context("spawn").Process(target=_echo_server, args=(addr,), daemon=True)
    proc.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(addr)
    payload = b"x" * 64
    for _ in range(200):  # warm: connection made, both sides in their loops
        sock.send(payload)
        sock.recv()
    t = time.perf_counter()
    for _ in range(n):
        sock.send(payload)
        sock.recv()
    dt = (time.perf_counter() - t) / n * 1e6
    sock.send(b"stop")
    proc.join(5)
    sock.close(0)
    return dt


class _Streamed(dict):
    """Prints each figure as it is measured, so a run cut short still reports."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        print("FIGURE " + json.dumps({key: value}), flush=True)


def _median(fn, repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def run_suite(name: str, repeat: int, quick: bool) -> dict:
    t0 = time.perf_counter()
    if name == "ray":
        import ray as fw
    else:
        import meshcompute as fw
    import numpy as np
    import psutil

    fw.init()

    @fw.remote
    def noop(x=None):
        return x

    fw.get(noop.remote())
    out = _Streamed()
    out["cold_start_s"] = time.perf_counter() - t0

    def task_sync():
        n = 200 if quick else 1000
        t = time.perf_counter()
        for _ in range(n):
            fw.get(noop.remote())
        return (time.perf_counter() - t) / n * 1e6

    out["task_sync_us"] = _median(task_sync, repeat)

    def task_async():
        n = 2000 if quick else 10_000
        t = time.perf_counter()
        fw.get([noop.remote() for _ in range(n)])
        return n / (time.perf_counter() - t)

    out["task_async_per_s"] = _median(task_async, repeat)

    @fw.remote
    class Actor:
        def call(self, x=None):
            return x

    actor = Actor.remote()
    fw.get(actor.call.remote())

    def actor_sync():
        n = 200 if quick else 1000
        t = time.perf_counter()
        for _ in range(n):
            fw.get(actor.call.remote())
        return (time.perf_counter() - t) / n * 1e6

    out["actor_sync_us"] = _median(actor_sync, repeat)

    def actor_async():
        n = 1000 if quick else 5000
        t = time.perf_counter()
        fw.get([actor.call.remote() for _ in range(n)])
        return n / (time.perf_counter() - t)

    out["actor_async_per_s"] = _median(actor_async, repeat)

    def put_get_small():
        n = 500 if quick else 2000
        t = time.perf_counter()
        for i in range(n):
            fw.get(fw.put(i))
        return n / (time.perf_counter() - t)

    out["put_get_small_per_s"] = _median(put_get_small, repeat)

    big = np.random.default_rng(0).random(100 * 2**20 // 8)

    def put_big():
        t = time.perf_counter()
        ref = fw.put(big)
        dt = time.perf_counter() - t
        del ref
        return big.nbytes / dt / 1e9

    out["put_100mib_gbps"] = _median(put_big, max(repeat, 5))
    big_ref = fw.put(big)

    def get_big():
        t = time.perf_counter()
        arr = fw.get(big_ref)
        dt = time.perf_counter() - t
        assert arr.shape == big.shape
        return dt * 1e6

    out["get_100mib_us"] = _median(get_big, max(repeat, 5))
    big_ref = None

    arg = fw.put(np.ones(50 * 2**20 // 8))

    @fw.remote
    def first(a):
        return float(a[0])

    fw.get(first.remote(arg))

    def ref_arg():
        n = 50 if quick else 200
        t = time.perf_counter()
        fw.get([first.remote(arg) for _ in range(n)])
        return n / (time.perf_counter() - t)

    out["ref_arg_50mib_per_s"] = _median(ref_arg, repeat)
    arg = None

    @fw.remote
    def fib(n):
        if n < 2:
            return n
        return sum(fw.get([fib.remote(n - 1), fib.remote(n - 2)]))

    def fib10():
        t = time.perf_counter()
        assert fw.get(fib.remote(10)) == 55
        return time.perf_counter() - t

    out["fib10_s"] = fib10()  # once: Ray takes minutes here on a small machine

    def wait_loop():
        refs = [noop.remote(i) for i in range(2000)]
        t = time.perf_counter()
        while refs:
            _, refs = fw.wait(refs, num_returns=1)
        return time.perf_counter() - t

    out["wait_2000_s"] = _median(wait_loop, repeat)

    dst = np.empty_like(big)
    np.copyto(dst, big)

    def memcpy():
        t = time.perf_counter()
        np.copyto(dst, big)
        return big.nbytes / (time.perf_counter() - t) / 1e9

    out["memcpy_gbps"] = _median(memcpy, 5)

    def memcpy_fresh():
        # What a put must do at least: copy into memory never touched before.
        t = time.perf_counter()
        copy = big.copy()
        dt = time.perf_counter() - t
        del copy
        return big.nbytes / dt / 1e9

    out["memcpy_fresh_gbps"] = _median(memcpy_fresh, max(repeat, 5))
    out["put_of_memcpy"] = out["put_100mib_gbps"] / out["memcpy_fresh_gbps"]
    out["zmq_rtt_us"] = _median(lambda: zmq_round_trip_us(200 if quick else 2000), repeat)
    out["sync_of_rtt"] = out["task_sync_us"] / out["zmq_rtt_us"]
    big = dst = None  # the benchmark's own data is not the framework's memory
    time.sleep(3)  # let idle workers settle (both frameworks stop extra idle workers)
    rss, pss, processes = tree_memory(psutil.Process())
    out["rss_mib"] = rss / 2**20
    out["pss_mib"] = pss / 2**20
    out["processes"] = processes
    fw.shutdown()
    return dict(out)


def tree_memory(root, pss: bool = True) -> tuple[int, int, int]:
    """Total RSS and PSS (bytes; PSS 0 when ``pss`` is false) of ``root`` and all its
    descendants, and how many processes that is.  PSS splits shared pages between
    the processes that map them, so the total counts shared memory once."""
    import psutil

    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0
    rss = total_pss = 0
    for p in procs:
        try:
            if pss:
                info = p.memory_full_info()
                total_pss += info.pss
            else:
                info = p.memory_info()
            rss += info.rss
        except psutil.Error:
            pass
    return rss, total_pss, len(procs)


def run_part(script: str, args: list[str], timeout: float) -> dict:
    """Run ``script --part ...`` (a bench script's part in a fresh process, with this checkout
    first on the path) and return the last JSON object it printed, or ``{"error": ...}``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--part", *args], capture_output=True,
                          text=True, env=env, cwd=repo, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def run_child(cmd: list[str], name: str, timeout: float, env: dict | None = None, cwd: str | None = None,
              watch=None) -> dict:
    """Run a child that prints ``FIGURE``/``RESULT`` lines; returns the figures it printed.

    ``watch(pid, done)``, when given, runs in a thread while the child runs (``done`` is
    a threading.Event set when it has exited).  A child past ``timeout`` is stopped with
    every process under it (by pid), and the figures it printed so far are kept.
    """
    import threading

    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(proc.pid, done), daemon=True) if watch else None
    if watcher:
        watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for p in [proc, *tree]:
            try:
                p.kill()
            except (psutil.Error, OSError):
                pass
        stdout, _ = proc.communicate()
        stderr = f"stopped after {timeout:.0f} s"
    done.set()
    if watcher:
        watcher.join()
    figures: dict = {}
    for line in stdout.splitlines():
        if line.startswith("FIGURE ") or line.startswith("RESULT "):
            figures.update(json.loads(line[7:]))
    if proc.returncode != 0 or "RESULT " not in stdout:
        sys.stderr.write(f"{name} did not finish ({stderr.strip()[-800:]}); partial figures kept\n")
    return figures


def _run_child(name: str, repeat: int, quick: bool, timeout: float, pythonpath: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--repeat", str(repeat)] + (["--quick"] if quick else [])
    env = dict(os.environ)
    if pythonpath:  # meshcompute from another checkout (its daemons inherit the path)
        env["PYTHONPATH"] = os.path.abspath(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
    # Run from that checkout too: ``python -m`` (how daemons start) puts the working
    # directory first on the path, before PYTHONPATH.
    return run_child(cmd, name, timeout, env=env, cwd=os.path.abspath(pythonpath) if pythonpath else None)


def _median_figures(runs: list[dict]) -> dict:
    """Each figure's median over the runs that measured it."""
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r[k] for r in runs if isinstance(r.get(k), (int, float))) for k in keys
            if any(isinstance(r.get(k), (int, float)) for r in runs)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["mesh", "ray"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed to each framework")
    p.add_argument("--baseline", help="also run meshcompute imported from this checkout (a column 'base')")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --baseline: run this checkout and the baseline this many times each, "
                        "alternating which goes first, and report the median of each figure "
                        "(the machine's speed drifts; alternation spreads it over both)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_suite(args.child, args.repeat, args.quick)), flush=True)
        return
    names = [args.only] if args.only else ["mesh", "ray"]
    if "ray" in names:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("Ray is not installed (pip install .[bench]); running meshcompute alone.")
            names = ["mesh"]
    if args.baseline:
        runs: dict[str, list[dict]] = {"mesh": [], "base": []}
        for r in range(max(1, args.rounds)):
            for which in (("mesh", "base") if r % 2 == 0 else ("base", "mesh")):
                path = args.baseline if which == "base" else None
                runs[which].append(_run_child("mesh", args.repeat, args.quick, args.timeout, path))
        results = {"mesh": _median_figures(runs["mesh"])}
        base_r = _median_figures(runs["base"])
        if "ray" in names:
            results["ray"] = _run_child("ray", args.repeat, args.quick, args.timeout)
    else:
        results = {n: _run_child(n, args.repeat, args.quick, args.timeout) for n in names}
        base_r = {}
    ray_version = None
    if "ray" in names:
        import ray

        ray_version = ray.__version__
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"ray {ray_version or 'n/a'}; {time.strftime('%Y-%m-%d')}\n")
    header = f"{'workload':52} {'unit':>8} {'meshcompute':>12} {'ray':>12} {'ratio':>8}"
    if args.baseline:
        header += f" {'base':>12} {'vs base':>8}"
    print(header)
    print("-" * len(header))
    mesh_r, ray_r = results.get("mesh") or {}, results.get("ray") or {}
    for key, label, unit, higher in WORKLOADS:
        m, r = mesh_r.get(key), ray_r.get(key)
        ratio = None
        if m and r and key not in LIMITS:
            ratio = (m / r) if higher else (r / m)
        line = f"{label:52} {unit:>8} {_fmt(m):>12} {_fmt(r):>12} {(_fmt(ratio) + 'x') if ratio else '-':>8}"
        if args.baseline:
            b = base_r.get(key)
            vs = ((m / b) if higher else (b / m)) if m and b else None
            line += f" {_fmt(b):>12} {(_fmt(vs) + 'x') if vs else '-':>8}"
        print(line)
    print(f"{'processes at the end':52} {'':>8} {_fmt(mesh_r.get('processes')):>12} {_fmt(ray_r.get('processes')):>12}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "baseline": base_r, "ray_version": ray_version, "date": time.strftime("%Y-%m-%d"),
                       "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
