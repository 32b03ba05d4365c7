"""``@remote`` functions and actor classes, and actor handles."""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace
from typing import Any

from .. import exceptions as exc
from ..owner import context
from ..owner.generators import ObjectRefGenerator
from ..owner.object_ref import ObjectRef
from ..owner.runtime import Task
from ..sched.bundles import in_bundle
from ..wire import ids
from ..wire.serialization import dumps_function, serialize
from ..worker.runtime_env import WithEnv
from ..worker.runtime_env import inherited as inherited_env
from . import runtime_env
from .dag import ClassMethodNode, ClassNode, FunctionNode

_TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_retries", "retry_exceptions",
                 "num_returns", "_generator_backpressure_num_objects", "scheduling_strategy", "name",
                 "runtime_env", "max_calls",
                 "accelerator_type", "label_selector", "placement_group", "placement_group_bundle_index"}
_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_restarts", "max_task_retries",
                  "max_concurrency", "name", "namespace", "lifetime", "scheduling_strategy",
                  "get_if_exists", "runtime_env", "max_pending_calls", "accelerator_type",
                  "concurrency_groups", "placement_group", "placement_group_bundle_index"}


def _core():
    core = context.core
    if core is None:
        core = context.auto_init()
    return core


_REFUSED = {
    "max_calls": "workers are long-lived here; a task that leaks memory can exit itself (os._exit) and "
                 "be retried, or run in an actor you restart",
    "label_selector": "nodes have no labels; use custom resources (resources={...}) to pick nodes",
    "concurrency_groups": "use max_concurrency (threads) or async methods",
}
"""Ray options that meshcompute does not implement: refused with what to do instead
(their neutral values, None/0/{}, are accepted)."""


def _check_options(opts: dict, allowed: set, what: str) -> None:
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for {what}: {', '.join(sorted(unknown))}; "
                         f"valid options are {', '.join(sorted(allowed))}")
    for key in ("num_cpus", "num_gpus", "memory"):
        v = opts.get(key)
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, got {v!r}")
    for key, instead in _REFUSED.items():
        if opts.get(key):
            raise ValueError(f"{key} is not supported by meshcompute: {instead}")
    runtime_env.check(opts.get("runtime_env"))  # a bad one fails when declared, not when called
    if "max_pending_calls" in opts and (type(opts["max_pending_calls"]) is not int or opts["max_pending_calls"] == 0
                                        or opts["max_pending_calls"] < -1):
        raise ValueError(f"max_pending_calls must be a positive int or -1, got {opts['max_pending_calls']!r}")


