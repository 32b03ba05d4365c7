"""Exceptions raised by meshcompute.

Every error the runtime raises derives from :class:`MeshError`.  The names follow
Ray Core's so that ``except ray.exceptions.X`` ports by changing the import.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MeshError",
    "TaskError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "ActorError",
    "ActorDiedError",
    "PendingCallsLimitExceeded",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "NodeDiedError",
    "LocalNodeDiedError",
    "TaskCancelledError",
    "ObjectStoreFullError",
    "ControlStoreUnavailableError",
    "PlacementGroupRemovedError",
    "MeshSystemError",
    "RuntimeEnvSetupError",
    "TaskUnschedulableError",
    "ActorUnschedulableError",
    "ActorUnavailableError",
    "OutOfDiskError",
    "OutOfMemoryError",
    "ObjectFetchTimedOutError",
    "TaskPlacementGroupRemoved",
    "ActorPlacementGroupRemoved",
]


class MeshError(Exception):
    """Base class of every error raised by meshcompute."""


class TaskError(MeshError):
    """A remote task or actor method raised an exception.

    ``get`` raises an instance that is *both* a ``TaskError`` and an instance of the
    user's exception class, so ``except ValueError`` still catches a remote
    ``ValueError``.  ``cause`` is the original exception and ``traceback_str`` the
    remote traceback, which is also part of ``str(err)``.
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        pid: int | None = None,
        node_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node_id = node_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" (pid={self.pid}, node={self.node_id})" if self.pid else ""
        return f"{self.function_name} failed{where}:\n{self.traceback_str}".rstrip()

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid, self.node_id))

    def as_instanceof_cause(self) -> TaskError:
        """Return an error that is an instance of both TaskError and ``type(cause)``."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, TaskError) or not _subclassable(cause_cls):
            return self
        cls = _dual_class(cause_cls)
        err = cls.__new__(cls)
        # Fill the state of both bases without running the user's __init__,
        # whose signature we cannot know.
        err.args = getattr(self.cause, "args", ())
        try:
            err.__dict__.update(getattr(self.cause, "__dict__", {}))
        except Exception:  # pragma: no cover - exotic exception classes
            pass
        err.function_name = self.function_name
        err.traceback_str = self.traceback_str
        err.cause = self.cause
        err.pid = self.pid
        err.node_id = self.node_id
        return err


_DUAL_CLASSES: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    try:
        type("_probe", (TaskError, cls), {})
        return True
    except TypeError:
        return False


def _dual_class(cause_cls: type) -> type:
    cls = _DUAL_CLASSES.get(cause_cls)
    if cls is None:
        cls = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {
                "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__,
                "__module__": __name__,
            },
        )
        _DUAL_CLASSES[cause_cls] = cls
    return cls


def _rebuild_task_error(function_name, traceback_str, cause, pid, node_id) -> TaskError:
    return TaskError(function_name, traceback_str, cause, pid, node_id)


class GetTimeoutError(MeshError, TimeoutError):
    """``get`` (or ``wait`` with a value fetch) did not finish within its ``timeout``."""


class WorkerCrashedError(MeshError):
    """The worker process running the task died (segfault, ``os._exit``, OOM kill)
    and the task's ``max_retries`` were used up."""


class ActorError(MeshError):
    """Base class of actor failures."""


class ActorDiedError(ActorError):
    """The actor's process died, or the actor was killed, and it will not (or could
    not yet) be restarted; the method call did not complete."""

    def __init__(self, message: str = "The actor died.", actor_id: str | None = None) -> None:
        self.actor_id = actor_id
        super().__init__(message)


class PendingCallsLimitExceeded(MeshError):
    """An actor call was refused: as many calls to it as its ``max_pending_calls``
    are pending already, from this process."""


