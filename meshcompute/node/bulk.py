"""The bulk channel: chunks of object pulls travel on connections of their own.

A daemon's inbox connection to a peer carries gossip probes, leases and control
store traffic; were a pull's chunks queued on it too, a probe's answer would wait
behind them (four readers of one 256 MiB object on a 200 Mbit/s link queued
seconds of chunks, and the holder was declared dead).  So every daemon of a mesh
binds a second TCP ROUTER, its *bulk* socket, and a puller talks to a holder over
one DEALER of its own per holder:

* the puller asks the holder over the control channel where its bulk socket is
  (``BULK_OPEN``, answered with the endpoint); until the answer comes, what it
  would send there waits (in order);
* ``PULL_CHUNK`` and ``PULL_DONE`` go out on that DEALER; the holder answers each
  ``CHUNK_DATA`` on the connection the request came on (a ROUTER reply), so a
  holder opens no connection of its own;
* nothing else travels there: the bulk socket hands only those three messages on.

The kernel then interleaves a probe's packets with the chunks' on the link (a
queue of milliseconds) instead of after every chunk queued before it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from ..wire.messages import Msg, decode, describe, encode
from ..wire.transport import CURVE_BOX_BYTES, MAX_FRAME_BYTES, DropLog

log = logging.getLogger("meshcompute.daemon")

REQUESTS = (Msg.PULL_CHUNK, Msg.PULL_DONE)
"""What a puller sends on the bulk channel (to the holder's bulk socket)."""
ANSWERS = (Msg.CHUNK_DATA,)
"""What a holder sends back on it (to the puller's DEALER)."""
HWM = 256
"""Messages a bulk connection queues at most each way, a backstop to the pulls' credit
windows (PULL_WINDOW chunks in flight per pull)."""
BULK_TOS = 0x08
"""IP type of service of bulk connections: IPTOS_THROUGHPUT, the "bulk" class.  A queue
that serves by class (Linux's pfifo_fast, a DSCP-aware switch) then sends the control
channel's packets first when a link is full; fq_codel (Linux's default on a real
interface) gets the same from serving sparse flows first."""
OPEN_TIMEOUT_S = 5.0
"""How long a puller waits for BULK_OPEN's answer before it drops what waited (a pull
asks again after its stall timeout)."""


class BulkChannel:
    """Owns the bulk sockets of one daemon: its bulk ROUTER and one DEALER per holder.

    Invariants: messages to one holder leave in the order they were sent, whether they
    waited for BULK_OPEN's answer or not; a socket is registered with the loop's poller
    while it exists (``watch``), and unregistered before it is closed.
    """

    def __init__(self, ctx: zmq.Context, host: str, identity: str, keys: Any, auth: Any,
                 ask: Callable[[str, Callable[[Any], None]], None], drops: DropLog) -> None:
        self.ctx = ctx
        self.identity = identity.encode()
        self.keys = keys
        self.ask = ask  # ask(daemon, answer): BULK_OPEN over the control channel; answer(endpoint or None)
        self.drops = drops
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Credit windows bound what is in flight; the high-water marks are only a backstop
        # (a ROUTER drops an answer past it: the pull asks again after its stall timeout).
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.TOS, BULK_TOS)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + CURVE_BOX_BYTES)
        if keys is not None:
            from ..wire.auth import secure_server

            auth.watch(sock)
            secure_server(sock, keys)
        port = sock.bind_to_random_port(f"tcp://{host}")
        self.inbox = sock
        self.endpoint = f"tcp://{host}:{port}"
        self.out: dict[str, zmq.Socket] = {}  # holder daemon address -> our DEALER to its bulk socket
        self.holder_of: dict[zmq.Socket, str] = {}
        self.waiting: dict[str, list] = {}  # holder -> messages waiting for BULK_OPEN's answer
        self._poller: zmq.Poller | None = None

    def watch(self, poller: zmq.Poller) -> None:
        """Register our sockets with the loop's poller, now and as they come."""
        self._poller = poller
        for sock in [self.inbox, *self.out.values()]:
            poller.register(sock, zmq.POLLIN)

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [self.inbox, *self.out.values()]

    # ------------------------------------------------------------ sending

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        """A request goes to holder ``peer``'s bulk socket; an answer back to puller ``peer``."""
        message = [encode(msg_type, *fields), *frames]
        if msg_type in ANSWERS:
            self.inbox.send_multipart([peer.encode(), *message], copy=False)
            return
        sock = self.out.get(peer)
        if sock is not None:
            sock.send_multipart(message, copy=False)
            return
        queue = self.waiting.get(peer)
        if queue is not None:
            queue.append(message)
            return
        self.waiting[peer] = [message]
        self.ask(peer, lambda endpoint: self._opened(peer, endpoint))

    def _opened(self, holder: str, endpoint: Any) -> None:
        if holder not in self.waiting:
            return  # the holder went away meanwhile
        queue = self.waiting.pop(holder)
        sock = self.out.get(holder)
        if sock is None:
            if not (isinstance(endpoint, str) and endpoint.startswith("tcp://")):
                log.warning("no bulk channel to %s (%r); %d messages dropped", holder, endpoint, len(queue))
                return
            sock = self._connect(holder, endpoint)
        for message in queue:
            sock.send_multipart(message, copy=False)

    def _connect(self, holder: str, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.SNDHWM, 0)  # requests are small; a send on the loop must never block
        sock.setsockopt(zmq.TOS, BULK_TOS)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + CURVE_BOX_BYTES)
        if self.keys is not None:
            from ..wire.auth import secure_client

            secure_client(sock, self.keys)
        sock.connect(endpoint)
        self.out[holder] = sock
        self.holder_of[sock] = holder
        if self._poller is not None:
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def on_open(self, sender: str, msg: tuple, reply: Callable[[str, int, Any], None]) -> None:
        """BULK_OPEN (control channel): tell the puller where our bulk socket is."""
        reply(sender, msg[1], self.endpoint)

    # ------------------------------------------------------------ receiving

    def drain(self, sock: zmq.Socket, handlers: dict, limit: int) -> None:
        """Hand up to ``limit`` messages waiting on ``sock`` to their handlers."""
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if sock is self.inbox:
                sender, allowed, frames = frames[0].bytes.decode(errors="replace"), REQUESTS, frames[1:]
            else:
                sender, allowed = self.holder_of.get(sock, ""), ANSWERS
            try:
                msg = decode(frames[0])
                if msg[0] not in allowed:
                    raise ValueError("not a bulk message")
                handler = handlers[msg[0]]
            except Exception:
                self.drops.note("a malformed bulk message", sender)
                continue
            try:
                handler(sender, msg, frames[1:])
            except Exception:
                self.drops.note(f"an error handling {describe(msg)}", sender, traceback.format_exc())

    # ------------------------------------------------------------ peers

    def peer_gone(self, daemon: str) -> None:
        """A peer daemon is gone: close our connection to its bulk socket."""
        self.waiting.pop(daemon, None)
        sock = self.out.pop(daemon, None)
        if sock is not None:
            del self.holder_of[sock]
            if self._poller is not None:
                self._poller.unregister(sock)
            sock.close(linger=0)

    def close(self) -> None:
        for daemon in list(self.out):
            self.peer_gone(daemon)
        self.inbox.close(linger=0)
