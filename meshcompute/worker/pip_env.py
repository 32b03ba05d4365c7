"""A worker of a ``pip`` runtime_env: the environment installed once per node, then the worker.

The zygote starts this module in a fresh interpreter for a worker of environment
``H`` (its ``P`` command).  Under a per-environment lock it makes a virtualenv
in ``<session>/runtime_envs/pip-<H>`` that sees the node's own packages (a
``.pth`` file adds the node's site directories after the environment's) and
installs the requirements into it -- once per node: later workers of ``H``
find it ready.  pip then installs only what the node lacks or has in another
version, as in Ray, and the environment's versions come first on the path.
The process then execs the virtualenv's interpreter as a worker.

A fresh interpreter, not a fork of the zygote: the zygote has numpy and
cloudpickle imported already, and a module in memory would shadow the
environment's version of it.  Such a worker serves only tasks and actors of its
environment (the daemon pools workers per environment).

If the installation fails, its reason goes to ``pip-<H>.failed`` (the end of
pip's output) and the process exits; the daemon refuses the lease requests
waiting for this environment with that reason (``RuntimeEnvSetupError`` at the
caller), and the next request tries the installation again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import site
import subprocess
import sys
import time

from ..owner.records import PIP_ENV_VAR as ENV_VAR  # set in a worker of a pip environment to its hash

INSTALL_FAILED = 3
"""The exit code of a worker whose environment could not be installed (its reason is in the
environment's ``.failed`` file); any other early exit is not an installation's failure."""

PIP_TIMEOUT_S = 900.0
"""The longest one installation may take (s): building wheels from source can be slow."""


def pip_wire(packages: list[str], pip_check: bool) -> tuple[str, list[str], list[str]]:
    """``(hash, requirements, options)``: a pip environment as tasks and lease requests carry it.

    The hash names the environment on every node; a daemon computes it again from
    the rest (never trusting a peer's name for a directory)."""
    options = ["pip_check"] if pip_check else []
    digest = hashlib.sha256(repr((list(packages), options)).encode()).hexdigest()[:24]
    return digest, list(packages), options


def checked(pip: object) -> tuple[str, list[str], list[str]]:
    """A pip environment as a peer sent it, checked and hashed again here (a peer's name
    for it is not trusted: it names a directory).  ValueError if malformed."""
    if not isinstance(pip, (tuple, list)) or len(pip) != 3:
        raise ValueError("malformed pip environment")
    try:
        _, requirements, options = pip
    except (TypeError, ValueError):
        raise ValueError("malformed pip environment") from None
    # One line each (pip splits a requirements file at any line break, not only "\n").
    if (not isinstance(requirements, list) or not requirements or len(requirements) > 1000
            or not all(isinstance(r, str) and 0 < len(r) < 4096 and len(r.splitlines()) == 1 for r in requirements)
            or not isinstance(options, list) or not all(isinstance(o, str) and o == "pip_check" for o in options)):
        raise ValueError("malformed pip environment")
    return pip_wire(requirements, "pip_check" in options)


def failure(session_dir: str, env: str, reason: str) -> str:
    """Why a worker of ``env`` exited before it served (``reason``: how it exited): pip's words
    when its installation failed."""
    if reason == f"exited with code {INSTALL_FAILED}":
        try:
            with open(failure_path(session_dir, env)) as f:
                return f"its pip runtime_env could not be installed: {f.read()}"
        except OSError:
            pass
    return f"the worker process of its pip runtime_env exited before it started ({reason})"


def env_dir(session_dir: str, env: str) -> str:
    return os.path.join(session_dir, "runtime_envs", f"pip-{env}")


def failure_path(session_dir: str, env: str) -> str:
    return env_dir(session_dir, env) + ".failed"


def requirements_path(session_dir: str, env: str) -> str:
    return env_dir(session_dir, env) + ".txt"


def install(session_dir: str, env: str, log, started: float) -> str | None:
    """Install environment ``env`` unless it is there; returns why it failed, or None.
    ``started``: when this worker was asked for (a failure since then is its answer too)."""
    target = env_dir(session_dir, env)
    ready = os.path.join(target, ".meshcompute-ready")
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installation per node; the others wait for it
        if os.path.exists(ready):
            return None
        try:  # another worker of this environment failed since this one started: so would this
            if os.path.getmtime(failure_path(session_dir, env)) >= started:
                with open(failure_path(session_dir, env)) as f:
                    return f.read()
            os.unlink(failure_path(session_dir, env))  # an older failure: try again
        except FileNotFoundError:
            pass
        with open(requirements_path(session_dir, env)) as f:
            options = f.readline().split()[2:]  # "# meshcompute: pip_check": a comment to pip
        shutil.rmtree(target, ignore_errors=True)
        why = _run([sys.executable, "-m", "venv", "--without-pip", target], log)
        if why is None:
            _inherit_site_dirs(target)
            python = os.path.join(target, "bin", "python")
            why = _run([python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                        "-r", requirements_path(session_dir, env)], log)
            if why is None and "pip_check" in options:
                # A conflict between the environment's packages and the node's fails the
                # setup instead of the first task that trips on it.
                why = _run([python, "-m", "pip", "check", "--disable-pip-version-check"], log)
        if why is not None:
            shutil.rmtree(target, ignore_errors=True)
            with open(failure_path(session_dir, env), "w") as f:
                f.write(why)
            return why
        open(ready, "w").close()
        return None


def _inherit_site_dirs(target: str) -> None:
    """Make the virtualenv see this interpreter's packages, after its own.

    ``site.addsitedir`` (not a plain path line) so that the node's own ``.pth``
    files -- an editable install of meshcompute, say -- are read too."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own = os.path.join(target, "lib", ver, "site-packages")
    os.makedirs(own, exist_ok=True)
    with open(os.path.join(own, "_meshcompute_base.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n")


def _run(cmd: list[str], log) -> str | None:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=PIP_TIMEOUT_S, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{' '.join(cmd[2:4])} failed: {type(e).__name__}: {e}"
    log.write(proc.stdout)
    log.flush()
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        return f"{' '.join(cmd[2:4])} exited with {proc.returncode}:\n{tail}"
    return None


def main(argv: list[str]) -> int:
    mode, session_dir, node_id, host, worker_id, zygote_pid, env = argv[:7]
    started = time.time()
    if mode == "install":
        from ..host.sessions import set_parent_death_signal

        set_parent_death_signal(signal.SIGKILL)  # an installation outlives no zygote
        if os.getppid() != int(zygote_pid):
            return 0
        log_path = os.path.join(session_dir, "logs", f"worker-{worker_id}.log")
        with open(log_path, "a") as log:
            why = install(session_dir, env, log, started)
            if why is not None:
                log.write(f"the pip runtime_env {env} could not be installed: {why}\n")
                return INSTALL_FAILED
        # Become the worker: the virtualenv's interpreter.
        os.environ[ENV_VAR] = env
        python = os.path.join(env_dir(session_dir, env), "bin", "python")
        os.execv(python, [python, "-m", "meshcompute.worker.pip_env", "serve", *argv[1:7]])
    from .main import main as worker_main

    return worker_main(session_dir, node_id, None if host == "-" else host, worker_id, int(zygote_pid))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
