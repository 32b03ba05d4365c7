"""Tasks whose lease a daemon refused for good: they can never run, so they fail.

A daemon refuses (``LEASE_REFUSED``) a request for a placement group that was
removed: the bundles it asks for will never exist again, so the request would
wait forever.  Every task queued for that scheduling key shares the shape, so
all of them fail with ``TaskPlacementGroupRemoved``, as in Ray, and the key's
other requests are withdrawn.  A task of that key submitted later asks again
and is refused again.
"""

from __future__ import annotations

from typing import Any

from .. import exceptions as exc


def on_lease_refused(tasks: Any, sender: str, msg: tuple, frames: list) -> None:
    _, req_id, reason = msg
    req = tasks.requests.pop(req_id, None)
    if req is None:  # withdrawn meanwhile
        return
    tasks.requests_out[req.key] -= 1
    queue = tasks.queues.pop(req.key, None) or ()
    for t in queue:
        if not t.cancelled:
            tasks.fail(t, exc.TaskPlacementGroupRemoved(
                f"The task {t.name} cannot run: {reason}. Tasks of a placement group must be "
                f"submitted before it is removed."))
    tasks.withdraw(req.key, tasks.requests_out[req.key])
