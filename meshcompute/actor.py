"""Ray's ``ray.actor`` module: the actor classes and ``exit_actor()``.

``meshcompute.actor.exit_actor()`` (``ray.actor.exit_actor()`` after ``import
meshcompute as ray``) ends the actor it is called in, as in Ray.
"""

from __future__ import annotations

from .api.remote import ActorClass, ActorHandle, ActorMethod, method
from .owner import context
from .worker.calls import ActorExit

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]


def exit_actor() -> None:
    """End the current actor gracefully, from inside one of its methods.

    The calling method stops here (an exception that ``except Exception`` does not
    catch unwinds it) and its caller gets ``ActorDiedError`` instead of a value.
    Calls that have not started fail with ``ActorDiedError``; in a threaded or
    async actor, the calls running now finish first. Then ``atexit`` handlers
    run and the process exits. The actor is not restarted, whatever its
    ``max_restarts``; later calls raise ``ActorDiedError`` saying it called
    ``exit_actor()``. Use ``kill(handle)`` to end an actor from outside.

    Raises:
        TypeError: when not called inside an actor (a driver or a task).
    """
    core = context.core
    executor = core.executor if core is not None else None
    if executor is None or executor.actor_id is None:
        raise TypeError("exit_actor() ends the actor it is called in: call it inside an actor's method "
                        "(to end an actor from outside, use kill(handle))")
    executor.request_exit()
    raise ActorExit()
