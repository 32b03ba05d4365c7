"""``runtime_env``: what a task or actor needs around it, checked and packaged where it is submitted.

Supported, as in Ray:

* ``env_vars``: ``{name: value}`` strings, set around each task (for an actor's life);
* ``working_dir``: a local directory (or ``.zip``); the task runs in a copy of it,
  importable, unpacked once per node;
* ``py_modules``: local directories (or ``.zip`` files) put on the import path;
* ``pip``: a list of requirements (or the path of a requirements file, or
  ``{"packages": ..., "pip_check": bool}``), installed once per node into a
  virtualenv that sees the node's own packages (so pip adds only what is missing
  or in another version); the tasks of an environment run on workers of their
  own, started in that virtualenv (worker/pip_env.py), and so do its actors.  A
  failed installation raises ``RuntimeEnvSetupError`` with pip's words (an
  actor's calls raise ``ActorDiedError`` with them).  Requirements that are local
  paths must exist on every node;
* ``worker_process_setup_hook``: a function (or the ``"module.function"`` name of
  one) that each worker process runs once, before the first task or actor of that
  environment (worker processes are shared between environments, so it runs where
  and when one first needs it, not when the process starts).

Directories travel once: each is zipped, named by the hash of its content, put in
the object store by the submitting process, and unpacked by each node on first use.
Anything else (``conda``, ``uv``, ``container``, ...) raises ``ValueError``: nothing
is accepted and ignored.  A driver's ``init(runtime_env=...)`` is the default of
its tasks and actors; theirs override it key by key (``env_vars`` merge).  A task or
actor submitted from inside a task or actor inherits that one's environment, with its
own fields over it in the same way (Ray's rule): the packages travel as the parent got
them, so a child on another node unpacks the same ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from typing import Any

from ..wire.serialization import dumps_function
from ..worker.pip_env import pip_wire

SUPPORTED = ("env_vars", "working_dir", "py_modules", "worker_process_setup_hook", "pip")
MAX_PACKAGE_BYTES = 100 * 1024 * 1024
"""A working_dir or py_module zips to at most this (as Ray's 100 MiB limit): bigger data
belongs in the object store or on shared storage."""
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"}

_uploaded: dict[str, Any] = {}  # content hash -> the ref this process keeps alive for its packages
_lock = threading.Lock()


def check(env: Any) -> dict:
    """Validate a runtime_env; returns a plain dict (raises ValueError saying what is wrong)."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise ValueError(f"runtime_env must be a dict, got {type(env).__name__}")
    unknown = sorted(set(env) - set(SUPPORTED))
    if unknown:
        raise ValueError(f"runtime_env key(s) {', '.join(map(repr, unknown))} are not supported; meshcompute "
                         f"supports {', '.join(SUPPORTED)}.")
    out: dict = {}
    if env.get("env_vars"):
        ev = env["env_vars"]
        if not isinstance(ev, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ev.items()):
            raise ValueError("runtime_env['env_vars'] must map str to str")
        out["env_vars"] = dict(ev)
    if env.get("working_dir"):
        out["working_dir"] = _local_path(env["working_dir"], "working_dir")
    if env.get("py_modules"):
        mods = env["py_modules"]
        if not isinstance(mods, (list, tuple)):
            raise ValueError("runtime_env['py_modules'] must be a list of local directories or .zip files")
        out["py_modules"] = [_local_path(m, "py_modules") for m in mods]
    if env.get("pip"):
        out["pip"] = _check_pip(env["pip"])
    hook = env.get("worker_process_setup_hook")
    if hook:
        if not (callable(hook) or (isinstance(hook, str) and "." in hook.strip("."))):
            raise ValueError("runtime_env['worker_process_setup_hook'] must be a function or the "
                             f"'module.function' name of one, got {hook!r}")
        out["worker_process_setup_hook"] = hook
    return out


def _check_pip(value: Any) -> dict:
    """Ray's forms of ``pip``: a list of requirements, the path of a requirements file, or
    ``{"packages": either, "pip_check": bool}``; returns ``{"packages": [...], "pip_check": bool}``."""
    pip_check = False
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"packages", "pip_check", "pip_version"})
        if unknown:
            raise ValueError(f"runtime_env['pip'] has unknown field(s) {unknown}: give 'packages' and "
                             "optionally 'pip_check'")
        if value.get("pip_version"):
            raise ValueError("runtime_env['pip']['pip_version'] is not supported: environments are "
                             "installed with the pip of the node's Python; remove it")
        pip_check = bool(value.get("pip_check", False))
        value = value.get("packages")
    if isinstance(value, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(value))
        try:
            with open(path) as f:
                value = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise ValueError(f"runtime_env['pip']: cannot read the requirements file {path}: {e}") from None
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(r, str) and r.strip() and "\n" not in r for r in value):
        raise ValueError("runtime_env['pip'] must be a non-empty list of requirement strings "
                         "(as in a requirements file), the path of a requirements file, or "
                         "{'packages': ..., 'pip_check': bool}")
    return {"packages": [r.strip() for r in value], "pip_check": pip_check}


