"""Chaos scenarios on real daemons in network namespaces (needs root and ``ip netns``).

Each scenario starts a fresh mesh of three hosts (``mesh start`` on host 1,
``mesh join`` on hosts 2 and 3: each its own IP on one bridge), runs a driver
on a host, breaks something while the work runs, and then checks that

* every result is correct (nothing lost, nothing hung: every wait is bounded),
* every CPU is back on every node that is still alive,

plus what the scenario is about (see each function).  One JSON line per
scenario goes to stdout with its figures; the exit status is non-zero if any
check failed.  docs/reliability.md has the figures of a full run.

    sudo python scripts/chaos.py                     # every scenario, full size
    sudo python scripts/chaos.py --quick             # smaller workloads
    sudo python scripts/chaos.py worker_kills cut_heal
    MESH_CHAOS_LOGS=/tmp/chaos sudo python scripts/chaos.py   # keep failed scenarios' daemon logs

The script is also the driver: the orchestrator runs ``chaos.py --drive NAME``
inside a host's namespace and talks to it over stdin/stdout, one JSON line each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

LOGS_DIR = os.environ.get("MESH_CHAOS_LOGS", "")
"""Where a failed scenario's daemon logs are copied (empty: not kept)."""
PORT = 7790
PREFIX = "mchaos"
CPUS = 2


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


# ============================================================= drivers (in a namespace)

def drive_worker_kills(args) -> None:
    """Many short tasks while workers are killed under them: each costs a retry."""
    import meshcompute as mesh

    @mesh.remote(max_retries=-1)
    def square(i):
        time.sleep(0.002)
        return i * i

    n = args["tasks"]
    say(event="ready")
    start = time.monotonic()
    total = 0
    for lo in range(0, n, 1000):
        total += sum(mesh.get([square.remote(i) for i in range(lo, min(n, lo + 1000))], timeout=300))
    say(event="result", ok=total == sum(i * i for i in range(n)), tasks=n,
        tasks_per_s=round(n / (time.monotonic() - start)))


def drive_node_kill(args) -> None:
    """Intermediate objects spread over the three hosts, a restartable actor on host 3 with a
    call in flight; host 3's node is SIGKILLed; every consumer and the call must still finish."""
    import numpy as np

    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

    @mesh.remote(max_retries=3, num_returns=2)
    def produce(i):
        return np.full(64 * 1024, i, dtype=np.int64), mesh.get_runtime_context().get_node_id()

    @mesh.remote(max_retries=3)
    def consume(arr):
        return int(arr.sum())

    @mesh.remote
    class Tally:
        def __init__(self):
            self.n = 0

        def add(self, delay=0.0):
            time.sleep(delay)
            self.n += 1
            return mesh.get_runtime_context().get_node_id()

    ids, victim, n = args["ids"], args["victim"], args["objects"]
    pairs = [produce.options(scheduling_strategy=On(node_id=ids[i % 3], soft=True)).remote(i) for i in range(n)]
    homes = mesh.get([h for _, h in pairs], timeout=120)
    tally = Tally.options(max_restarts=2, max_task_retries=-1, scheduling_strategy=On(node_id=victim, soft=True)).remote()
    assert mesh.get(tally.add.remote(), timeout=60) == victim
    in_flight = tally.add.remote(3.0)
    say(event="ready", on_victim=sum(1 for h in homes if h == victim))
    assert json.loads(sys.stdin.readline())["go"]  # the node is dead now
    start = time.monotonic()
    sums = mesh.get([consume.remote(a) for a, _ in pairs], timeout=300)
    where = mesh.get(in_flight, timeout=120)
    say(event="result", ok=sums == [i * 64 * 1024 for i in range(n)] and where != victim,
        objects=n, lost_with_node=sum(1 for h in homes if h == victim), actor_now_on=where,
        recovery_s=round(time.monotonic() - start, 2))


def drive_hold_leases(args) -> None:
    """A driver that holds every CPU of three hosts, to be SIGKILLed."""
    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

    @mesh.remote
    def hold():
        time.sleep(600)

    refs = [hold.options(scheduling_strategy=On(node_id=n, soft=False)).remote() for n in args["ids"] for _ in range(CPUS)]
    say(event="ready", held=len(refs))
    time.sleep(600)