def _shape(opts: dict, default_cpus: float) -> tuple:
    res: dict[str, float] = {}
    cpus = opts.get("num_cpus")
    res["CPU"] = float(default_cpus if cpus is None else cpus)
    if opts.get("num_gpus"):
        res["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        res["memory"] = float(opts["memory"])
    for k, v in (opts.get("resources") or {}).items():
        if k in ("CPU", "GPU"):
            raise ValueError(f"use num_cpus / num_gpus instead of resources={{{k!r}: ...}}")
        res[k] = float(v)
    if opts.get("accelerator_type"):  # as Ray: a node offering this accelerator has the resource
        res[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    strategy = opts.get("scheduling_strategy")
    if opts.get("placement_group") not in (None, "default"):  # Ray's older spelling of the strategy
        strategy = SimpleNamespace(placement_group=opts["placement_group"],
                                   placement_group_bundle_index=opts.get("placement_group_bundle_index", -1))
    node_id = getattr(strategy, "node_id", None)
    if node_id and not getattr(strategy, "soft", False):
        res[f"node:{node_id}"] = 0.001
    pg = getattr(strategy, "placement_group", None)
    if pg is not None:
        res = _in_bundle(res, pg, getattr(strategy, "placement_group_bundle_index", -1))
    return tuple(sorted((k, v) for k, v in res.items() if v > 0))


def _in_bundle(res: dict[str, float], pg: Any, index: int) -> dict[str, float]:
    """Ask for the resources out of a placement group bundle (bundles.py names them)."""
    count = len(getattr(pg, "bundle_specs", ()))
    if not isinstance(index, int) or index < -1 or index >= count:
        raise ValueError(f"placement_group_bundle_index must be -1 or in [0, {count}), got {index!r}")
    return in_bundle(res, pg.id, index)


class RemoteFunction:
    """A function made remote with ``@remote``: call ``.remote(...)`` to run it as a task."""

    def __init__(self, fn: Any, options: dict) -> None:
        _check_options(options, _TASK_OPTIONS, "a remote function")
        self._function = fn
        self._options = options
        self._fn_bytes: bytes | None = None
        self._fn_id: bytes | None = None
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        self._prepared: tuple | None = None
        self._env_fns: dict[str, tuple[bytes, bytes]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote functions cannot be called directly. Use {self.__name__}.remote(...) "
                        f"instead, or call the original with {self.__name__}.__wrapped__(...).")

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """A node of a lazy graph (dag.py) that calls this function when executed."""
        return FunctionNode(self, args, kwargs)

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options replaced, e.g. ``f.options(num_cpus=2).remote(x)``."""
        merged = dict(self._options, **options)
        rf = RemoteFunction(self._function, merged)
        rf._fn_bytes, rf._fn_id = self._fn_bytes, self._fn_id
        return rf

    def _ensure_pickled(self) -> None:
        if self._fn_bytes is None:
            self._fn_bytes = dumps_function(self._function)
            self._fn_id = hashlib.blake2b(self._fn_bytes, digest_size=12).digest()

    def _prepare(self) -> tuple:
        if self._prepared is None:
            self._ensure_pickled()
            opts = self._options
            num_returns = _num_returns_wire(opts.get("num_returns", 1),
                                            opts.get("_generator_backpressure_num_objects"))
            max_retries = opts.get("max_retries", 3)
            retry_exc = opts.get("retry_exceptions", False)
            if isinstance(retry_exc, list):
                retry_exc = tuple(retry_exc)
            strategy = opts.get("scheduling_strategy")
            self._prepared = (_shape(opts, 1.0), num_returns, max_retries, retry_exc, strategy)
        return self._prepared

    def _with_env(self, core: Any) -> tuple[bytes, bytes, tuple | None]:
        """The function as it travels: wrapped with its runtime_env when it has one; and its
        pip environment, if any (its tasks run only on workers of that environment)."""
        env = runtime_env.merge(core.runtime_env, runtime_env.check(self._options.get("runtime_env")))
        parent = inherited_env()  # submitted from a task or actor that has one: the child inherits it
        if not env and not parent:
            return self._fn_bytes, self._fn_id, None
        key = repr(sorted(env.items())) + _env_key(parent)
        cached = self._env_fns.get(key)
        if cached is None:
            wire = runtime_env.inherit(parent, runtime_env.wire(env, core.put))
            wrapped = WithEnv(self._fn_bytes, wire, self.__qualname__)
            fn_bytes = dumps_function(wrapped)
            cached = self._env_fns[key] = (fn_bytes, hashlib.blake2b(fn_bytes, digest_size=12).digest(),
                                           wire.get("pip"))
        return cached

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        core = _core()
        shape, num_returns, max_retries, retry_exc, strategy = self._prepare()
        t = Task()
        t.task_id = ids.new_task_id()
        t.fn_bytes, t.fn_id, t.pip_env = self._with_env(core)
        t.name = self._options.get("name") or self.__qualname__
        t.args, t.kw_names = core.prepare_args(args, kwargs)
        t.num_returns = num_returns
        t.shape = shape
        t.retries_left = max_retries
        t.retry_exceptions = retry_exc
        t.strategy = _strategy_wire(strategy)
        t.method = None
        return _unwrap(core.submit(t), num_returns)


def _env_key(wire: dict) -> str:
    """A travelling environment's identity: packages by their hash, the rest by value."""
    if not wire:
        return ""
    parts = []
    for k, v in sorted(wire.items()):
        if k == "working_dir":
            v = v[0]
        elif k == "py_modules":
            v = [sha for sha, _ in v]
        parts.append((k, v))
    return repr(parts)


def _create_actor(core: Any, actor_id: bytes, spec: dict, frames: list) -> tuple:
    """Create an actor through our daemon, or the peer it sends us to: the daemon's answer."""
    daemon = core.daemon_addr
    for _ in range(3):
        req_id = core.io.next_req_id()
        spec["req_id"] = req_id
        w = core.io.expect_reply(req_id)
        core.post(core.actors.create, actor_id, spec, frames, daemon)
        if not w.event.wait(60):
            raise exc.MeshSystemError("the node daemon did not answer the actor creation within 60 s")
        if w.value[0] != "spill":
            return w.value
        daemon = w.value[1]
        spec["spilled"] = True
    return w.value


def _num_returns_wire(num_returns: Any, window: Any = None) -> Any:
    """An int, or for a generator ("streaming"|"dynamic", backpressure window or None)."""
    if num_returns in ("streaming", "dynamic"):
        if window is not None and (type(window) is not int or window < 1) and window != -1:
            raise ValueError(f"_generator_backpressure_num_objects must be a positive int or -1, got {window!r}")
        return (num_returns, None if window in (None, -1) or num_returns == "dynamic" else window)
    if type(num_returns) is not int or num_returns < 0:
        raise ValueError(f'num_returns must be a non-negative int, "streaming" or "dynamic", got {num_returns!r}')
    return num_returns


def _unwrap(refs: list, num_returns: Any) -> Any:
    """One ref, None, or the list, as Ray returns them for num_returns 1, 0, n; for a generator
    task, an ObjectRefGenerator ("streaming") or the one ref to its refs ("dynamic")."""
    if isinstance(num_returns, tuple):
        if num_returns[0] == "dynamic":
            return refs[0]
        return ObjectRefGenerator(ids.task_of(refs[0]._id), refs[0])
    if num_returns == 1:
        return refs[0]
    if num_returns == 0:
        return None
    return refs


def _strategy_wire(strategy: Any) -> Any:
    if strategy is None or isinstance(strategy, str):
        return strategy
    node_id = getattr(strategy, "node_id", None)
    if node_id is not None:
        return ("node", node_id, bool(getattr(strategy, "soft", False)))
    return None


def method(*, num_returns: int | str = 1, concurrency_group: str | None = None) -> Any:
    """Decorate an actor method to set its options, e.g. ``@method(num_returns=2)`` or
    ``@method(num_returns="streaming")``."""
    _num_returns_wire(num_returns)
    if concurrency_group is not None:
        raise ValueError(f"concurrency_group is not supported by meshcompute: {_REFUSED['concurrency_groups']}")

    def deco(fn):
        fn.__mesh_num_returns__ = num_returns
        return fn

    return deco


class ActorClass:
    """A class made remote with ``@remote``: ``.remote(...)`` creates an actor."""

    def __init__(self, cls: type, options: dict) -> None:
        _check_options(options, _ACTOR_OPTIONS, "an actor class")
        self._cls = cls
        self._options = options
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self._class_bytes: bytes | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor classes cannot be instantiated directly. Use {self.__name__}.remote(...) instead.")

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        """A node of a lazy graph (dag.py) that creates this actor when executed;
        ``node.method.bind(...)`` calls its methods."""
        return ClassNode(self, args, kwargs)

    def options(self, **options: Any) -> ActorClass:
        ac = ActorClass(self._cls, dict(self._options, **options))
        ac._class_bytes = self._class_bytes
        return ac

    def _methods(self) -> dict[str, int]:
        out = {}
        for name, member in inspect.getmembers(self._cls):
            if callable(member) and (not name.startswith("__") or name == "__call__"):
                out[name] = getattr(member, "__mesh_num_returns__", 1)
        return out

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        core = _core()
        opts = self._options
        if self._class_bytes is None:
            self._class_bytes = dumps_function(self._cls, "actor class")
        # Actors need 1 CPU to be placed by default but hold none while alive (as in Ray).
        shape = _shape(opts, 0.0)
        items, kw_names = core.prepare_args(args, kwargs)
        frames: list = []
        wire = []
        for item in items:
            if item[0] == "v":
                frames.extend(item[1].buffers)
                wire.append(("v", item[1].meta, len(item[1].buffers)))
            else:
                wire.append(("r", item[1]._id, item[1]._owner))
        actor_id = ids.new_task_id()
        namespace = opts.get("namespace") or core.namespace
        handle_meta = {"class_name": self.__name__, "methods": self._methods(),
                       "max_task_retries": opts.get("max_task_retries", 0),
                       "max_pending_calls": opts.get("max_pending_calls", -1)}
        lifetime = opts.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError("lifetime must be None, 'detached' or 'non_detached'")
        spec = {
            "req_id": None, "class_bytes": self._class_bytes, "class_name": self.__name__,
            "args": wire, "kw_names": kw_names, "shape": shape, "owner": core.address, "job_id": core.job_id,
            "max_restarts": opts.get("max_restarts", 0), "max_concurrency": opts.get("max_concurrency"),
            "name": opts.get("name"), "namespace": namespace, "lifetime": lifetime,
            "get_if_exists": opts.get("get_if_exists", False), "handle_meta": handle_meta,
            "strategy": _strategy_wire(opts.get("scheduling_strategy")),
            "runtime_env": runtime_env.inherit(inherited_env(), runtime_env.wire(
                runtime_env.merge(core.runtime_env, runtime_env.check(opts.get("runtime_env"))), core.put)),
        }
        answer = _create_actor(core, actor_id, spec, frames)
        if answer[0] == "error":
            raise ValueError(answer[1])
        if answer[0] == "exists":
            return ActorHandle(answer[1], answer[2])
        handle_meta["daemon"] = answer[2]  # where the actor lives: its state comes from there
        named = bool(opts.get("name")) or lifetime == "detached"
        handle = ActorHandle(actor_id, handle_meta, None if named else core.actor_token(actor_id))
        # The arguments' refs, nested ones too, live until the constructor has taken its own holds.
        handle._arg_holds = [r for item in items for r in ([item[1]] if item[0] == "r" else item[1].contained)]
        return handle


_METHOD_OPTIONS = {"num_returns", "_generator_backpressure_num_objects"}


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: Any, window: int | None = None,
                 options: dict | None = None) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = _num_returns_wire(num_returns, window)
        self._options_given = options or {}

    def options(self, **options: Any) -> ActorMethod:
        """A copy with ``num_returns`` (and ``_generator_backpressure_num_objects``) replaced."""
        _check_options(options, _METHOD_OPTIONS, f"an actor method ({self._name})")
        num_returns = options.get("num_returns", self._num_returns)
        if isinstance(num_returns, tuple):
            num_returns = num_returns[0]
        return ActorMethod(self._handle, self._name, num_returns, options.get("_generator_backpressure_num_objects"),
                           options)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._name, self._num_returns, args, kwargs)

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """A node of a lazy graph (dag.py) that calls this method of this live actor when executed."""
        return ClassMethodNode(self._handle, self._name, args, kwargs, self._options_given)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Use .{self._name}.remote(...) instead.")


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)`` calls it.

    Handles can be passed to tasks and other actors.  An unnamed actor stops once
    every handle to it is gone, in every process (handles are counted like refs),
    or when its creator exits; a named or detached actor lives until ``kill()``
    (or, if not detached, until its creator exits).
    """

    def __init__(self, actor_id: bytes, meta: dict, token: ObjectRef | None = None) -> None:
        self._actor_id = actor_id
        self._meta = meta
        # An unnamed actor's handles each hold a ref to one token object its creator owns:
        # the token is freed, and the actor stopped, when the last handle anywhere is gone.
        self._token = token
        self._arg_holds: list = []
        self._pending: list = []  # results of calls not done yet (with max_pending_calls)

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_meta", {}).get("methods", {})
        if name not in methods:
            raise AttributeError(f"actor {self.__dict__.get('_meta', {}).get('class_name')} has no method {name!r}")
        return ActorMethod(self, name, methods[name])

    def _call(self, method_name: str, num_returns: int, args: tuple, kwargs: dict) -> Any:
        core = _core()
        limit = self._meta.get("max_pending_calls", -1)
        if limit != -1:
            entries = core.objects.entries  # a call is pending until its first result is ready
            self._pending = [r for r in self._pending if (e := entries.get(r._id)) is None or e.state != 1]
            if len(self._pending) >= limit:
                raise exc.PendingCallsLimitExceeded(
                    f"{len(self._pending)} calls to {self._meta.get('class_name')} from this handle are pending, "
                    f"its max_pending_calls ({limit}): wait for some to finish before submitting more")
        t = Task()
        t.task_id = ids.new_task_id()
        t.actor_id = self._actor_id
        t.method = method_name
        t.name = f"{self._meta.get('class_name')}.{method_name}"
        t.fn_id = t.fn_bytes = None
        t.args, t.kw_names = core.prepare_args(args, kwargs)
        t.num_returns = num_returns
        t.shape = ()
        t.retries_left = self._meta.get("max_task_retries", 0)
        t.retry_exceptions = False
        t.strategy = self._meta.get("daemon")  # for actor calls: the actor's daemon
        if self._token is not None:  # a call keeps its actor alive until it is done
            t.holds = [self._token]
        refs = core.submit(t)
        if limit != -1:
            self._pending.append(refs[0])
        return _unwrap(refs, num_returns)

    def __reduce__(self):
        return (_rebuild_handle, (self._actor_id, self._meta, self._token))

    def __repr__(self) -> str:
        return f"ActorHandle({self._meta.get('class_name')}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: bytes, meta: dict, token: ObjectRef | None = None) -> ActorHandle:
    return ActorHandle(actor_id, meta, token)


def make_remote(target: Any, options: dict) -> Any:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError("@remote decorates a function or a class")


__all__ = ["RemoteFunction", "ActorClass", "ActorHandle", "ActorMethod", "make_remote", "method",
           "ObjectRef", "serialize", "exc"]
