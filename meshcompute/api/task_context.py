"""What ``get_runtime_context()`` says about the running task or actor (session.py's RuntimeContext).

A worker's executor knows what it runs: each task or actor call runs under a
``Running`` record (worker/calls.py: its id, name and granted resources, in a
context variable, so the calls of threaded and async actors each see their own),
and an actor keeps what its daemon sent it (``BECOME_ACTOR``: its spec and how
many times it was restarted). A driver runs no task: these say so.
"""

from __future__ import annotations

from typing import Any

from ..owner.object_ref import ObjectRef
from ..sched.bundles import as_requested, group_of
from ..wire import ids
from ..worker import runtime_env as worker_env
from ..worker.calls import RUNNING, Running
from .remote import ActorHandle
from .runtime_env import describe

TOKEN_INDEX = 0xFFFFFFFF
"""The object index of an unnamed actor's handle token (owner/runtime.py actor_token)."""


def _running(core: Any, what: str) -> Running:
    running = RUNNING.get() if core.executor is not None else None
    if running is None:
        raise RuntimeError(f"{what} is only available inside a task or an actor method, not in a driver")
    return running


def task_name(core: Any) -> str | None:
    running = RUNNING.get() if core.executor is not None else None
    return running.name if running is not None else None


def assigned_resources(core: Any) -> dict[str, float]:
    ex = core.executor
    if ex is not None and ex.actor_id is not None and RUNNING.get() is None:
        return as_requested(ex.actor_shape)  # the actor's own thread, between calls (its __init__)
    return as_requested(_running(core, "get_assigned_resources()").shape)


def placement_group_id(core: Any) -> str | None:
    ex = core.executor
    if ex is None:
        return None
    running = RUNNING.get()
    group = group_of(running.shape if running is not None else ex.actor_shape)
    return group[0] if group else None


def actor_spec(core: Any) -> dict | None:
    ex = core.executor
    return ex.actor_spec if ex is not None else None


def _actor(core: Any, what: str) -> Any:
    ex = core.executor
    if ex is None or ex.actor_id is None:
        raise RuntimeError(f"{what} is only available inside an actor")
    return ex


def actor_restarts(core: Any) -> int:
    return _actor(core, "was_current_actor_reconstructed").actor_restarts


def current_actor(core: Any) -> ActorHandle:
    ex = _actor(core, "current_actor")
    spec = ex.actor_spec
    meta = dict(spec["handle_meta"], daemon=core.daemon_addr)
    token = None
    if not spec.get("name") and spec.get("lifetime") != "detached":
        # An unnamed actor lives while a handle to it does: this one counts like the others.
        token = ObjectRef(ids.object_id(ex.actor_id, TOKEN_INDEX), spec["owner"])
    return ActorHandle(ex.actor_id, meta, token)


def runtime_env(core: Any) -> dict:
    if core.executor is None:
        return describe(core.runtime_env)
    return dict(worker_env.current())


def is_canceled(core: Any) -> bool:
    running = _running(core, "is_canceled()")
    ex = core.executor
    if ex._loop is not None:
        try:
            import asyncio

            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("is_canceled() is not available in an async actor: cancel() cancels the "
                               "call's coroutine (asyncio.CancelledError is raised in it)")
    return ex.is_canceled(running.task_id)
