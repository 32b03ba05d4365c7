"""Process helpers: parent-death signals, liveness, session directories."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import time

from ..exceptions import MeshError
from ..store.spill import MARKER as SPILL_MARKER

_PR_SET_PDEATHSIG = 1

def _default_root() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "meshcompute")  # per-user, and cleaned at logout
    return f"/tmp/meshcompute-{os.getuid()}"


SESSIONS_ROOT = os.environ.get("MESH_SESSIONS_ROOT") or _default_root()
"""Where session directories live (one per node daemon, mode 0700): ``$MESH_SESSIONS_ROOT``,
else ``$XDG_RUNTIME_DIR/meshcompute``, else ``/tmp/meshcompute-<uid>``. It must be this
user's own directory (``ensure_root``): its contents say which pids to signal."""
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


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, as the kernel says (None if it is gone or unreadable)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def owned_by_us(pid: int) -> bool:
    """Whether ``pid`` is a live process of this user (the kernel's word, not a message's)."""
    try:
        return pid > 1 and os.stat(f"/proc/{int(pid)}").st_uid == os.getuid()
    except (OSError, ValueError):
        return False


def vouched_pid(kind: object, pid: object, zygote_pid: int) -> bool:
    """Whether the kernel vouches for the pid a process claims when it registers with its
    daemon, which signals it later (a worker it stops, a driver whose death it watches),
    so a message's word is not enough: a worker must be a child of the node's zygote, a
    driver a live process of this user; never pid 0 or 1, never the daemon or zygote."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid in (os.getpid(), zygote_pid):
        return False
    if kind == "worker":
        return parent_of(pid) == zygote_pid
    return kind == "driver" and owned_by_us(pid)


ACTOR_EXIT_CODE = 86
"""What an actor's process exits with after ``exit_actor()``: its daemon does not restart it."""
ACTOR_EXITED = "it called exit_actor()"
"""How ``describe_exit`` says so."""


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
        code = os.WEXITSTATUS(status)
        return ACTOR_EXITED if code == ACTOR_EXIT_CODE else f"exited with code {code}"
    return f"ended with status {status}"


class SessionsRootError(MeshError):
    """The sessions root is not this user's private directory."""


def ensure_root() -> str:
    """Make the sessions root (mode 0700), or check that the existing one is safe to use.

    Its session files name pids that ``mesh stop`` signals and directories that
    ``mesh clean`` removes, so a root made by someone else (a predictable name in
    /tmp can be taken first), or a link, is refused; one of ours that others can
    write is made private again.
    """
    parent = os.path.dirname(os.path.abspath(SESSIONS_ROOT))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(SESSIONS_ROOT, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(SESSIONS_ROOT)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SessionsRootError(f"The sessions directory {SESSIONS_ROOT} is not a directory (a link?). "
                                "Remove it, or set MESH_SESSIONS_ROOT to a directory of yours.")
    if st.st_uid != os.getuid():
        raise SessionsRootError(
            f"The sessions directory {SESSIONS_ROOT} belongs to uid {st.st_uid}, not to you (uid "
            f"{os.getuid()}): someone else created it. Remove it, or set MESH_SESSIONS_ROOT to a "
            "directory of yours.")
    if st.st_mode & 0o077:
        os.chmod(SESSIONS_ROOT, 0o700)
    return SESSIONS_ROOT


def root_is_ours() -> bool:
    """Whether the sessions root exists and is this user's private directory (never raises)."""
    try:
        st = os.lstat(SESSIONS_ROOT)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def new_session_dir() -> str:
    ensure_root()
    name = f"s{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}_{os.urandom(3).hex()}"
    path = os.path.join(SESSIONS_ROOT, name)
    os.mkdir(path, 0o700)
    return path


def arena_path(session_dir: str) -> str:
    """``/dev/shm/meshcompute_<root tag>_<session>``: the tag ties the arena to the
    sessions root, so a cleanup under one root never touches another's arenas."""
    return f"/dev/shm/{SHM_PREFIX}{_root_tag()}_{os.path.basename(session_dir)}"




def spill_dir_of(session_dir: str) -> str | None:
    """The spill directory a session's daemon recorded in its daemon.json."""
    try:
        with open(os.path.join(session_dir, "daemon.json")) as f:
            return json.load(f).get("spill_dir")
    except (OSError, ValueError):
        return None


def remove_session(session_dir: str, spill_dir: str | None = None) -> None:
    """Remove a node's arena, its spill files (wherever they are) and its session dir."""
    spill_dir = spill_dir or spill_dir_of(session_dir)
    try:
        os.unlink(arena_path(session_dir))
    except FileNotFoundError:
        pass
    if spill_dir and os.path.basename(os.path.normpath(session_dir)) in spill_dir:
        shutil.rmtree(spill_dir, ignore_errors=True)
    shutil.rmtree(session_dir, ignore_errors=True)


def _clean_spill_root(root: str, removed: list[str]) -> None:
    """Remove ``root/meshcompute_<session>`` spill dirs whose session dir is gone."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith(SHM_PREFIX) or not os.path.exists(os.path.join(path, SPILL_MARKER)):
            continue
        if not os.path.isdir(os.path.join(SESSIONS_ROOT, name[len(SHM_PREFIX):])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)


def clean_stale_sessions() -> list[str]:
    """Remove session dirs, arenas and spill files of daemons that are gone (e.g. SIGKILLed)."""
    removed = []
    try:
        names = os.listdir(SESSIONS_ROOT) if root_is_ours() else []  # never act on someone else's
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
    # Spill dirs kept outside session dirs (MESH_SPILL_DIR) whose session is gone.
    if os.environ.get("MESH_SPILL_DIR"):
        _clean_spill_root(os.environ["MESH_SPILL_DIR"], removed)
    # Arenas of this root whose session dir is gone and that no live daemon holds
    # (a daemon keeps a lock on its arena).
    prefix = f"{SHM_PREFIX}{_root_tag()}_"
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        names = []
    for name in names:
        session = name[len(prefix):]
        if not name.startswith(prefix) or not _SESSION_NAME.fullmatch(session):
            continue
        if os.path.isdir(os.path.join(SESSIONS_ROOT, session)) or _arena_in_use(os.path.join("/dev/shm", name)):
            continue
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except OSError:
            pass
    return removed


_SESSION_NAME = re.compile(r"s\d{14}_\d+_[0-9a-f]{6}")
"""What :func:`new_session_dir` names a session (arenas are named after it)."""


def _arena_in_use(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


def keys_for_session(session_dir: str):
    """The mesh's CURVE keys for processes of this node (None when not in a mesh)."""
    path = os.path.join(session_dir, "token")
    if not os.path.exists(path):
        return None
    from ..wire.auth import MeshKeys

    with open(path) as f:
        return MeshKeys.from_token(f.read().strip())