def drive_steady(args) -> None:
    """SPREAD batches and actor calls in a loop until told to stop; then how SPREAD shares."""
    import collections

    import meshcompute as mesh
    from meshcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

    @mesh.remote(max_retries=-1)
    def where(i):
        time.sleep(0.01)
        return i, mesh.get_runtime_context().get_node_id()

    @mesh.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.options(max_restarts=-1, max_task_retries=-1,
                        scheduling_strategy=On(node_id=args["ids"][args.get("actor_host", 1)], soft=True)).remote()
    import select

    say(event="ready")
    batches = calls = 0
    ok = True
    while not select.select([sys.stdin], [], [], 0)[0]:
        got = mesh.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(60)], timeout=120)
        ok &= [i for i, _ in got] == list(range(60))
        ok &= mesh.get([echo.echo.remote(k) for k in range(10)], timeout=120) == list(range(10))
        batches += 1
        calls += 10
    sys.stdin.readline()
    time.sleep(args.get("settle_s", 0))
    counts = collections.Counter(n for _, n in mesh.get(
        [where.options(scheduling_strategy="SPREAD").remote(i) for i in range(300)], timeout=120))
    say(event="result", ok=ok, batches=batches, actor_calls=calls, spread=[counts.get(n, 0) for n in args["ids"]])


def drive_control_store(args) -> None:
    """KV writes in a loop (retrying while the store has no leader) until told to stop; then every
    acknowledged write must be readable."""
    import select

    import meshcompute as mesh
    from meshcompute import exceptions as exc

    say(event="ready")
    acked, worst, i = [], 0.0, 0
    while not select.select([sys.stdin], [], [], 0)[0] or i < 20:
        key = f"k{i}"
        start = time.monotonic()
        while True:
            try:
                mesh.kv.put(key, str(i).encode())
                break
            except exc.ControlStoreUnavailableError:
                time.sleep(0.05)
        worst = max(worst, time.monotonic() - start)
        acked.append(key)
        i += 1
    sys.stdin.readline()
    ok = all(mesh.kv.get(k) == k[1:].encode() for k in acked)
    say(event="result", ok=ok, writes=len(acked), slowest_write_s=round(worst, 2))


DRIVERS = {"worker_kills": drive_worker_kills, "node_kill": drive_node_kill, "hold_leases": drive_hold_leases,
           "steady": drive_steady, "control_store": drive_control_store}


def drive(name: str, address: str, args: dict) -> None:
    import meshcompute as mesh

    mesh.init(address=address)
    try:
        DRIVERS[name](args)
    except Exception:
        say(event="result", ok=False, error=traceback.format_exc()[-2000:])
    finally:
        mesh.shutdown()


# ============================================================= the orchestrator (root namespace)

