"""Entry point of a worker process (called in the child right after the fork)."""

from __future__ import annotations

import os
import random
import signal
import sys

from ..host.proctitle import set_title
from ..host.sessions import keys_for_session, set_parent_death_signal
from ..owner import context
from ..wire import ids


def main(session_dir: str, node_id: str, host: str | None, worker_id: str, zygote_pid: int) -> int:
    """Serve as a worker until told to stop; returns the process's exit code."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != zygote_pid:
        # The zygote died between the fork and the line above: the signal that would
        # have ended this worker with it will never come, and nobody is left to serve.
        os._exit(0)
    set_title("mesh-worker", node_id[:8])
    ids.reset_after_fork()
    random.seed()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log_path = os.path.join(session_dir, "logs", f"worker-{worker_id}.log")
    from ..observe.output import OutputShipper, OutputTee

    # Worker output goes to its log file (the driver's terminal is not ours); what
    # tasks print is also shipped to their owner's driver (log_stream.py).
    shipper = OutputShipper()
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = OutputTee(os.fdopen(1, "w", buffering=1, closefd=False), shipper, 1)
        sys.stderr = OutputTee(os.fdopen(2, "w", buffering=1, closefd=False), shipper, 2)
    except OSError:
        pass
    from ..owner.runtime import Core
    from .executor import Executor
    from .inbox import WorkerInbox

    with open(os.path.join(session_dir, "daemon.addr")) as f:
        daemon_addr = f.read().strip()
    core = Core(session_dir=session_dir, daemon_addr=daemon_addr, kind="worker", node_id=node_id,
                host=host, keys=keys_for_session(session_dir), worker_id=worker_id,
                still_wanted=lambda: os.getppid() == zygote_pid)
    context.core = core
    executor = Executor(core)
    inbox = WorkerInbox(core.io, executor,
                        lambda msg, frames: core.tasks.on_tasks_done(core.address, msg, frames),
                        lambda: core.blocked, core.note_activity)
    inbox.output = shipper
    core.attach_worker(executor, inbox)
    shipper.attach(core, executor)
    core.start()
    executor.run()
    if executor.exit_code is not None:  # exit_actor(): what the actor sent goes out before it ends
        core.io.call(inbox.flush)
    core.close()
    return executor.exit_code or 0
