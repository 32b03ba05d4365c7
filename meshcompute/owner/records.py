"""The owner's records: a task from submission to completion, a lease held, a lease request out.

Plain data with the invariants of their fields; ``TaskQueues`` (tasks.py) and
``ActorCalls`` (actors.py) change them.
"""

from __future__ import annotations

from typing import Any

PIP_ENV_VAR = "MESH_PIP_ENV"
"""Set in a worker of a pip runtime_env to the environment's hash (worker/pip_env.py): it runs
only that environment's tasks, and a blocked parent runs inline only children of its own."""


class Task:
    """An owned task or actor call, from submission to completion."""

    __slots__ = (
        "task_id", "fn_id", "fn_bytes", "name", "args", "kw_names", "num_returns",
        "return_ids", "shape", "retries_left", "retry_exceptions", "deps", "lease",
        "cancelled", "actor_id", "method", "dispatched", "holds", "strategy", "key", "pip_env",
    )

    def __init__(self) -> None:
        self.deps = 0
        self.lease: Lease | None = None
        self.cancelled = False
        self.actor_id: bytes | None = None
        self.method: str | None = None
        self.dispatched = False
        self.holds: list | tuple = ()  # most tasks hold nothing: no empty list each
        self.key: tuple = ()
        # (hash, requirements, options) of its pip runtime_env (worker/pip_env.py): it runs only
        # on a worker of that environment, so the environment is part of its scheduling key.
        self.pip_env: tuple | None = None


class Lease:
    """A worker leased from a daemon for one scheduling key."""

    __slots__ = ("lease_id", "key", "worker_addr", "worker_id", "gpu_ids", "inflight", "idle_since",
                 "blocked", "daemon", "depth")

    def __init__(self, lease_id, key, worker_addr, worker_id, gpu_ids, daemon) -> None:
        self.daemon = daemon  # the daemon that granted it: returns and kills go there
        self.lease_id = lease_id
        self.key = key
        self.worker_addr = worker_addr
        self.worker_id = worker_id
        self.gpu_ids = gpu_ids
        self.inflight: dict[bytes, Task] = {}
        # How deep tasks may go on it (sched.pipeline.RunTimes.depth): plan_pushes holds a lease
        # to the depth of the task it takes while idle, so that task decides it.
        self.depth = 1
        self.idle_since = 0.0
        self.blocked = False


class LeaseRequest:
    """A lease request this owner has outstanding at ``daemon``."""

    __slots__ = ("key", "daemon", "shape", "strategy")

    def __init__(self, key: tuple, daemon: str, shape: tuple, strategy: Any) -> None:
        self.key, self.daemon, self.shape, self.strategy = key, daemon, shape, strategy