def merge(base: dict, over: dict) -> dict:
    """A task's runtime_env over its driver's: key by key, env_vars merged."""
    out = dict(base, **over)
    if "env_vars" in base and "env_vars" in over:
        out["env_vars"] = dict(base["env_vars"], **over["env_vars"])
    return out


def inherit(parent: dict, child: dict) -> dict:
    """A travelling environment (``wire``) of a task or actor submitted from inside another:
    the parent's, with the child's own fields over it (env_vars merged), as in Ray."""
    if not parent:
        return child
    out = merge(parent, child)
    out["given"] = merge(parent.get("given", {}), child.get("given", {}))
    return out


def describe(env: dict) -> dict:
    """A checked runtime_env as ``get_runtime_context().get_runtime_env_string()`` shows it:
    JSON-ready, with directories as the absolute paths given where it was submitted."""
    return {k: list(v) if isinstance(v, (list, tuple)) else _hook_name(v) if callable(v) else v
            for k, v in env.items()}


def _hook_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def wire(env: dict, put: Any) -> dict:
    """What travels with the task: directories replaced by (hash, ref) of their zip, and the
    env as it was given (``describe``) for the runtime context."""
    out: dict = {"given": describe(env)} if env else {}
    if env.get("env_vars"):
        out["env_vars"] = env["env_vars"]
    if env.get("working_dir"):
        out["working_dir"] = _package(env["working_dir"], put)
    if env.get("py_modules"):
        # A module directory is importable by its name: it is packed under that name.
        out["py_modules"] = [_package(m, put, os.path.basename(m) if os.path.isdir(m) else "")
                             for m in env["py_modules"]]
    if env.get("pip"):
        out["pip"] = pip_wire(env["pip"]["packages"], env["pip"]["pip_check"])
    hook = env.get("worker_process_setup_hook")
    if hook:  # a name travels as it is, a function pickled (by value when it is __main__'s)
        out["worker_process_setup_hook"] = hook if isinstance(hook, str) else dumps_function(hook, "setup hook")
    return out


def _local_path(value: Any, key: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"runtime_env[{key!r}] must be a local path, got {value!r}")
    path = os.path.abspath(os.fspath(value))
    if "://" in os.fspath(value):
        raise ValueError(f"runtime_env[{key!r}]: remote URIs are not supported ({value}); give a local path")
    if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".zip"))):
        raise ValueError(f"runtime_env[{key!r}]: {path} is not a directory or a .zip file")
    return path


def _package(path: str, put: Any, prefix: str = "") -> tuple[str, Any]:
    data = zip_package(path, prefix)
    sha = hashlib.sha256(data).hexdigest()[:32]
    with _lock:
        ref = _uploaded.get(sha)
        if ref is None:
            ref = _uploaded[sha] = put(data)
    return sha, ref


def zip_package(path: str, prefix: str = "") -> bytes:
    """A deterministic zip of a directory (sorted, fixed timestamps; its files under
    ``prefix/`` if given), or the .zip itself."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                for name in sorted(files):
                    full = os.path.join(root, name)
                    info = zipfile.ZipInfo(os.path.join(prefix, os.path.relpath(full, path)),
                                           date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = (os.stat(full).st_mode & 0xFFFF) << 16
                    with open(full, "rb") as f:
                        z.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
        data = buf.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise ValueError(f"runtime_env: {path} packs to {len(data) >> 20} MiB, more than "
                         f"{MAX_PACKAGE_BYTES >> 20} MiB; put large data in the object store instead")
    return data


def forget_uploads() -> None:
    """shutdown(): the refs to packaged directories go with the session."""
    with _lock:
        _uploaded.clear()
