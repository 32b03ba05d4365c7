"""Entry point of a worker process (called in the child right after the fork)."""

from __future__ import annotations

import os
import random
import signal
import sys

from . import context, ids
from .procutil import set_parent_death_signal


def main(session_dir: str, daemon_addr: str, worker_id: str) -> None:
    set_parent_death_signal(signal.SIGKILL)
    ids.reset_after_fork()
    random.seed()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log_path = os.path.join(session_dir, "logs", f"worker-{worker_id}.log")
    # Worker output goes to its log file; the driver's terminal is not ours.
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    except OSError:
        pass
    from .core import Core
    from .executor import Executor

    core = Core(session_dir=session_dir, daemon_addr=daemon_addr, kind="worker", worker_id=worker_id)
    context.core = core
    executor = Executor(core)
    core.executor = executor
    core.start()
    executor.run()
    core.close()
