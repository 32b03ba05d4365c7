"""The public functions: init/shutdown, get/put/wait, cancel/kill, cluster info."""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .. import exceptions as _exc
from ..host.launcher import find_node, start_node
from ..host.sessions import keys_for_session, remove_session
from ..owner import context
from ..owner.jobs import register_driver
from ..owner.object_ref import ObjectRef
from ..owner.runtime import Core
from ..wire.messages import Msg
from . import task_context
from .remote import ActorHandle, make_remote
from .runtime_env import check as check_runtime_env
from .runtime_env import forget_uploads
from .runtime_env import merge as merge_runtime_env

log = logging.getLogger("meshcompute")

_lock = threading.RLock()
_daemon_proc: subprocess.Popen | None = None
_session_dir: str | None = None
_atexit_registered = False


def _ensure_log_handler(fmt: str | None = None) -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt or "(meshcompute) %(levelname)s: %(message)s"))
        log.addHandler(handler)


_NEUTRAL = {
    "local_mode": (False, "local_mode is deprecated in Ray and not supported: call the function directly "
                          "(f.__wrapped__(...)) to debug it in this process"),
    "include_dashboard": (None, "there is no dashboard: `mesh top` shows the mesh live, `mesh status` and "
                                "mesh.util.state list it"),
    "dashboard_host": (None, "there is no dashboard (see `mesh top`)"),
    "dashboard_port": (None, "there is no dashboard (see `mesh top`)"),
    "job_config": (None, "pass runtime_env= and namespace= to init() directly"),
    "labels": (None, "nodes have no labels; give them custom resources (mesh start --resources)"),
    "_system_config": (None, "meshcompute has no system config overrides"),
    "_temp_dir": (None, "session directories live under $XDG_RUNTIME_DIR/meshcompute (or MESH_SESSIONS_ROOT)"),
}
"""Ray ``init`` options meshcompute has no use for: accepted at a value that changes
nothing (False, None, or empty), refused otherwise with what to do instead."""


def _check_ray_options(options: dict) -> None:
    for key, value in options.items():
        if key not in _NEUTRAL:
            raise TypeError(f"init() got an unexpected keyword argument {key!r}")
        neutral, instead = _NEUTRAL[key]
        if value not in (neutral, False, None) and value != {}:
            raise ValueError(f"init({key}={value!r}) is not supported: {instead}")


def _start_embedded(num_cpus, num_gpus, resources, object_store_memory) -> dict:
    global _daemon_proc, _session_dir
    # PDEATHSIG follows the thread that forked: only safe from the main thread.
    parent = os.getpid()
    proc, info = start_node(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                            object_store_memory=object_store_memory, parent_pid=parent)
    _daemon_proc = proc
    _session_dir = info["session_dir"]
    return info


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    runtime_env: dict | None = None,
    configure_logging: bool = True,
    logging_level: int | str = logging.INFO,
    logging_format: str | None = None,
    **ray_options: Any,
) -> dict:
    """Connect this process to a mesh, starting an embedded local node if needed.

    Args:
        address: ``None`` connects to a node started with ``mesh start`` on this
            machine if there is one (or ``$MESH_ADDRESS``), else starts an embedded
            node that lives as long as this process. ``"local"`` always starts an
            embedded node; ``"auto"`` requires a running one.  ``"HOST:PORT"`` of a
            node of this machine connects to it; of a node elsewhere, starts a node
            here that joins the mesh through it for this driver (offering no CPU
            unless ``num_cpus``; it needs the mesh's token in ``$MESH_TOKEN``) and
            stops when the driver exits, so the driver's objects have a local store.
            ConnectionError says what is wrong when nobody answers there or the
            token is missing or not the mesh's.
        num_cpus, num_gpus, resources: what the embedded node offers (default: every
            CPU, every detected GPU).
        object_store_memory: bytes of shared memory for large objects (default 30%
            of RAM).
        namespace: the namespace for named actors (default: a fresh one).
        ignore_reinit_error: return quietly if already initialized.
        log_to_driver: print what tasks and actors print (their stdout and stderr
            lines, prefixed ``(name pid=..., node=...)``) on this process's stderr.
        runtime_env: the default ``runtime_env`` of this driver's tasks and actors
            (``env_vars``, ``working_dir``, ``py_modules``, ``worker_process_setup_hook``;
            see api/runtime_env.py).
        configure_logging, logging_level, logging_format: meshcompute's own log
            lines (on stderr unless the program configured logging itself).

    Ray's other ``init`` options are accepted only at values that change nothing
    here (``local_mode=False``, ``include_dashboard=None/False``, ...); any other
    value raises ``ValueError`` saying what to use instead.

    Returns a dict describing the node (``node_id``, ``session_dir``, ...).
    """
    global _atexit_registered
    with _lock:
        if context.core is not None:
            if ignore_reinit_error:
                return {"node_id": context.core.node_id, "session_dir": context.core.session_dir}
            raise RuntimeError("meshcompute is already initialized; call shutdown() first, "
                               "or pass ignore_reinit_error=True")
        _check_ray_options(ray_options)
        if resources and "GPU" in resources:  # GPUs given as a resource are the node's devices
            from ..node.config import gpu_count

            gpu_count(num_gpus, resources["GPU"])  # ValueError when they are not a whole number
        default_env = check_runtime_env(runtime_env)
        if os.environ.get("MESH_JOB_RUNTIME_ENV"):  # a submitted job's driver: its tasks inherit the job's
            default_env = merge_runtime_env(check_runtime_env(json.loads(os.environ["MESH_JOB_RUNTIME_ENV"])),
                                            default_env)
        if configure_logging:
            _ensure_log_handler(logging_format)
            log.setLevel(logging_level)
        address = address or os.environ.get("MESH_ADDRESS")
        if address is None:
            info = find_node(None)
            if info is None:
                info = _start_embedded(num_cpus, num_gpus, resources, object_store_memory)
        elif address == "local":
            info = _start_embedded(num_cpus, num_gpus, resources, object_store_memory)
        elif address == "auto":
            info = find_node(None)
            if info is None:
                raise ConnectionError("No meshcompute node is running on this machine. Start one with "
                                      "`mesh start`, or call init() without an address for an embedded node.")
        else:
            info = _info_for_address(address, num_cpus, num_gpus, resources, object_store_memory)
        core = Core(session_dir=info["session_dir"], daemon_addr=info["address"], kind="driver",
                    node_id=info["node_id"], host=info.get("host"),
                    keys=keys_for_session(info["session_dir"]), namespace=namespace)
        core.log_to_driver = bool(log_to_driver)
        core.runtime_env = default_env
        core.start()
        register_driver(core.io, core.tasks, core.node_id, core.namespace)  # its job id, for get_job_id()
        context.core = core
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return {"node_id": core.node_id, "session_dir": core.session_dir, "address": info["address"]}


