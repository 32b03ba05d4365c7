"""What the executor's parts share: calling user code, the cancel signal's exception,
and the record of the task or actor call running in the current thread or coroutine."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from .. import exceptions as exc


class Cancelled(BaseException):
    """Raised inside a running task by the cancel signal."""


class ActorExit(BaseException):
    """Raised by ``exit_actor()`` to end the actor call that called it (not an Exception,
    so that user code's ``except Exception`` does not stop it)."""


@dataclass(frozen=True)
class Running:
    """The task or actor method call that the code calling ``get_runtime_context()`` runs in."""

    task_id: bytes
    name: str  # the task's name (its function's, or ``name=``), or ``Class.method``
    shape: tuple  # the resources it was granted, as a shape (sched/resources.py)


RUNNING: contextvars.ContextVar[Running | None] = contextvars.ContextVar("meshcompute_running", default=None)
"""Set around each task and actor call: a context variable, so that the calls of a
threaded actor (each on its own thread) and of an async actor (each in its own
asyncio task) each see their own."""


def call_with(fn: Any, args: list, kw_names: tuple) -> Any:
    """Call with positional args, the last ``len(kw_names)`` of them by keyword."""
    if not kw_names:
        return fn(*args)
    k = len(kw_names)
    return fn(*args[:-k], **dict(zip(kw_names, args[-k:])))


ERROR_MESSAGE_CHARS = 300
"""How much of a failed task's error its span keeps (``list_tasks``' error_message)."""


def copy_of(items: Any) -> list:
    """A list of what another thread may be changing (a deque or a dict's items)."""
    for _ in range(3):
        try:
            return list(items)
        except RuntimeError:  # changed meanwhile
            continue
    return []


def error_of(error: BaseException | None) -> tuple | None:
    """Ray's error_type and a one-line message of a task's error, kept with its span."""
    if error is None:
        return None
    kind = "TASK_CANCELLED" if isinstance(error, exc.TaskCancelledError) else "TASK_EXECUTION_EXCEPTION"
    cause = getattr(error, "cause", None) or error
    return kind, f"{type(cause).__name__}: {cause}"[:ERROR_MESSAGE_CHARS]
