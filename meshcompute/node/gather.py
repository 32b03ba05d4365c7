"""Requests answered from several processes at once (workers, peer daemons).

A timeline or an object listing of the whole mesh asks every worker or every
peer daemon, waits for their REPLYs (or a deadline), and answers the requester
once with the combined parts.
"""

from __future__ import annotations

import itertools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from ..wire.messages import Msg

log = logging.getLogger("meshcompute.daemon")


@dataclass
class Gather:
    """A request answered from several processes (workers, peer daemons) at once."""

    requester: Any  # a process to REPLY to, or a callable the daemon itself waits with
    req_id: int | None
    parts: list
    waiting: set
    deadline: float
    combine: Any  # parts -> the value of the REPLY


class Gathers:
    """Owns the gathers in progress, by the sub-request ids sent for them.

    Invariants: every sub-request id in ``by_sub`` is one the gather is still
    ``waiting`` for; a gather answers its requester exactly once, when nothing
    is left waiting or at its deadline, whichever comes first.
    """

    def __init__(self, send: Callable[..., None]) -> None:
        self.send = send
        self.by_sub: dict[int, Gather] = {}  # sub-request id -> its gather
        self._sub_req_ids = itertools.count(1)

    def __bool__(self) -> bool:
        return bool(self.by_sub)

    def gather(self, requester: str, req_id: int, requests: list, local: list, timeout: float,
               combine: Callable[[list], Any]) -> None:
        """Send each ``(addr, msg_type, *fields)`` with a fresh req_id; REPLY to the requester
        with ``combine(local + answers)`` once all answered or ``timeout`` passed."""
        g = Gather(requester, req_id, list(local), set(), time.monotonic() + timeout, combine)
        for addr, msg_type, *fields in requests:
            sub_id = next(self._sub_req_ids)
            try:
                self.send(addr, msg_type, sub_id, *fields)
            except (ValueError, zmq.ZMQError) as e:
                log.warning("cannot ask %s: %s", addr, e)
                continue
            g.waiting.add(sub_id)
            self.by_sub[sub_id] = g
        if not g.waiting:
            self._finish(g)

    def on_reply(self, sender: str, msg: tuple, frames: list) -> None:
        g = self.by_sub.pop(msg[1], None)
        if g is None:
            return
        g.waiting.discard(msg[1])
        g.parts.append(msg[2])
        if not g.waiting:
            self._finish(g)

    def expire(self, now: float) -> None:
        for g in {id(g): g for g in self.by_sub.values()}.values():
            if now >= g.deadline:
                for sub_id in g.waiting:
                    self.by_sub.pop(sub_id, None)
                g.waiting.clear()
                self._finish(g)

    def _finish(self, g: Gather) -> None:
        try:
            value = g.combine(g.parts)
        except Exception:  # noqa: BLE001 - a bad answer must not lose the reply
            log.error("combining answers for %s failed:\n%s", g.requester, traceback.format_exc())
            value = []
        if callable(g.requester):
            g.requester(value)
        else:
            self.send(g.requester, Msg.REPLY, g.req_id, value)


def flatten(parts: list) -> list:
    return [item for part in parts if isinstance(part, list) for item in part]


def flatten_lanes(parts: list) -> list:
    """Worker answers are dicts, peer daemons' answers lists of them."""
    out = []
    for part in parts:
        if isinstance(part, dict):
            out.append(part)
        elif isinstance(part, list):
            out.extend(p for p in part if isinstance(p, dict))
    return out
