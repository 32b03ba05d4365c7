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

**Frame size.**  Every TCP socket refuses a frame over ``MAX_FRAME_BYTES``
(``ZMQ_MAXMSGSIZE``): libzmq reads a frame's declared length before it allocates
anything and drops a connection that declares more, so a connection that has not
authenticated cannot make a node hold more than that.  For our own messages to fit,
:meth:`Endpoint.send` splits every frame over ``MAX_FRAME_BYTES`` and :func:`recv`
joins it again, whatever the transport (one rule for ipc and TCP):

* a message whose frames are all at most ``MAX_FRAME_BYTES`` travels as it is;
* otherwise it travels as ``[SPLIT_MARK + counts, *parts]``: ``counts`` holds one
  little-endian uint32 per frame of the message, the number of parts that frame
  became (1 for a frame that travels whole); a frame is cut into parts of
  ``MAX_FRAME_BYTES`` (the last one shorter), views of the frame's own buffer, so
  nothing is copied on the way out;
* the mark starts with a zero byte and every message's first frame is a header
  pickled with protocol 5, which starts with 0x80: the two cannot be confused;
* a split message carries at most ``MAX_SPLIT_BYTES`` in all: :func:`split` refuses
  to send more (:class:`MessageTooLarge`) and :func:`join` to assemble more.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import zmq

MAX_FRAME_BYTES = (8 << 20) + (64 << 10)
"""The largest frame a process hands to ZeroMQ (a larger one is split), and, with
CURVE_BOX_BYTES, the ZMQ_MAXMSGSIZE of every TCP socket: what one connection that has
not authenticated can make a node allocate.  8 MiB + 64 KiB so that a chunk of an
object pull (node/pulls.py: 8 MiB, lz4 makes it at most 32 KiB larger) travels whole
and zero-copy; every other frame of the protocol is far smaller, except headers that
carry pickled functions or many inline arguments, and those are split."""

CURVE_BOX_BYTES = 33
"""What CURVE adds to a frame on the wire (command name, nonce, MAC).  libzmq applies
ZMQ_MAXMSGSIZE to the wire frame, so TCP sockets allow this much more."""

MAX_SPLIT_BYTES = 512 << 20
"""The most one split message may carry (the sum of its frames).  Messages stay far
below it when functions and actor classes are within serialization.MAX_FUNCTION_BYTES
and each call's inline arguments within serialization.INLINE_ARGS_BYTES: a PUSH_TASKS
of 16 tasks then carries at most 160 MiB of arguments and a few functions.  It bounds
what a receiver assembles from parts, whoever sent them."""

SPLIT_MARK = b"\x00split\x00"
"""The first frame of a split message starts with this (see the module docstring)."""


class MessageTooLarge(ValueError):
    """A message over MAX_SPLIT_BYTES: it cannot be sent."""


def _nbytes(frame: Any) -> int:
    return len(frame) if isinstance(frame, (bytes, bytearray, zmq.Frame)) else memoryview(frame).nbytes


def split(frames: list) -> list:
    """The frames of a message as they travel: ``frames`` itself when none is over
    MAX_FRAME_BYTES, else the split form (module docstring); raises MessageTooLarge."""
    for f in frames:
        if _nbytes(f) > MAX_FRAME_BYTES:
            break
    else:
        return frames
    counts: list[int] = []
    parts: list = []
    total = 0
    for f in frames:
        n = _nbytes(f)
        total += n
        if n <= MAX_FRAME_BYTES:
            counts.append(1)
            parts.append(f)
            continue
        view = memoryview(f).cast("B")  # slices of it share the frame's memory: no copy
        pieces = [view[o:o + MAX_FRAME_BYTES] for o in range(0, n, MAX_FRAME_BYTES)]
        counts.append(len(pieces))
        parts.extend(pieces)
    if total > MAX_SPLIT_BYTES:
        raise MessageTooLarge(
            f"a message of {total / 2**20:.1f} MiB is more than the {MAX_SPLIT_BYTES >> 20} MiB one "
            f"message may carry; large data goes through the object store: put it with put() and pass the ref")
    return [SPLIT_MARK + struct.pack(f"<{len(counts)}I", *counts), *parts]


def join(frames: list, start: int = 0) -> list:
    """Undo :func:`split` on ``frames[start:]`` (frames before ``start``, a ROUTER's sender
    address, stay as they are).  A message that was not split comes back as the same list;
    joined frames are bytearrays (writable, as received frames are).  Raises ValueError for
    a split that breaks the rule or carries more than MAX_SPLIT_BYTES, before joining."""
    if len(frames) <= start:
        return frames
    head = frames[start]
    mark = len(SPLIT_MARK)
    if _nbytes(head) < mark or bytes(memoryview(head)[:mark]) != SPLIT_MARK:
        return frames
    table = bytes(memoryview(head)[mark:])
    parts = frames[start + 1:]
    if not table or len(table) % 4:
        raise ValueError("a split message without a whole count table")
    counts = struct.unpack(f"<{len(table) // 4}I", table)
    if min(counts) < 1 or sum(counts) != len(parts):
        raise ValueError(f"a split message whose counts ({sum(counts)} parts) do not match its {len(parts)} parts")
    total = sum(_nbytes(p) for p in parts)
    if total > MAX_SPLIT_BYTES:
        raise ValueError(f"a split message of {total} bytes, over the {MAX_SPLIT_BYTES} allowed")
    out = list(frames[:start])
    i = 0
    for count in counts:
        out.append(parts[i] if count == 1 else bytearray().join(parts[i:i + count]))
        i += count
    return out


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


def recv(inbox: zmq.Socket, flags: int = 0, copy: bool = False) -> list:
    """One message from a ROUTER inbox: ``[sender, header, *buffers]``, split frames joined.

    A split that breaks the rule is handed on as it came: its second frame is then the
    mark, which decodes as no message, so every receiver drops it as malformed."""
    frames = inbox.recv_multipart(flags, copy=copy)
    try:
        return join(frames, 1)
    except ValueError:
        return frames


def drain(inbox: zmq.Socket, handle, limit: int) -> None:
    """Hand up to ``limit`` messages waiting on ``inbox`` to ``handle(frames)``, without
    blocking: bounded, so that one busy peer cannot starve a loop's other duties."""
    for _ in range(limit):
        try:
            frames = recv(inbox, zmq.NOBLOCK)
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
            # Checked by libzmq per frame, before allocating: see MAX_FRAME_BYTES.
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + CURVE_BOX_BYTES)
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
            if endpoint.startswith("tcp://"):
                # Whoever listens there may not be a member: its handshake frames are
                # bounded like those reaching our inbox.
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + CURVE_BOX_BYTES)
                if self.keys is not None:
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
        """Send a message; frames over MAX_FRAME_BYTES travel split (raises MessageTooLarge)."""
        self.outbox(peer).send_multipart(split(frames), copy=False)

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
