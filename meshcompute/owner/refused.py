"""Tasks whose lease a daemon refused: they cannot run, so they fail.

A daemon refuses (``LEASE_REFUSED``) a request

* for a placement group that was removed (kind ``"placement_group"``): the
  bundles it asks for will never exist again, so it would wait forever; the
  tasks fail with ``TaskPlacementGroupRemoved``, as in Ray;
* of a pip runtime_env that could not be installed (kind ``"runtime_env"``):
  the tasks fail with ``RuntimeEnvSetupError`` carrying pip's own words.

Every task queued for the request's scheduling key shares what was refused, so
all of them fail, and the key's other requests are withdrawn.  A task of that
key submitted later asks again (a placement group is refused again; an
installation is tried again).
"""

from __future__ import annotations

from typing import Any

from .. import exceptions as exc


def on_lease_refused(tasks: Any, sender: str, msg: tuple, frames: list) -> None:
    _, req_id, kind, reason = msg
    req = tasks.requests.get(req_id)
    if req is None or sender != req.daemon:  # withdrawn meanwhile, or not from the daemon asked
        return
    del tasks.requests[req_id]
    tasks.requests_out[req.key] -= 1
    queue = tasks.queues.pop(req.key, None) or ()
    for t in queue:
        if t.cancelled:
            continue
        if kind == "runtime_env":
            error: Exception = exc.RuntimeEnvSetupError(f"The task {t.name} cannot run: {reason}")
        else:
            error = exc.TaskPlacementGroupRemoved(
                f"The task {t.name} cannot run: {reason}. Tasks of a placement group must be "
                f"submitted before it is removed.")
        tasks.fail(t, error)
    tasks.withdraw(req.key, tasks.requests_out[req.key])
