"""The first process of a submitted job (node/jobs.py), run by path so that it imports nothing.

It leads the job's process group and runs the entrypoint under ``/bin/sh -c`` in it.
Its one duty: when the node's daemon dies -- even by SIGKILL, when it cannot stop
its jobs itself -- the kernel tells it (a parent-death signal) and it kills the
whole group, so no process of the job outlives its node.  Otherwise it waits and
ends as the entrypoint ended: the same exit code, or killed by the same signal
(``mesh job stop`` signals the whole group; this process lets the shell decide).

Usage: ``python job_leader.py ENTRYPOINT DAEMON_PID``
"""

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _kill_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)


def main() -> None:
    entrypoint, daemon_pid = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGUSR1, _kill_group)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before the signal was asked for
        _kill_group()
    # A handler, not SIG_IGN (which the shell would inherit): the group's SIGTERM is for the shell.
    signal.signal(signal.SIGTERM, lambda *_: None)
    code = subprocess.Popen(["/bin/sh", "-c", entrypoint]).wait()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
