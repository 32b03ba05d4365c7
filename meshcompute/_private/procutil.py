"""Process helpers: parent-death signals, liveness, session directories."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import time

_PR_SET_PDEATHSIG = 1

SESSIONS_ROOT = os.environ.get("MESH_SESSIONS_ROOT", f"/tmp/meshcompute-{os.getuid()}")
"""Where session directories live (one per node daemon, mode 0700)."""
SHM_PREFIX = "meshcompute_"
"""Prefix of arena files in /dev/shm."""


def _root_tag() -> str:
    import hashlib

    return hashlib.blake2b(os.path.abspath(SESSIONS_ROOT).encode(), digest_size=4).hexdigest()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # not Linux: the liveness polls still catch it
        pass


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        hint = {signal.SIGKILL: " (killed: out of memory, or killed by someone)",
                signal.SIGSEGV: " (segmentation fault)"}.get(sig, "")
        return f"killed by signal {sig} {name}{hint}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with status {status}"


def new_session_dir() -> str:
    os.makedirs(SESSIONS_ROOT, mode=0o755, exist_ok=True)
    name = f"s{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}_{os.urandom(3).hex()}"
    path = os.path.join(SESSIONS_ROOT, name)
    os.mkdir(path, 0o700)
    return path


def arena_path(session_dir: str) -> str:
    """``/dev/shm/meshcompute_<root tag>_<session>``: the tag ties the arena to the
    sessions root, so a cleanup under one root never touches another's arenas."""
    return f"/dev/shm/{SHM_PREFIX}{_root_tag()}_{os.path.basename(session_dir)}"


def remove_session(session_dir: str) -> None:
    try:
        os.unlink(arena_path(session_dir))
    except FileNotFoundError:
        pass
    shutil.rmtree(session_dir, ignore_errors=True)


def clean_stale_sessions() -> list[str]:
    """Remove session dirs and arenas of daemons that are gone (e.g. SIGKILLed)."""
    removed = []
    try:
        names = os.listdir(SESSIONS_ROOT)
    except FileNotFoundError:
        names = []
    for name in names:
        path = os.path.join(SESSIONS_ROOT, name)
        info = os.path.join(path, "daemon.json")
        if not os.path.isdir(path) or not name.startswith("s"):
            continue
        pid = 0
        try:
            with open(info) as f:
                pid = int(json.load(f).get("pid", 0))
        except (OSError, ValueError):
            # No info file: a daemon that died while starting, or one starting now.
            try:
                if time.time() - os.stat(path).st_mtime < 30:
                    continue
            except OSError:
                continue
        if not pid_alive(pid):
            remove_session(path)
            removed.append(path)
    # Arenas of this root whose session dir is gone.
    prefix = f"{SHM_PREFIX}{_root_tag()}_"
    try:
        for name in os.listdir("/dev/shm"):
            if name.startswith(prefix):
                session = name[len(prefix):]
                if not os.path.isdir(os.path.join(SESSIONS_ROOT, session)):
                    try:
                        os.unlink(os.path.join("/dev/shm", name))
                        removed.append(name)
                    except OSError:
                        pass
    except FileNotFoundError:
        pass
    return removed


def keys_for_session(session_dir: str):
    """The mesh's CURVE keys for processes of this node (None when not in a mesh)."""
    path = os.path.join(session_dir, "token")
    if not os.path.exists(path):
        return None
    from .auth import MeshKeys

    with open(path) as f:
        return MeshKeys.from_token(f.read().strip())
