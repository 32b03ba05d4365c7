"""The narrow interface the owner's state objects use to reach the outside.

The runtime's I/O thread (io_thread.py) implements it; the state objects
(objects.py, tasks.py, actors.py) never hold a socket, a thread, a clock or the
runtime itself, only this, so a test can drive them with a fake one
(tests/owner/).  Every method is called on the I/O thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..wire.messages import Msg


class OwnerIo(Protocol):
    address: str  # this process's inbox address (it owns what it submits)
    node_id: str
    daemon_addr: str  # the daemon of this process's node

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        """Send one message to a peer's inbox."""

    def forget(self, peer: str) -> None:
        """Close the outbox to a peer that is gone."""

    def call_later(self, delay: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O thread after ``delay`` seconds."""

    def next_req_id(self) -> int:
        """A fresh request id for this process."""

    def on_reply(self, req_id: int, fn: Callable[[Any], None]) -> None:
        """Call ``fn(value)`` when the REPLY carrying ``req_id`` comes."""

    def now(self) -> float:
        """The monotonic clock, in seconds (a test gives its own)."""
