"""The node's worker pool: worker records, the zygote that forks them, idle reaping.

Workers are forked by a zygote process (meshcompute/worker/zygote.py) that the
daemon starts before it has threads or sockets.  The pool talks to it through
two pipes: ``F <worker_id>`` asks for a fork; the zygote answers
``S <worker_id> <pid>`` when the child started and ``X <pid> <status>`` when it
exited.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from ..host.sessions import describe_exit
from ..wire import ids

log = logging.getLogger("meshcompute.daemon")

IDLE_WORKER_TTL_S = 1.0
"""Idle workers beyond the node's CPU count are stopped after this long (s), as in Ray."""


@dataclass
class Worker:
    worker_id: str
    pid: int = 0
    addr: str = ""
    state: str = "starting"  # starting | idle | leased | actor | stopping | dead
    lease_id: bytes | None = None
    actor_id: bytes | None = None
    blocked: bool = False
    idle_since: float = 0.0
    expected_exit: bool = False
    ran_tasks: bool = False  # it was leased: objects its tasks made may be its own
    env: str = ""  # the pip runtime_env it serves, by hash (worker/pip_env.py); "" the node's own


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class WorkerPool:
    """Owns every Worker record of this node and the zygote's pipes.

    Invariants:
      * ``workers`` holds every worker not known to have exited, by id;
        ``by_addr`` and ``by_pid`` index the same records once the worker
        registered (``by_addr``) or the zygote reported its pid (``by_pid``);
      * ``starting`` counts records of the node's own workers in state "starting":
        forks asked for whose process has not registered yet (the scheduler forks
        only what is not already on its way); ``starting_env[env]`` counts the
        same for the workers of each pip environment;
      * the pool never decides what a worker runs: leases and actors set
        ``state``/``lease_id``/``actor_id``; the pool only creates, indexes,
        reaps and kills.
    """

    def __init__(self, session_dir: str, node_id: str, host: str | None, num_cpus: float) -> None:
        self.session_dir = session_dir
        self.node_id = node_id
        self.host = host
        self.num_cpus = num_cpus
        self.workers: dict[str, Worker] = {}
        self.by_addr: dict[str, Worker] = {}
        self.by_pid: dict[int, Worker] = {}
        self.starting = 0
        self.starting_env: collections.Counter[str] = collections.Counter()  # the same, by pip env
        self.envs: dict[str, tuple[list[str], list[str]]] = {}  # pip env -> (requirements, options)
        self.zygote_pid = 0
        self._cmd = -1
        self.events_fd = -1  # the loop polls it; read_events() when readable
        self._buf = b""

    # ----------------------------------------------------------------- zygote

    def start_zygote(self, close_in_child: tuple[int, ...] = ()) -> None:
        """Fork the zygote now, while this process has no threads or sockets.

        ``close_in_child``: descriptors the zygote must not inherit (the arena's,
        whose lock stays the daemon's).
        """
        from ..worker.zygote import run_zygote

        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(cmd_w)
            os.close(evt_r)
            for fd in close_in_child:
                if fd >= 0:
                    os.close(fd)
            try:
                run_zygote(cmd_r, evt_w, self.session_dir, self.node_id, self.host)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(evt_w)
        self.zygote_pid = pid
        self._cmd = cmd_w
        self.events_fd = evt_r
        os.set_blocking(evt_r, False)

    def fork(self) -> Worker:
        wid = ids.random_id()
        w = Worker(wid)
        self.workers[wid] = w
        self.starting += 1
        os.write(self._cmd, f"F {wid}\n".encode())
        return w

    def ensure_starting(self, needed: int, needed_env: collections.Counter | None = None) -> None:
        """Fork so that ``needed`` workers are on their way (counting those already starting),
        and ``needed_env[env]`` workers of each pip environment."""
        for _ in range(max(0, needed - self.starting)):
            self.fork()
        for env, n in (needed_env or {}).items():
            for _ in range(max(0, n - self.starting_env[env])):
                self.start_env_worker(env)

    def know_env(self, env: str, requirements: list[str], options: list[str]) -> None:
        """Remember what pip environment ``env`` installs (from a lease request that needs it)."""
        self.envs.setdefault(env, (requirements, options))

    def write_requirements(self, env: str) -> None:
        """The requirements file of pip environment ``env`` (known_env), written once per node."""
        from ..worker.pip_env import requirements_path

        path = requirements_path(self.session_dir, env)
        if not os.path.exists(path):
            requirements, options = self.envs[env]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(f"{path}.tmp", "w") as f:
                # Options on a comment line: pip reads the file too, and skips it.
                f.write(" ".join(["#", "meshcompute:", *options]) + "\n" + "".join(r + "\n" for r in requirements))
            os.replace(f"{path}.tmp", path)

    def start_env_worker(self, env: str) -> Worker:
        """Start a worker of pip environment ``env``: it installs the environment first if
        this node has not (worker/pip_env.py), which may take a while."""
        self.write_requirements(env)
        wid = ids.random_id()
        w = Worker(wid, env=env)
        self.workers[wid] = w
        self.starting_env[env] += 1
        os.write(self._cmd, f"P {wid} {env}\n".encode())
        return w

    def read_events(self) -> tuple[list[tuple[Worker, str]], bool]:
        """Read the zygote's reports: ``(exited workers with a reason, zygote alive)``.

        An exited worker is already out of the indexes; the caller releases what
        it held.
        """
        exited: list[tuple[Worker, str]] = []
        try:
            data = os.read(self.events_fd, 65536)
        except BlockingIOError:
            return exited, True
        if not data:
            return exited, False
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            parts = line.decode().split()
            if parts[0] == "S":
                w = self.workers.get(parts[1])
                if w is not None:
                    w.pid = int(parts[2])
                    self.by_pid[w.pid] = w
            elif parts[0] == "X":
                w = self.by_pid.pop(int(parts[1]), None)
                if w is not None:
                    self._forget(w)
                    exited.append((w, describe_exit(int(parts[2]))))
        return exited, True

    # -------------------------------------------------------------- lifecycle

    def registered(self, worker_id: str, pid: int, addr: str) -> Worker:
        """A worker process said hello; returns its record (made if the fork came from elsewhere)."""
        w = self.workers.get(worker_id)
        if w is None:
            w = self.workers[worker_id] = Worker(worker_id)
        else:
            self._started(w)
        w.pid, w.addr = pid, addr
        self.by_addr[addr] = w
        self.by_pid[pid] = w
        return w

    def _started(self, w: Worker) -> None:
        if w.env:
            self.starting_env[w.env] -= 1
        else:
            self.starting -= 1

    def _forget(self, w: Worker) -> None:
        if w.state == "starting":
            self._started(w)
        w.state = "dead"
        self.workers.pop(w.worker_id, None)
        if w.addr:
            self.by_addr.pop(w.addr, None)

    def idle(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state == "idle"]

    def serving(self) -> list[str]:
        """The addresses of the workers that answer requests (registered and not stopping)."""
        return [w.addr for w in self.workers.values() if w.addr and w.state in ("idle", "leased", "actor")]

    def kill(self, worker_id: str | None, expected: bool = False) -> bool:
        """SIGKILL a worker (its exit then comes back through read_events)."""
        w = self.workers.get(worker_id) if worker_id else None
        if w is None or not w.pid:
            return False
        if expected:
            w.expected_exit = True
        kill_pid(w.pid)
        return True

    def reap_idle(self, now: float, owns_objects: Callable[[str], bool] = lambda addr: False) -> None:
        """Stop idle workers beyond the CPU count once idle for IDLE_WORKER_TTL_S, oldest first;
        never one that ``owns_objects`` (its objects would be lost, and others may still use them).

        A worker reports that within STATS_PERIOD_S (0.5 s) of finishing the task that made
        them, well inside the idle time it needs to be stopped."""
        idle = [w for w in self.idle() if not (w.addr and owns_objects(w.addr))]
        extra = len([w for w in self.workers.values() if w.state in ("idle", "leased")]) - int(self.num_cpus)
        for w in sorted(idle, key=lambda w: w.idle_since):
            if extra <= 0:
                break
            if now - w.idle_since > IDLE_WORKER_TTL_S:
                w.expected_exit = True
                w.state = "stopping"
                kill_pid(w.pid, signal.SIGTERM)
                extra -= 1

    def pids(self) -> list[int]:
        """The zygote's and every worker's pid (for sampling)."""
        return [self.zygote_pid] + [w.pid for w in self.workers.values() if w.pid]

    def stop(self) -> None:
        """Kill every worker and the zygote, and wait for the zygote."""
        for w in list(self.workers.values()):
            if w.pid:
                kill_pid(w.pid)
        try:
            os.close(self._cmd)  # the zygote kills its children on EOF
        except OSError:
            pass
        if self.zygote_pid:
            kill_pid(self.zygote_pid)
            try:
                os.waitpid(self.zygote_pid, 0)
            except ChildProcessError:
                pass