def _info_for_address(address: str, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None) -> dict:
    for path in (os.path.join(address, "daemon.json"), address):
        if path.endswith(".json") and os.path.isfile(path):  # a node's session dir (or its file)
            with open(path) as f:
                return json.load(f)
    info = find_node(address)
    if info is None:
        info = _join_for_driver(address, num_cpus, num_gpus, resources, object_store_memory)
    return info


JOIN_WAIT_S = 6.0
"""How long init(address="HOST:PORT") waits for the mesh to take in the node it starts."""


def _join_for_driver(address: str, num_cpus, num_gpus, resources, object_store_memory) -> dict:
    """A node of this machine that joins the mesh at ``address`` for this driver, so that its
    objects have a local store; it offers no CPU (unless ``num_cpus``) and stops with the driver."""
    global _daemon_proc, _session_dir
    from ..host.launcher import stop_node, wait_joined
    from ..host.netcheck import local_ip_towards
    from ..host.remote import check_remote

    ip, port, _ = check_remote(address, None)  # ConnectionError saying what is wrong
    token = os.environ["MESH_TOKEN"].strip()
    proc, info = start_node(host=local_ip_towards(ip) or "0.0.0.0", port=0, join=[f"{ip}:{port}"],
                            num_cpus=0 if num_cpus is None else num_cpus, num_gpus=num_gpus or 0,
                            resources=resources, object_store_memory=object_store_memory, token=token,
                            parent_pid=os.getpid())
    if not wait_joined(info, JOIN_WAIT_S):
        stop_node(info)
        proc.wait(10)
        raise ConnectionError(f"{address} answered but did not take this machine's node in within {JOIN_WAIT_S:g} s: "
                              f"it may not reach it back at {info.get('tcp')} (a firewall?)")
    _daemon_proc, _session_dir = proc, info["session_dir"]
    return info


def _auto_init() -> Core:
    init()
    return context.core


context.auto_init = _auto_init

def is_initialized() -> bool:
    """True between ``init()`` and ``shutdown()``."""
    return context.core is not None


def shutdown() -> None:
    """Disconnect; an embedded node stops with all its workers and shared memory."""
    global _daemon_proc, _session_dir
    with _lock:
        core = context.core
        context.core = None
        if core is not None:
            core.close()
        proc, _daemon_proc = _daemon_proc, None
        session, _session_dir = _session_dir, None
        forget_uploads()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if session:
                remove_session(session)


