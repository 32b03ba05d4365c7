"""The daemon's gossip shell: SWIM membership plus every node's resource view.

A thin I/O layer over the pure protocol core in :mod:`meshcompute.gossip`: it
feeds packets and clock readings in and hands packets back to the daemon's
sockets.  Each node's resource view is a small JSON document carried as SWIM
member meta (versioned, newest wins).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import EventKind, GossipConfig, MemberEvent, MemberState, Swim, encode

DAEMON_GOSSIP = GossipConfig.lan(suspicion_mult=5)
"""The LAN profile with 1 s of suspicion for small meshes (instead of 0.4 s): a
daemon busy moving data, on a small machine, gets time to refute a suspicion;
a killed node is still declared dead in about 1.5 s (probe 0.3 s + suspicion)."""

STATE_NAMES = {MemberState.ALIVE: "alive", MemberState.SUSPECT: "suspect", MemberState.DEAD: "dead",
               MemberState.LEFT: "left"}


@dataclass
class PeerView:
    """What gossip says about another node."""

    node_id: str
    swim_addr: str
    state: str = "alive"
    address: str = ""  # the daemon's mesh address
    total: dict = field(default_factory=dict)
    available: dict = field(default_factory=dict)
    store: tuple = (0, 0)
    queue: int = 0
    gcs: list = field(default_factory=list)  # [role, term, commit, leader node id] in the control store
    version: int = 0


class _Views:
    """The narrow delegate SWIM calls: our view out, others' views in."""

    def __init__(self, local: Callable[[], bytes]) -> None:
        self._local = local
        self.remote: dict[str, tuple[int, dict]] = {}

    def local_meta(self) -> bytes:
        return self._local()

    def merge_remote_meta(self, node: str, version: int, blob: bytes) -> None:
        try:
            view = json.loads(blob)
            if not isinstance(view, dict):
                return
        except ValueError:
            return  # a peer's bad meta is dropped, never fatal
        self.remote[node] = (version, view)


class Membership:
    def __init__(self, node_id: str, swim_addr: str, local_view: Callable[[], dict],
                 send: Callable[[str, bytes], None], config: GossipConfig | None = None,
                 seed: int | None = None) -> None:
        self._local_view = local_view
        self._send = send
        self._views = _Views(self._encode_local)
        self.swim = Swim(node_id, swim_addr, rng=random.Random(seed), config=config or DAEMON_GOSSIP,
                         delegate=self._views, now=time.monotonic())
        self._last_view: Any = None

    def _encode_local(self) -> bytes:
        return json.dumps(self._local_view(), separators=(",", ":")).encode()

    def _emit(self, out) -> list[MemberEvent]:
        for dest, msg in out.packets:
            self._send(dest, encode(msg))
        return out.events

    def join(self, seeds: list[str]) -> list[MemberEvent]:
        return self._emit(self.swim.join(seeds, time.monotonic()))

    def on_packet(self, src: str, data: bytes) -> list[MemberEvent]:
        return self._emit(self.swim.on_datagram(src, data, time.monotonic()))

    def tick(self) -> list[MemberEvent]:
        now = time.monotonic()
        deadline = self.swim.next_deadline()
        if deadline is not None and now >= deadline:
            return self._emit(self.swim.on_tick(now))
        return []

    def seconds_to_deadline(self) -> float:
        deadline = self.swim.next_deadline()
        return 1.0 if deadline is None else max(0.0, deadline - time.monotonic())

    def maybe_update_view(self) -> list[MemberEvent]:
        """Re-announce our resource view when it changed."""
        view = self._local_view()
        key = json.dumps(view, sort_keys=True)
        if key == self._last_view:
            return []
        self._last_view = key
        return self._emit(self.swim.update_meta(time.monotonic()))

    def leave(self) -> list[MemberEvent]:
        return self._emit(self.swim.leave(time.monotonic()))

    def leave_done(self) -> bool:
        return self.swim.leave_done()

    def peers(self) -> dict[str, PeerView]:
        out = {}
        for m in self.swim.members():
            if m.node == self.swim.node_id:
                continue
            pv = PeerView(m.node, m.addr, STATE_NAMES.get(m.state, str(m.state)))
            version, view = self._views.remote.get(m.node, (0, {}))
            pv.version = version
            pv.address = view.get("a", "")
            pv.total = view.get("t", {})
            pv.available = view.get("v", {})
            pv.store = tuple(view.get("s", (0, 0)))
            pv.queue = view.get("q", 0)
            g = view.get("g")
            pv.gcs = g if isinstance(g, list) and len(g) == 4 else []
            out[m.node] = pv
        return out


def event_summary(ev: MemberEvent) -> str:
    kind = ev.kind.value if isinstance(ev.kind, EventKind) else str(ev.kind)
    return f"{kind} {ev.node} at {ev.addr}"