class ObjectLostError(MeshError):
    """The object's value is gone: every copy was lost and it cannot be rebuilt."""

    def __init__(self, message: str = "", object_id: str | None = None) -> None:
        self.object_id = object_id
        super().__init__(message or f"Object {object_id} was lost.")


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (the one that created the ref) died.

    An object lives as long as its owner: once the owner is gone (its process
    exited or was killed, or its node died), every borrower's ``get`` raises
    this, within the mesh's failure-detection time.  Create long-lived objects
    in a process that outlives their readers (the driver, or a detached actor)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of a task's result was lost (its node died) and re-running the
    task to rebuild it failed: the message says why."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """A lost result was not rebuilt because its task's ``max_retries`` are used up."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """A lost result was not rebuilt because the owner no longer kept the task that
    made it: lineage is bounded (``MESH_LINEAGE_MAX_BYTES``), and the oldest entries
    go first.  Keep fewer results alive at once, or raise the bound."""


class NodeDiedError(MeshError):
    """The node the task or object lived on died."""


class LocalNodeDiedError(NodeDiedError):
    """The daemon of this process's own node died, so nothing more can run or be
    read here: every blocked call raises this.  Start the node again (``mesh
    start``, or a new ``init()``) and resubmit."""


class TaskCancelledError(MeshError):
    """The task was cancelled with ``cancel`` before it finished."""

    def __init__(self, message: str = "The task was cancelled.", task_id: Any = None) -> None:
        self.task_id = task_id
        super().__init__(message)


class ObjectStoreFullError(MeshError):
    """The node's object store has no room for the object even after evicting and
    spilling what it could; the message says what is using the space."""


class ControlStoreUnavailableError(MeshError):
    """The mesh's control store (its replicated metadata: names, placement groups,
    the KV) has no quorum: fewer than a majority of its voters can reach each
    other. The message says for how long; it recovers by itself once they can."""


class PlacementGroupRemovedError(MeshError):
    """The placement group was removed (``remove_placement_group``) before it was ready."""


class MeshSystemError(MeshError):
    """meshcompute itself failed, not the user's code: a process it needs did not answer
    (the node daemon within 30-60 s, a peer that is gone), or a worker lacks a function
    definition it should have been sent. Ray's name is ``RaySystemError``."""


class RuntimeEnvSetupError(MeshError):
    """A task's or actor's ``runtime_env`` could not be set up where it runs: its
    ``working_dir`` or a ``py_modules`` package could not be fetched or unpacked (a
    ``.zip`` that is not one, a full disk), or its ``worker_process_setup_hook`` raised
    or could not be imported. ``get`` on the task's refs raises it (for an actor, its
    calls raise ``ActorDiedError`` saying so). A runtime_env that is wrong where it is
    declared (an unknown key, a missing directory) raises ``ValueError`` there instead."""


class TaskUnschedulableError(MeshError):
    """The task can never run: it is pinned to a node (``NodeAffinitySchedulingStrategy``
    with ``soft=False``) that died or left the mesh. Raised by ``get`` on its refs, for
    tasks waiting when the node went and tasks submitted after (a task run again to
    rebuild results lost there is not failed: it waits). A task whose resources no node
    has is not failed either: it waits, with one warning, for such a node to join."""


class ActorUnschedulableError(ActorError):
    """Ray raises this when an actor cannot be placed. meshcompute never does: an actor
    pinned to a node that died ends DEAD, and its calls raise ``ActorDiedError`` saying
    why; an actor whose resources no node has stays pending, with a warning, until such
    a node joins."""


class ActorUnavailableError(ActorError):
    """Ray raises this when an actor is briefly unreachable and a call may or may not
    have run. meshcompute never does: a call in flight when its actor's process or node
    dies is resent after the restart while ``max_task_retries`` lasts, and otherwise
    fails with ``ActorDiedError``; calls made while it restarts wait for it."""


class OutOfDiskError(ObjectStoreFullError):
    """The object store is full and spilling to make room failed because the spill
    directory's disk is full (``mesh start --spill-dir`` puts it elsewhere). A subclass
    of ``ObjectStoreFullError``, which is what a full store raises otherwise."""


class OutOfMemoryError(MeshError):
    """Ray raises this when its memory monitor kills a task to save its node. meshcompute
    has no memory monitor and never raises it: a worker the kernel's out-of-memory
    killer ends is a crash (``WorkerCrashedError``, whose message names SIGKILL), retried
    under ``max_retries``. Ask for ``memory=`` to keep big tasks apart."""


class ObjectFetchTimedOutError(ObjectLostError):
    """Ray raises this when no copy of an object can be located in time. meshcompute never
    does: a pull that stalls asks again, then the reader asks the object's owner where it
    is; a value no copy of which is left raises ``ObjectLostError`` (or ``OwnerDiedError``,
    or is rebuilt from lineage), and ``get(timeout=)`` bounds the wait (``GetTimeoutError``)."""


class TaskPlacementGroupRemoved(MeshError):
    """The task's placement group was removed before the task could run, as in Ray.

    Tasks queued for the group, and tasks submitted to it afterwards, fail with it. A
    task running in the group's bundles when it is removed is stopped and retried
    under ``max_retries``; the retry then fails with this error."""


class ActorPlacementGroupRemoved(ActorError):
    """Ray raises this for an actor whose placement group was removed. meshcompute never
    does: the actor is stopped and its calls raise ``ActorDiedError`` naming the removed
    group; creating an actor in a removed group raises ``ValueError``."""


# Ray's names, so ``except ray.exceptions.RayTaskError`` keeps working after
# ``import meshcompute as ray``.
RayError = MeshError
RayTaskError = TaskError
RayActorError = ActorError
RaySystemError = MeshSystemError
LocalRayletDiedError = LocalNodeDiedError
__all__ += ["RayError", "RayTaskError", "RayActorError", "RaySystemError", "LocalRayletDiedError"]
