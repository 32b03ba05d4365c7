"""Sockets of one process: ROUTER inboxes, one DEALER outbox per peer.

Owned by exactly one thread (the process's I/O thread or the daemon's loop): a
ZeroMQ socket never crosses threads.

**Addresses are location-transparent**: ``<node_id>/<name>@<tcp endpoint>``, e.g.
``3f9a1c2e0b7d4e11/p_5c0adf3e07deef62@tcp://10.77.0.11:41873``.  A peer on the same
node is reached over ``ipc://<session_dir>/<name>.sock``; any other over TCP.  A
process of a node that is not part of a mesh has no TCP part and is reachable only
on its node.  Our DEALERs carry our address as identity, so a receiver knows where
to answer.

Outboxes have no high-water mark: flow control is the runtime's job (leases and
per-worker pipeline depth), and a ROUTER must never drop silently.  TCP sockets
are secured with CURVE when ``keys`` are given (see auth.py).
"""

from __future__ import annotations

import time
from typing import Any

import zmq


def make_address(node_id: str, name: str, tcp: str = "") -> str:
    return f"{node_id}/{name}@{tcp}"


def parse_address(address: str) -> tuple[str, str, str]:
    """Split an address into (node_id, name, tcp endpoint or "")."""
    head, sep, tcp = address.partition("@")
    node_id, slash, name = head.partition("/")
    if not sep or not slash or not node_id or not name or (tcp and not tcp.startswith("tcp://")):
        raise ValueError(f"not a peer address: {address[:80]!r}")
    return node_id, name, tcp


def node_of(address: str) -> str:
    return address.partition("/")[0]


def drain(inbox: zmq.Socket, handle, limit: int) -> None:
    """Hand up to ``limit`` messages waiting on ``inbox`` to ``handle(frames)``, without
    blocking: bounded, so that one busy peer cannot starve a loop's other duties."""
    for _ in range(limit):
        try:
            frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        handle(frames)


class Endpoint:
    def __init__(self, ctx: zmq.Context, node_id: str, name: str, session_dir: str,
                 host: str | None = None, port: int = 0, keys: Any = None) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.session_dir = session_dir
        self.keys = keys
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        # A peer that reconnects takes over its identity instead of being ignored.
        self.inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.inbox.bind(f"ipc://{session_dir}/{name}.sock")
        self.tcp_inbox: zmq.Socket | None = None
        self.auth: Any = None
        tcp = ""
        if host is not None:
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if keys is not None:
                from .auth import MeshAuthenticator, secure_server

                # Only holders of the mesh key get through; refusals are logged.
                self.auth = MeshAuthenticator(ctx, keys).start()
                self.auth.watch(sock)  # failed handshakes never reach ZAP: log them too
                secure_server(sock, keys)
            if port:
                sock.bind(f"tcp://{host}:{port}")
            else:
                port = sock.bind_to_random_port(f"tcp://{host}")
            self.tcp_inbox = sock
            tcp = f"tcp://{host}:{port}"
        self.address = make_address(node_id, name, tcp)
        self._identity = self.address.encode()
        self.out: dict[str, zmq.Socket] = {}  # peer address -> its connection
        self._by_endpoint: dict[str, zmq.Socket] = {}

    @property
    def inboxes(self) -> list[zmq.Socket]:
        return [self.inbox] if self.tcp_inbox is None else [self.inbox, self.tcp_inbox]

    def resolve(self, peer: str) -> str:
        node_id, name, tcp = parse_address(peer)
        if node_id == self.node_id:
            return f"ipc://{self.session_dir}/{name}.sock"
        if not tcp:
            raise ValueError(f"{peer!r} is on another node and has no TCP address")
        return tcp

    def outbox(self, peer: str) -> zmq.Socket:
        sock = self.out.get(peer)
        if sock is None:
            endpoint = self.resolve(peer)
            # One connection per endpoint: a ROUTER ignores a second connection
            # that presents an identity it already has.
            sock = self._by_endpoint.get(endpoint)
            if sock is not None:
                self.out[peer] = sock
                return sock
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.IDENTITY, self._identity)
            if endpoint.startswith("tcp://") and self.keys is not None:
                from .auth import secure_client

                secure_client(sock, self.keys)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError:
                sock.close(linger=0)
                raise
            self.out[peer] = sock
            self._by_endpoint[endpoint] = sock
        return sock

    def send(self, peer: str, frames: list) -> None:
        self.outbox(peer).send_multipart(frames, copy=False)

    def forget(self, peer: str) -> None:
        sock = self.out.pop(peer, None)
        if sock is not None:
            for key in [k for k, v in self.out.items() if v is sock]:
                del self.out[key]
            for key in [k for k, v in self._by_endpoint.items() if v is sock]:
                del self._by_endpoint[key]
            sock.close(linger=0)

    def close(self, linger: int = 0) -> None:
        for sock in self._by_endpoint.values():
            sock.close(linger=linger)
        self.out.clear()
        self._by_endpoint.clear()
        for sock in self.inboxes:
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class DropLog:
    """Counts what a loop refuses or fails at (malformed messages, handler errors) and logs
    it at most once per ``every_s`` seconds per kind, with how many came since: a flood of
    bad messages must not become a flood of log lines."""

    def __init__(self, logger: Any, every_s: float = 5.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def note(self, what: str, sender: str, detail: str = "") -> None:
        kind = what.split(" ", 3)[:3]
        key = " ".join(kind)
        self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every_s:
            return
        self._last[key] = now
        self.logger.warning("dropped %s from %s (%d of this kind so far)%s", what, sender[:80] or "-",
                            self.counts[key], f":\n{detail}" if detail else "")