def _core() -> Core:
    core = context.core
    if core is None:
        core = _auto_init()
    return core


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote task, or a class an actor.

    Use as ``@remote`` or ``@remote(num_cpus=2, max_retries=1, ...)``.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return make_remote(args[0], {})
    if args:
        raise TypeError("use @remote or @remote(option=value, ...)")
    return lambda target: make_remote(target, options)


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None, progress: bool = False) -> Any:
    """Wait for and return the value(s) of one ref or a list of refs.

    Raises the task's exception (as a ``TaskError`` that is also an instance of the
    original class), ``GetTimeoutError`` after ``timeout`` seconds, or
    ``WorkerCrashedError`` / ``ActorDiedError`` / ``TaskCancelledError``.

    ``progress=True`` shows a progress bar on stderr while waiting (objects ready
    out of the total, rate, time left); it only applies in a driver.
    """
    core = _core()
    if isinstance(refs, ObjectRef):
        if progress:
            _wait_with_progress(core, [refs], timeout)
        return core.get([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got an item of type {type(r).__name__}")
        if progress:
            timeout = _wait_with_progress(core, list(refs), timeout)
        return core.get(list(refs), timeout)
    raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")


PROGRESS_POLL_S = 0.1
"""How often get(progress=True) looks at how many objects are ready."""


def _wait_with_progress(core: Core, refs: list, timeout: float | None) -> float | None:
    """Wait for refs under a rich progress bar; returns what is left of the timeout."""
    import time

    from .. import exceptions as exc

    if core.kind != "driver" or not refs:
        return timeout
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    unique = list({r._id: r for r in refs}.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (TextColumn("[bold]get[/]"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("get", total=len(unique), rate="")
        started = time.monotonic()

        def report(n: int) -> None:
            elapsed = max(1e-9, time.monotonic() - started)
            bar.update(task, completed=n, rate=f"{n / elapsed:,.1f}/s")

        if not core.wait_all_reporting(unique, timeout, PROGRESS_POLL_S, report):
            ready = int(bar.tasks[0].completed)
            raise exc.GetTimeoutError(
                f"get() timed out after {timeout} s with {len(unique) - ready} of "
                f"{len(unique)} objects not ready")
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def timeline(filename: str | None = None) -> list[dict] | None:
    """A Chrome/Perfetto trace of the mesh's recent tasks, like ``ray.timeline``.

    One complete event per task (``"ph": "X"``, ``ts``/``dur`` in microseconds),
    one ``pid`` per node and one ``tid`` per worker.  With ``filename`` the JSON
    array is written there (open it in https://ui.perfetto.dev or
    chrome://tracing) and None is returned; without, the events are returned.
    """
    from ..observe.timeline import build_trace, write_trace

    core = _core()
    lanes = core.request_daemon(Msg.TIMELINE, "mesh", timeout=30)
    events = build_trace(lanes if isinstance(lanes, list) else [])
    if filename is None:
        return events
    write_trace(events, filename)
    return None


def put(value: Any) -> ObjectRef:
    """Store a value in the mesh and return a ref to it."""
    return _core().put(value)


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of ``refs`` are ready or ``timeout`` seconds pass.

    Returns ``(ready, not_ready)``, each in the order of ``refs``.
    """
    core = _core()
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("wait() expects a list of ObjectRefs")
    refs = list(refs)
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"wait() expects a list of ObjectRefs, got an item of type {type(r).__name__}")
    if len({r._id for r in refs}) != len(refs):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and len(refs)={len(refs)}, got {num_returns}")
    ready_ids = core.wait_ready(refs, num_returns, timeout) if num_returns else set()
    ready, not_ready = [], []
    for r in refs:
        if r._id in ready_ids and len(ready) < max(num_returns, 0):
            ready.append(r)
        else:
            not_ready.append(r)
    return ready, not_ready


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``.

    A pending task never runs; a running one is interrupted (``force=True`` kills
    its worker process).  ``get`` on its refs then raises ``TaskCancelledError``.
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError("cancel() expects an ObjectRef")
    _core().cancel(ref, force)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor's process now; pending calls fail with ``ActorDiedError``.

    With ``no_restart=False`` an actor with ``max_restarts`` left is restarted.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError("kill() expects an actor handle")
    _core().kill_actor(actor._actor_id, no_restart, actor._meta.get("daemon"))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """Return a handle to the named actor; ValueError if there is none."""
    core = _core()
    ns = namespace or core.namespace
    answer = core.request_daemon(Msg.LOOKUP_ACTOR, name, ns, timeout=60.0)
    if isinstance(answer, tuple) and answer and answer[0] == "unavailable":
        raise _exc.ControlStoreUnavailableError(answer[1])
    if answer is None:
        raise ValueError(f"Failed to look up actor with name {name!r} in namespace {ns!r}: no such live actor.")
    actor_id, meta = answer
    return ActorHandle(actor_id, meta)


def _mesh_view() -> list[dict]:
    return _core().node_info("mesh")["nodes"]


def nodes() -> list[dict]:
    """One dict per node: ``NodeID``, ``Alive``, ``State``, ``Resources``, ``NodeManagerAddress``..."""
    out = []
    for n in _mesh_view():
        tcp = (n.get("address") or "").partition("@")[2].replace("tcp://", "")
        out.append({
            "NodeID": n["node_id"],
            "Alive": n["alive"],
            "State": n["state"],
            "NodeManagerAddress": tcp.rpartition(":")[0] or "127.0.0.1",
            "Resources": n["resources_total"],
            "ObjectStore": n.get("store", {}),
            "alive": n["alive"],
        })
    return out


def _sum(kind: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in _mesh_view():
        if not n["alive"]:
            continue
        for k, v in n[kind].items():
            total[k] = total.get(k, 0.0) + v
    return total


def cluster_resources() -> dict[str, float]:
    """Total resources of all alive nodes."""
    return _sum("resources_total")


def available_resources() -> dict[str, float]:
    """Resources of all alive nodes not held by tasks, actors or leases."""
    return {k: v for k, v in _sum("resources_available").items() if v > 0}


class RuntimeContext:
    """Where the calling code runs: ids of its node, worker, task and actor."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def get_node_id(self) -> str:
        return self._core.node_id

    def get_worker_id(self) -> str:
        return self._core.worker_id

    def get_task_id(self) -> str | None:
        tid = self._core.current_task_id
        return tid.hex() if tid else None

    def get_actor_id(self) -> str | None:
        aid = self._core.current_actor_id
        return aid.hex() if aid else None

    def get_job_id(self) -> str:
        """The driver's job id (``%08x``, from the control store's jobs table); in a task or an
        actor, the job of the driver that submitted it (of the actor's creator for actors)."""
        return self._core.job_id or ""

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(g) for g in getattr(self._core, "gpu_ids", ())]}

    @property
    def namespace(self) -> str:
        return self._core.namespace

    node_id = property(get_node_id)
    worker_id = property(get_worker_id)
    task_id = property(get_task_id)
    actor_id = property(get_actor_id)
    job_id = property(get_job_id)

    # What the running task or actor call is: names, resources, cancellation (see task_context.py).

    def get_task_name(self) -> str | None:
        """The running task's name (its function's, or ``options(name=...)``), or
        ``Class.method`` in an actor call; None in a driver."""
        return task_context.task_name(self._core)

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources granted to the running task, or held by this actor, as asked for:
        ``{"CPU": 1.0}`` for a default task, ``{}`` for a default actor (actors hold no CPU
        unless asked). Raises RuntimeError in a driver."""
        return task_context.assigned_resources(self._core)

    def get_placement_group_id(self) -> str | None:
        """The placement group the running task or actor was placed in, or None."""
        return task_context.placement_group_id(self._core)

    def get_actor_name(self) -> str | None:
        """This actor's name ("" if unnamed); None outside an actor."""
        spec = task_context.actor_spec(self._core)
        return None if spec is None else spec.get("name") or ""

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted (its process died, or its node) at least once.
        Raises RuntimeError outside an actor."""
        return task_context.actor_restarts(self._core) > 0

    @property
    def current_actor(self) -> ActorHandle:
        """A handle to the actor this code runs in (pass it to tasks, or call it back).
        Raises RuntimeError outside an actor."""
        return task_context.current_actor(self._core)

    def get_runtime_env_string(self) -> str:
        """The runtime_env of the running task, of this actor, or of this driver
        (``init(runtime_env=...)``), as JSON: what was given, directories as absolute
        paths on the machine that submitted it; ``"{}"`` when there is none."""
        return json.dumps(task_context.runtime_env(self._core))

    @property
    def runtime_env(self) -> dict:
        """``get_runtime_env_string()`` as a dict."""
        return task_context.runtime_env(self._core)

    def is_canceled(self) -> bool:
        """Whether ``cancel()`` was called on the running task or actor call, for code that
        stops by itself: a threaded actor's call runs on when cancelled (a plain task is
        interrupted, an async actor's coroutine is cancelled). Raises RuntimeError in a
        driver or an async actor, as Ray does."""
        return task_context.is_canceled(self._core)


def get_runtime_context() -> RuntimeContext:
    """Return the runtime context of the calling driver, task or actor."""
    return RuntimeContext(_core())


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task or actor (empty in the driver)."""
    return list(getattr(_core(), "gpu_ids", ()))