class Mesh:
    """Three hosts with a node each, and a driver to talk to."""

    def __init__(self, bed, token: str) -> None:
        self.bed, self.token = bed, token
        self.addr = {i: f"{bed.address(i)}:{PORT}" for i in bed.hosts}
        common = ["--port", str(PORT), "--num-cpus", str(CPUS), "--token", token,
                  "--object-store-memory", str(256 << 20)]
        self._cli(1, "start", "--host", bed.address(1), *common)
        for i in (2, 3):
            self._cli(i, "join", self.addr[1], "--host", bed.address(i), *common)
        from meshcompute.host.launcher import local_nodes

        self.info = {i: next(n for n in local_nodes() if n["host"] == bed.address(i)) for i in bed.hosts}
        self.ids = [self.info[i]["node_id"] for i in bed.hosts]
        self.dead: set[int] = set()
        self.started = time.time()
        deadline = time.monotonic() + 30
        while not all(self.alive_view(i) == set(self.ids) for i in bed.hosts):
            if time.monotonic() > deadline:
                raise RuntimeError("the three nodes did not see each other alive within 30 s")
            time.sleep(0.2)

    def _cli(self, i: int, *args: str) -> None:
        out = self.bed.exec(i, [sys.executable, "-m", "meshcompute.cli", *args], timeout=60, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"mesh {args[0]} on host {i}: {out.stdout}{out.stderr}")

    def query(self, i: int, what: str = "node"):
        from meshcompute.host.launcher import query

        return query(self.info[i], what)

    def alive_view(self, i: int) -> set:
        return {n["node_id"] for n in self.query(i, "mesh")["nodes"] if n["state"] == "alive"}

    def driver(self, host: int, name: str, args: dict) -> subprocess.Popen:
        return self.bed.spawn(host, [sys.executable, os.path.abspath(__file__), "--drive", name, self.addr[host],
                                     json.dumps(args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO)

    def daemon_pid(self, i: int) -> int:
        """The node's daemon pid, verified: a process in that host's namespace running the daemon."""
        pid = int(self.info[i]["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        if pid not in self.bed.pids(i) or b"meshcompute.node.daemon" not in cmd:
            raise RuntimeError(f"pid {pid} is not host {i}'s daemon")
        return pid

    def workers(self, i: int) -> list[int]:
        """Worker pids of a host: the grandchildren of its (verified) daemon, through its zygote."""
        import psutil

        daemon = psutil.Process(self.daemon_pid(i))
        return [w.pid for z in daemon.children() for w in z.children()]

    def kill_node(self, i: int) -> None:
        os.kill(self.daemon_pid(i), signal.SIGKILL)
        self.dead.add(i)

    def cpus_back(self, timeout: float = 10.0) -> float | None:
        """Seconds until every live node has all its CPUs free again (None: not within timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if all(self.query(i)["resources_available"].get("CPU") == CPUS for i in self.bed.hosts if i not in self.dead):
                return round(time.monotonic() - start, 2)
            time.sleep(0.1)
        return None

    def declared_dead(self, by: int) -> list[str]:
        """Node ids host ``by`` declared dead since this mesh started (from its log)."""
        out = []
        with open(os.path.join(self.info[by]["session_dir"], "logs", "daemon.log")) as f:
            for line in f:
                if "membership: dead " in line:
                    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if stamp >= self.started:
                        out.append(line.split("membership: dead ")[1].split()[0])
        return out


def read_event(proc: subprocess.Popen, want: str, timeout: float) -> dict:
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the driver exited before {want!r} (status {proc.poll()})")
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == want:
                return ev
    raise RuntimeError(f"no {want!r} from the driver within {timeout} s")


def tell(proc: subprocess.Popen, **fields) -> None:
    proc.stdin.write(json.dumps(fields) + "\n")
    proc.stdin.flush()


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    result = read_event(proc, "result", timeout)
    proc.wait(30)
    return result


def worker_kills(m: Mesh, quick: bool) -> dict:
    """Kill a random worker every 0.5 s during 10,000 tasks (1,000 with --quick)."""
    rng = random.Random(7)
    drv = m.driver(1, "worker_kills", {"tasks": 3000 if quick else 10_000})
    read_event(drv, "ready", 60)
    kills = 0
    while drv.poll() is None:
        time.sleep(0.5)
        pids = [p for i in m.bed.hosts for p in m.workers(i)]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        import select

        if select.select([drv.stdout], [], [], 0)[0]:
            break
    result = finish(drv, 600)
    return dict(result, workers_killed=kills)


def node_kill(m: Mesh, quick: bool) -> dict:
    """SIGKILL host 3's node mid-workload: its intermediate objects are rebuilt from lineage,
    its restartable actor placed again elsewhere, the call in flight retried."""
    drv = m.driver(1, "node_kill", {"ids": m.ids, "victim": m.ids[2], "objects": 60 if quick else 300})
    ready = read_event(drv, "ready", 120)
    m.kill_node(3)
    tell(drv, go=True)
    result = finish(drv, 300)
    return dict(result, on_victim=ready["on_victim"])


def driver_kill(m: Mesh, quick: bool) -> dict:
    """SIGKILL a driver whose leases hold every CPU of the three hosts: all come back."""
    drv = m.driver(1, "hold_leases", {"ids": m.ids})
    read_event(drv, "ready", 60)
    deadline = time.monotonic() + 30
    while any(m.query(i)["resources_available"].get("CPU") != 0 for i in m.bed.hosts):
        if time.monotonic() > deadline:
            raise RuntimeError("the driver's tasks never held every CPU")
        time.sleep(0.1)
    drv.kill()  # our own child, by its pid
    drv.wait(10)
    back = m.cpus_back(timeout=15)
    return {"ok": back is not None and back < 5, "cpus_back_s": back}


def cut_heal(m: Mesh, quick: bool) -> dict:
    """Cut host 2's link and heal it, three times, while SPREAD tasks and actor calls run:
    no healthy node is ever declared dead, nothing leaks, SPREAD shares fairly again."""
    drv = m.driver(1, "steady", {"ids": m.ids, "actor_host": 1, "settle_s": 3})
    read_event(drv, "ready", 60)
    for _ in range(3):
        time.sleep(2)
        m.bed.cut(2)
        time.sleep(4)
        m.bed.heal(2)
        deadline = time.monotonic() + 30
        while not all(m.alive_view(i) == set(m.ids) for i in m.bed.hosts):
            if time.monotonic() > deadline:
                raise RuntimeError("host 2 did not come back within 30 s of the heal")
            time.sleep(0.2)
    tell(drv, stop=True)
    result = finish(drv, 180)
    wrongly = {i: [n for n in m.declared_dead(i) if n != m.ids[1]] for i in (1, 3)}
    spread = result.get("spread", [0, 0, 0])
    fair = min(spread) >= 60  # 300 tasks over 3 nodes: each gets at least a fifth
    return dict(result, ok=result["ok"] and fair and not any(wrongly.values()),
                healthy_declared_dead=wrongly, host2_declared_dead=len(m.declared_dead(1)))


def leader_kill(m: Mesh, quick: bool) -> dict:
    """SIGKILL the control store's leader while a driver on another host writes to it:
    every acknowledged write survives, tasks go on."""
    views = {i: m.query(i)["control"] for i in m.bed.hosts}
    leader_id = views[1]["leader"]
    leader = next(i for i in m.bed.hosts if m.ids[i - 1] == leader_id)
    host = next(i for i in m.bed.hosts if i != leader)
    drv = m.driver(host, "control_store", {})
    read_event(drv, "ready", 60)
    time.sleep(1.0)
    m.kill_node(leader)
    time.sleep(3.0)
    tell(drv, stop=True)
    result = finish(drv, 120)
    return dict(result, leader_was_host=leader)


def cpu_saturate(m: Mesh, quick: bool) -> dict:
    """Busy loops on every core for 15 s while tasks and actor calls run: no node is declared
    dead (gossip and control keep up), every result is correct."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        drv = m.driver(1, "steady", {"ids": m.ids, "actor_host": 2})
        read_event(drv, "ready", 120)
        time.sleep(8 if quick else 15)
        tell(drv, stop=True)
        result = finish(drv, 300)
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    dead = {i: m.declared_dead(i) for i in m.bed.hosts}
    return dict(result, ok=result["ok"] and not any(dead.values()), declared_dead=dead, hogs=len(hogs))


SCENARIOS = {f.__name__: f for f in (worker_kills, node_kill, driver_kill, cut_heal, leader_kill, cpu_saturate)}


def run(name: str, quick: bool) -> dict:
    from meshcompute.testing.netns import TestBed
    from meshcompute.wire.auth import generate_token

    start = time.monotonic()
    with TestBed(3, prefix=PREFIX) as bed:
        m = None
        try:
            m = Mesh(bed, generate_token())
            result = SCENARIOS[name](m, quick)
            back = m.cpus_back()
            result.update(scenario=name, cpus_back=back is not None, ok=bool(result.get("ok")) and back is not None)
        except Exception:
            result = {"scenario": name, "ok": False, "error": traceback.format_exc()[-2000:]}
        finally:
            if m is not None:
                if not result.get("ok") and LOGS_DIR:
                    _keep_logs(m, os.path.join(LOGS_DIR, name))
                _stop(m)
    result["wall_s"] = round(time.monotonic() - start, 1)
    return result


def _keep_logs(m: Mesh, where: str) -> None:
    """Copy each node's daemon log (a failed scenario's evidence) before the mesh goes."""
    import shutil

    os.makedirs(where, exist_ok=True)
    for i in m.bed.hosts:
        src = os.path.join(m.info[i]["session_dir"], "logs", "daemon.log")
        if os.path.exists(src):
            shutil.copy(src, os.path.join(where, f"host{i}-{m.ids[i - 1]}.log"))


def _stop(m: Mesh) -> None:
    from meshcompute.host.launcher import stop_node

    for i in m.bed.hosts:
        if i not in m.dead:
            stop_node(m.info[i])
        else:  # killed: its session directory and shared memory go now
            from meshcompute.host.sessions import remove_session

            remove_session(m.info[i]["session_dir"])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    opts = parser.parse_args()
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    from meshcompute.testing.netns import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        print(f"chaos: {reason}", file=sys.stderr)
        return 2
    failed = 0
    for name in opts.scenarios or list(SCENARIOS):
        result = run(name, opts.quick)
        print(json.dumps(result), flush=True)
        failed += not result["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
