"""A process's requests to the mesh's control store (names, KV, placement groups),
made through its node's daemon, which forwards them to the store's leader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import exceptions as exc
from ..wire import ids
from ..wire.messages import Msg
from ..wire.serialization import serialize
from .io_thread import IoThread
from .object_ref import ObjectRef
from .objects import Entry, ObjectTable


def gcs_result(op: tuple, status: str, value: Any) -> Any:
    """The value of a control store answer, or the exception it stands for."""
    if status == "ok":
        return value
    if status == "unavailable":
        raise exc.ControlStoreUnavailableError(value)
    if op[0] == "pg_wait":
        raise exc.PlacementGroupRemovedError(value)
    raise exc.MeshError(f"the control store refused {op[0]}: {value}")


class ControlRequests:
    """Blocking requests (``request``) and ones answered as an ObjectRef (``promise``)."""

    def __init__(self, io: IoThread, objects: ObjectTable, request_daemon: Callable[..., Any]) -> None:
        self.io = io
        self.objects = objects
        self.request_daemon = request_daemon

    def request(self, op: tuple, timeout: float | None = None) -> Any:
        """A control store read or write through our daemon; returns its value.

        Raises ControlStoreUnavailableError when the store has had no quorum for
        ``timeout`` seconds (default 10), MeshError when it refused the request.
        """
        t = 10.0 if timeout is None else float(timeout)
        status, value = self.request_daemon(Msg.GCS_REQUEST, op, t, timeout=t + 30.0)
        return gcs_result(op, status, value)

    def promise(self, op: tuple, timeout: float | None, convert: Any = None) -> ObjectRef:
        """An ObjectRef that becomes the value of a control store request (or its error)."""
        oid = ids.object_id(ids.new_task_id(), 0)
        ref = ObjectRef(oid, self.io.address)
        self.io.post(self._send_promise, oid, op, timeout, convert)
        return ref

    def _send_promise(self, oid: bytes, op: tuple, timeout: float | None, convert: Any) -> None:
        e = Entry(True, self.io.address)
        self.objects.entries[oid] = e
        req_id = self.io.next_req_id()

        def finish(answer: Any) -> None:
            try:
                value, is_error = gcs_result(op, *answer), False
                if convert is not None:
                    value = convert(value)
            except Exception as err:
                value, is_error = err, True
            e.value = serialize(value, is_error)
            e.is_error = is_error
            self.objects.resolve(oid, e)

        self.io.on_reply(req_id, finish)
        self.io.send(self.io.daemon_addr, Msg.GCS_REQUEST, req_id, op, 1e9 if timeout is None else timeout)
