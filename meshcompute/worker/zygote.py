"""The fork server: a pre-imported, single-threaded process that forks workers.

Forked from the daemon before the daemon opens any socket or thread, it imports
what workers need (numpy when installed, cloudpickle, the executor) once; each
worker is then a ``fork()`` away, ready in milliseconds and sharing those pages.

Pipe protocol, one ASCII line per message:
  daemon -> zygote: ``F <worker_id>``          fork a worker
                    ``P <worker_id> <env>``    start a worker of pip environment ``env``
                                               in a fresh interpreter (worker/pip_env.py)
                    ``K <pid> <signal>``         signal a worker
  zygote -> daemon: ``S <worker_id> <pid>``    a worker started
                    ``X <pid> <wait status>``  a worker exited
The zygote dies with the daemon (parent-death signal, and EOF on its pipe), and
every worker dies with the zygote.
"""

from __future__ import annotations

import os
import select
import signal
import sys

from ..host.proctitle import set_title
from ..host.sessions import set_parent_death_signal


def run_zygote(cmd_r: int, evt_w: int, session_dir: str, node_id: str, host: str | None) -> None:
    set_parent_death_signal(signal.SIGKILL)
    set_title("mesh-zygote", node_id[:8])
    os.setpgid(0, 0)
    try:
        import numpy  # noqa: F401 - preloaded so workers share it
    except ImportError:
        pass
    from ..host.sessions import keys_for_session
    from ..owner import runtime  # noqa: F401 - the worker's runtime, preloaded so workers share its pages
    from . import executor, inbox  # noqa: F401
    from . import main as worker_main  # noqa: F401

    # Derive the mesh keys once (scrypt is deliberately slow); workers inherit them.
    keys_for_session(session_dir)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()
    buf = b""

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            _write(evt_w, f"X {pid} {status}\n")

    while True:
        try:
            ready, _, _ = select.select([cmd_r, wake_r], [], [], 1.0)
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
        reap()
        if cmd_r not in ready:
            continue
        data = os.read(cmd_r, 65536)
        if not data:  # the daemon is gone
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os._exit(0)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split()
            if not parts:
                continue
            if parts[0] in ("F", "P"):
                worker_id = parts[1]
                zygote_pid = os.getpid()
                pid = os.fork()
                if pid == 0:
                    os.close(cmd_r)
                    os.close(evt_w)
                    os.close(wake_r)
                    os.close(wake_w)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    code = 1
                    try:
                        if parts[0] == "P":  # a new interpreter: same pid, so reported as any other
                            os.execv(sys.executable, [sys.executable, "-m", "meshcompute.worker.pip_env", "install",
                                                      session_dir, node_id, host or "-", worker_id,
                                                      str(zygote_pid), parts[2]])
                        code = worker_main.main(session_dir, node_id, host, worker_id, zygote_pid)
                    except BaseException:  # noqa: BLE001
                        import traceback

                        traceback.print_exc()
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                children.add(pid)
                _write(evt_w, f"S {worker_id} {pid}\n")
            elif parts[0] == "K":
                try:
                    os.kill(int(parts[1]), int(parts[2]))
                except (ProcessLookupError, ValueError):
                    pass


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]
