"""Runtime environments where they take effect: in the worker, around a task or for an actor's life.

What travels (api/runtime_env.py makes it): ``{"env_vars": {name: value},
"working_dir": (sha, ref), "py_modules": [(sha, ref), ...]}``, each directory
a zip in the object store, named by the hash of its content.  A node unpacks
each one once into ``<session>/runtime_envs/<sha>`` and every worker there
uses that copy.  A task's environment is applied around it and undone after
(variables restored, the previous directory and import path back); an actor's
stays for its life.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import io
import os
import shutil
import sys
import traceback
import zipfile
from collections.abc import Iterator
from typing import Any

from .. import exceptions as exc
from .pip_env import ENV_VAR as PIP_ENV_VAR

# The environment of the running task as it travelled (api/runtime_env.py wire()):
# its "given" entry is what the user wrote, the rest what was applied.
_CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("meshcompute_runtime_env", default=None)
_for_life: dict = {}  # an actor's environment, as it travelled


def current() -> dict:
    """The runtime_env of the running task (or of this actor), as it was given; {} if none."""
    return inherited().get("given", {})


def inherited() -> dict:
    """The running task's (or this actor's) environment as it travelled: what tasks and
    actors it submits start from, as in Ray; {} outside any."""
    env = _CURRENT.get()
    return _for_life if env is None else env


def _unpacked(sha: str, ref: Any) -> str:
    """The node's copy of a packaged directory, unpacked on first use (atomically).

    Raises RuntimeEnvSetupError when the package cannot be fetched or unpacked."""
    from ..owner import context

    core = context.core
    root = os.path.join(core.session_dir, "runtime_envs")
    path = os.path.join(root, sha)
    if os.path.isdir(path):
        return path
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(root, exist_ok=True)
        data = core.get([ref])[0]
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(tmp)
    except (OSError, zipfile.BadZipFile, exc.ObjectLostError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise exc.RuntimeEnvSetupError(f"could not unpack a runtime_env package ({sha}) into {path}: "
                                       f"{type(e).__name__}: {e}") from None
    try:
        os.rename(tmp, path)
    except OSError:  # another worker of this node unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextlib.contextmanager
def applied(env: dict) -> Iterator[None]:
    """Apply ``env`` for the duration of the block, then restore what was there.

    A worker runs tasks of different environments one after another: modules
    imported from this one's directories are forgotten after the task, so the next
    task imports its own version of a module of the same name."""
    saved_env = {k: os.environ.get(k) for k in env.get("env_vars", {})}
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    dirs: list[str] = []
    token = _CURRENT.set(env)
    try:
        dirs = apply(env)
        yield
    finally:
        _CURRENT.reset(token)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        if dirs:
            prefixes = tuple(d + os.sep for d in dirs)
            for name, mod in list(sys.modules.items()):
                if (getattr(mod, "__file__", None) or "").startswith(prefixes):
                    del sys.modules[name]


def apply_for_life(env: dict) -> None:
    """Apply an actor's ``env`` for the life of its process."""
    global _for_life
    apply(env)
    _for_life = env


def apply(env: dict) -> list[str]:
    """Apply ``env`` to this process (an actor's, for its whole life); returns its directories."""
    if env.get("pip") and os.environ.get(PIP_ENV_VAR) != env["pip"][0]:
        # Leases of a pip environment go only to its workers: this would be a scheduling bug.
        serves = os.environ.get(PIP_ENV_VAR) or "the node's own packages"
        raise exc.RuntimeEnvSetupError(f"this worker does not serve the pip environment {env['pip'][0]} "
                                       f"(it serves {serves})")
    os.environ.update(env.get("env_vars", {}))
    dirs = []
    for sha, ref in env.get("py_modules", ()):
        dirs.append(_unpacked(sha, ref))
        sys.path.insert(0, dirs[-1])
    if env.get("working_dir"):
        dirs.append(_unpacked(*env["working_dir"]))
        os.chdir(dirs[-1])
        sys.path.insert(0, dirs[-1])
    if env.get("worker_process_setup_hook"):  # last: it may import from the directories above
        _run_setup_hook(env["worker_process_setup_hook"])
    return dirs


_hooks_run: set = set()  # the setup hooks this process has run (a hook runs once per process)


def _run_setup_hook(hook: bytes | str) -> None:
    """Run a ``worker_process_setup_hook`` (pickled, or ``"module.function"``) once in this process.

    Raises RuntimeEnvSetupError if it cannot be loaded or raises; it is tried again
    before the next task that needs it."""
    if hook in _hooks_run:
        return
    what = hook if isinstance(hook, str) else "(a function)"
    try:
        if isinstance(hook, str):
            module, _, name = hook.rpartition(".")
            fn = getattr(importlib.import_module(module), name)
        else:
            from ..wire.serialization import deserialize

            fn = deserialize(hook, [])
            what = getattr(fn, "__qualname__", what)
        fn()
    except Exception as e:  # noqa: BLE001 - any failure of the hook fails the setup
        raise exc.RuntimeEnvSetupError(f"worker_process_setup_hook {what} failed: {type(e).__name__}: {e}\n"
                                       f"{traceback.format_exc()}") from None
    _hooks_run.add(hook)


class WithEnv:
    """A remote function with its runtime environment: what a task ships when it has one.

    The function travels pickled inside, and is unpickled only once the environment
    is applied: it may live in a module of the working_dir or py_modules."""

    def __init__(self, fn_bytes: bytes, env: dict, name: str) -> None:
        self.fn_bytes = fn_bytes
        self.env = env
        self.__name__ = self.__qualname__ = name

    def __getstate__(self) -> dict:
        return {"fn_bytes": self.fn_bytes, "env": self.env, "__name__": self.__name__,
                "__qualname__": self.__qualname__}

    def _load(self) -> Any:
        fn = self.__dict__.get("_fn")
        if fn is None:
            from ..wire.serialization import deserialize

            fn = self.__dict__["_fn"] = deserialize(self.fn_bytes, [])
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with applied(self.env):
            fn = self._load()
            if not inspect.isgeneratorfunction(fn):
                return fn(*args, **kwargs)
        return self._generate(fn, args, kwargs)

    def _generate(self, fn: Any, args: tuple, kwargs: dict) -> Iterator[Any]:
        with applied(self.env):
            yield from fn(*args, **kwargs)
