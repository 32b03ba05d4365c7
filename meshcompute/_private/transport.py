"""Sockets of one process: one ROUTER inbox, one DEALER outbox per peer.

Owned by exactly one thread (the process's I/O thread or the daemon's loop): a
ZeroMQ socket never crosses threads.  A peer's address is the endpoint of its
inbox; our DEALERs carry our inbox address as identity, so a receiver knows where
to answer.  Outboxes have no high-water mark: flow control is the runtime's job
(leases and per-worker pipeline depth), and a ROUTER must never drop silently.
"""

from __future__ import annotations

import zmq


class Endpoint:
    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.ctx = ctx
        self.address = address
        self._identity = address.encode()
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        self.inbox.bind(address)
        self.out: dict[str, zmq.Socket] = {}

    def outbox(self, peer: str) -> zmq.Socket:
        sock = self.out.get(peer)
        if sock is None:
            if not peer.startswith(("ipc://", "tcp://")):
                raise ValueError(f"not a peer address: {peer[:80]!r}")
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.IDENTITY, self._identity)
            try:
                sock.connect(peer)
            except zmq.ZMQError:
                sock.close(linger=0)
                raise
            self.out[peer] = sock
        return sock

    def send(self, peer: str, frames: list) -> None:
        self.outbox(peer).send_multipart(frames, copy=False)

    def forget(self, peer: str) -> None:
        sock = self.out.pop(peer, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self, linger: int = 0) -> None:
        for sock in self.out.values():
            sock.close(linger=linger)
        self.out.clear()
        self.inbox.close(linger=0)
