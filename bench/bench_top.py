"""What watching costs: CPU of ``mesh top`` and of the daemons, on a 3-node mesh under a task load.

    python bench/bench_top.py [--seconds 10] [--cpus 1]

Starts three nodes on loopback, a driver that keeps submitting short tasks, and
``mesh top`` on an 80x24 pseudo-terminal (its screen is read and thrown away,
as a terminal would).  Over the same window it measures, with psutil, the CPU
time of the ``mesh top`` process and of each daemon; then it measures the
daemons again with nobody watching.  The figures go in docs/observability.md.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWN_ROOT = None if "MESH_SESSIONS_ROOT" in os.environ else tempfile.mkdtemp(prefix="mesh-bench-top-")
if OWN_ROOT:
    os.environ["MESH_SESSIONS_ROOT"] = OWN_ROOT

import psutil  # noqa: E402

import meshcompute as mesh  # noqa: E402
from meshcompute.host.launcher import start_node, stop_node  # noqa: E402
from meshcompute.wire.auth import generate_token  # noqa: E402


@mesh.remote
def work(i):
    time.sleep(0.002)
    return i


def load(stop: threading.Event, done: list) -> None:
    while not stop.is_set():
        mesh.get([work.remote(i) for i in range(100)])
        done[0] += 100


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def daemon_tree(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid)]


SCREEN = [b""]


def measure(procs: list[psutil.Process], seconds: float, drain_fd: int | None = None) -> float:
    """CPU share of one core used by ``procs`` over ``seconds`` (reading the terminal meanwhile)."""
    before = cpu_of(procs)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if drain_fd is not None:
            r, _, _ = select.select([drain_fd], [], [], 0.1)
            if r:
                try:
                    SCREEN[0] = (SCREEN[0] + os.read(drain_fd, 1 << 16))[-(1 << 16):]
                except OSError:
                    pass
        else:
            time.sleep(0.1)
    return (cpu_of(procs) - before) / (time.monotonic() - start)


def last_screen() -> str:
    import re

    frame = SCREEN[0].split(b"\x1b[H")[-1]
    return re.sub(rb"\x1b\[[0-9;?]*[ -/]*[@-~]", b"", frame).decode(errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cpus", type=float, default=1)
    ap.add_argument("--show", action="store_true", help="print mesh top's last screen")
    ap.add_argument("--no-load", action="store_true", help="an idle mesh (what watching alone costs)")
    args = ap.parse_args()
    token = generate_token()
    nodes = []
    term = None
    stop = threading.Event()
    try:
        proc, first = start_node(host="127.0.0.1", port=0, num_cpus=args.cpus, token=token, standalone=True,
                                 object_store_memory=128 << 20)
        nodes.append((proc, first))
        seed = first["tcp"].replace("tcp://", "")
        for _ in range(2):
            nodes.append(start_node(host="127.0.0.1", port=0, num_cpus=args.cpus, token=token, join=[seed],
                                    standalone=True, object_store_memory=128 << 20))
        time.sleep(2)
        mesh.init(address=seed)
        done = [0]
        if not args.no_load:
            threading.Thread(target=load, args=(stop, done), daemon=True).start()
        daemons = [psutil.Process(info["pid"]) for _, info in nodes]
        time.sleep(2)

        base = [measure([d], args.seconds / 2) for d in daemons]
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = dict(os.environ, TERM="xterm-256color")
        term = subprocess.Popen([sys.executable, "-m", "meshcompute.cli", "top", "--address", seed],
                                stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        # Start-up (imports, the token's key derivation, the first snapshot) is not the
        # steady state: wait for the first screen, then a little more.
        deadline = time.monotonic() + 60
        while b"watching" not in SCREEN[0] and time.monotonic() < deadline:
            measure([], 0.2, drain_fd=master)
        measure([], 2.0, drain_fd=master)
        top = psutil.Process(term.pid)
        n0 = done[0]
        t0 = time.monotonic()
        before_top = cpu_of([top])
        before_d = [cpu_of([d]) for d in daemons]
        measure([], args.seconds, drain_fd=master)
        elapsed = time.monotonic() - t0
        top_share = (cpu_of([top]) - before_top) / elapsed
        watched = [(cpu_of([d]) - b) / elapsed for d, b in zip(daemons, before_d)]
        rate = (done[0] - n0) / elapsed
        print(f"task load: {rate:,.0f} tasks/s over {elapsed:.1f} s on {os.cpu_count()} CPUs")
        print(f"mesh top: {100 * top_share:.2f}% of one core")
        for i, (b, w) in enumerate(zip(base, watched)):
            role = "watched" if i == 0 else "peer"
            print(f"daemon {i} ({role}): {100 * b:.2f}% unwatched -> {100 * w:.2f}% watched")
        if args.show:
            print(last_screen())
        os.kill(term.pid, signal.SIGTERM)
        os.close(master)
    finally:
        stop.set()
        if term is not None and term.poll() is None:
            term.kill()
            term.wait(5)
        if mesh.is_initialized():
            mesh.shutdown()
        for proc, info in nodes:
            stop_node(info)
            proc.wait(10)
        if OWN_ROOT:
            import shutil

            shutil.rmtree(OWN_ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
