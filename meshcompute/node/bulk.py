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

**Security.**  Bulk sockets use ZeroMQ's NULL mechanism (CURVE encrypts with
XSalsa20-Poly1305 in libzmq's single I/O thread and held pulls to a third of raw
TCP), so anyone who reaches the port may connect and send frames.  Every message
is sealed instead (wire/sealing.py: AES-256-GCM, AES-NI): BULK_OPEN, itself on
the CURVE channel, hands the holder a session id and a fresh key the puller made,
so only a member can open a session, and a frame that is not sealed under a live
session's key, or comes again, is dropped and counted (``NODE_INFO`` ->
``dropped``: ``bulk: ...``) before anything of it is decoded.  Frame sizes are
bounded before decryption: libzmq refuses a frame over a socket's ZMQ_MAXMSGSIZE
before allocating it (the holder's socket takes only requests, 4 KiB; a puller's
DEALER, connected only to the endpoint a member named, a chunk's worth).  Chunks
are sealed and opened on the copier's threads, never on the loop (which opens only
the headers, a hundred bytes each).
docs/security.md has the threat analysis.

The kernel then interleaves a probe's packets with the chunks' on the link (a
queue of milliseconds) instead of after every chunk queued before it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..wire.messages import Msg, decode, describe, encode
from ..wire.sealing import (
    ANSWER,
    PARTS,
    REQUEST,
    TAG_BYTES,
    BoxBuffers,
    InvalidTag,
    ReplayWindow,
    Seal,
    new_key,
    new_session_id,
    parse_prefix,
)
from ..wire.transport import MAX_FRAME_BYTES, DropLog, parse_address

log = logging.getLogger("meshcompute.daemon")

REQUESTS = (Msg.PULL_CHUNK, Msg.PULL_DONE)
"""What a puller sends on the bulk channel (to the holder's bulk socket)."""
ANSWERS = (Msg.CHUNK_DATA,)
"""What a holder sends back on it (to the puller's DEALER)."""
REQUEST_FRAME_BYTES = 4096
"""The largest frame a holder's bulk socket accepts: requests are sealed headers of
about 100 bytes.  A stranger's connection holds at most HWM of them."""
ANSWER_FRAME_BYTES = MAX_FRAME_BYTES + TAG_BYTES
"""The largest frame a puller's bulk DEALER accepts: one sealed chunk."""
HWM = 256
"""Messages a bulk connection queues at most each way, a backstop to the pulls' credit
windows (PULL_WINDOW chunks in flight per pull)."""
BULK_TOS = 0x08
"""IP type of service of what a holder sends on its bulk socket (chunks):
IPTOS_THROUGHPUT, the "bulk" class.  A queue
that serves by class (Linux's pfifo_fast, a DSCP-aware switch) then sends the control
channel's packets first when a link is full; fq_codel (Linux's default on a real
interface) gets the same from serving sparse flows first."""
SEAL_BUFFERS = 8
"""Chunk-sized buffers kept for sealing (PULL_WINDOW chunks of two pulls in flight)."""
SEAL_BUFFERS_IDLE_S = 2.0
"""Seconds without a chunk sealed after which the kept buffers are freed."""
OPEN_TIMEOUT_S = 5.0
"""How long a puller waits for BULK_OPEN's answer before it drops what waited (a pull
asks again after its stall timeout)."""

Copy = Callable[[Callable[[], Any], Callable[[Any, BaseException | None], None]], None]
Reading = Callable[[Callable[[], Any]], Any]
"""``reading(read)`` runs ``read()`` (on a helper thread), having made the chunk's bytes
ready to read (node/pulls.py maps the arena pages where the daemon's mapping lacks them)."""


@dataclass
class Session:
    """One puller-holder pair's key and counters, on either side."""

    seal: Seal
    peer: str  # the other daemon's address (it opened or answered on the CURVE channel)
    sent: int = 0  # the counter of the next message we seal
    window: ReplayWindow = field(default_factory=ReplayWindow)  # what we accepted of theirs
    route: bytes | None = None  # holder side: the connection its last good request came on

    def reserve(self) -> int:
        counter, self.sent = self.sent, self.sent + PARTS
        return counter


class BulkChannel:
    """Owns the bulk sockets of one daemon: its bulk ROUTER and one DEALER per holder,
    and the sessions on them.

    Invariants: messages to one holder are sealed and leave in the order they were
    sent, whether they waited for BULK_OPEN's answer or not; a peer has at most one
    session with us each way (a new BULK_OPEN replaces the old); a socket is
    registered with the loop's poller while it exists (``watch``), and unregistered
    before it is closed.
    """

    def __init__(self, ctx: zmq.Context, host: str, ask: Callable[[str, bytes, bytes, Callable[[Any], None]], None],
                 copy: Copy, drops: DropLog) -> None:
        self.ctx = ctx
        self.ask = ask  # ask(daemon, session_id, key, answer): BULK_OPEN on the CURVE channel
        self.copy = copy  # copy(job, done): job on a helper thread, done on the loop
        self.drops = drops
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Credit windows bound what is in flight; the high-water marks are only a backstop
        # (a ROUTER drops an answer past it: the pull asks again after its stall timeout).
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.TOS, BULK_TOS)
        sock.setsockopt(zmq.MAXMSGSIZE, REQUEST_FRAME_BYTES)  # checked by libzmq before allocating
        port = sock.bind_to_random_port(f"tcp://{host}")
        self.inbox = sock
        self.endpoint = f"tcp://{host}:{port}"
        self.served: dict[bytes, Session] = {}  # session id -> a puller's session with us
        self.served_by_peer: dict[str, bytes] = {}  # puller daemon -> its session id
        self.pulling: dict[str, Session] = {}  # holder daemon -> our session with it
        self.out: dict[str, zmq.Socket] = {}  # holder daemon -> our DEALER to its bulk socket
        self.holder_of: dict[zmq.Socket, str] = {}
        self.waiting: dict[str, list] = {}  # holder -> (type, fields) waiting for BULK_OPEN's answer
        self.buffers = BoxBuffers(ANSWER_FRAME_BYTES, SEAL_BUFFERS)
        self._next_trim = 0.0
        self._poller: zmq.Poller | None = None

    def watch(self, poller: zmq.Poller) -> None:
        """Register our sockets with the loop's poller, now and as they come."""
        self._poller = poller
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [self.inbox, *self.out.values()]

    # ------------------------------------------------------------ sending

    def tick(self, now: float) -> None:
        """Free the sealing buffers once no chunk was sealed for SEAL_BUFFERS_IDLE_S."""
        if now >= self._next_trim:
            self._next_trim = now + SEAL_BUFFERS_IDLE_S
            self.buffers.drop_idle()

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = (),
             after: Callable[[], None] | None = None, reading: Reading | None = None) -> None:
        """A request goes to holder ``peer``'s bulk socket; an answer back to puller ``peer``
        (sealed on a helper thread when it carries a chunk, inside ``reading``; ``after()``
        on the loop once the chunk's buffer is no longer read)."""
        if msg_type in ANSWERS:
            self._answer(peer, [encode(msg_type, *fields), *frames[:1]], after, reading)
            return
        s = self.pulling.get(peer)
        if s is not None and peer in self.out:
            self.out[peer].send_multipart(s.seal.seal(REQUEST, s.reserve(), [encode(msg_type, *fields)]), copy=False)
            return
        queue = self.waiting.get(peer)
        if queue is not None:
            queue.append((msg_type, fields))
            return
        self.waiting[peer] = [(msg_type, fields)]
        key = new_key()
        session = Session(Seal(key, new_session_id()), peer)
        self.ask(peer, session.seal.session_id, key, lambda endpoint: self._opened(session, endpoint))

    def _answer(self, puller: str, parts: list, after: Callable[[], None] | None,
                reading: Reading | None) -> None:
        sid = self.served_by_peer.get(puller)
        s = self.served.get(sid) if sid is not None else None
        if s is None or s.route is None:
            if after is not None:
                after()
            return  # no session (the puller is gone): its pull asks again or fails
        counter = s.reserve()

        def sent(sealed: Any, err: BaseException | None) -> None:
            if after is not None:
                after()
            if err is not None:
                log.warning("sealing a chunk for %s failed: %s", puller, err)
            elif self.served.get(sid) is s:
                self.inbox.send_multipart([s.route, *sealed], copy=False)

        if len(parts) == 1:
            sent(s.seal.seal(ANSWER, counter, parts), None)
            return

        def seal() -> list:
            return s.seal.seal(ANSWER, counter, parts, self.buffers)

        self.copy(seal if reading is None else lambda: reading(seal), sent)

    def _opened(self, s: Session, endpoint: Any) -> None:
        holder = s.peer
        if holder not in self.waiting:
            return  # the holder went away meanwhile
        queue = self.waiting.pop(holder)
        if not (isinstance(endpoint, str) and endpoint.startswith("tcp://")):
            log.warning("no bulk channel to %s (%r); %d messages dropped", holder, endpoint, len(queue))
            return
        self._close(holder)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # requests are small; a send on the loop must never block
        sock.setsockopt(zmq.RCVHWM, HWM)
        # No TOS mark here: requests are small and must not queue behind the chunks this node
        # itself sends on (a relay's link carries both).
        sock.setsockopt(zmq.MAXMSGSIZE, ANSWER_FRAME_BYTES)
        sock.connect(endpoint)
        self.pulling[holder] = s
        self.out[holder] = sock
        self.holder_of[sock] = holder
        if self._poller is not None:
            self._poller.register(sock, zmq.POLLIN)
        for msg_type, fields in queue:
            sock.send_multipart(s.seal.seal(REQUEST, s.reserve(), [encode(msg_type, *fields)]), copy=False)

    def on_open(self, sender: str, msg: tuple, reply: Callable[[str, int, Any], None]) -> None:
        """BULK_OPEN (CURVE channel, so from a member): keep the puller's session, answer
        with our bulk socket's endpoint.  Only a daemon opens one, one per daemon."""
        _, req_id, sid, key = msg
        if parse_address(sender)[1] != "daemon" or not isinstance(sid, bytes) or not isinstance(key, bytes):
            raise ValueError("BULK_OPEN from a process that is no daemon, or without a session id and key")
        s = Session(Seal(key, sid), sender)  # checks the lengths
        old = self.served_by_peer.get(sender)
        if old is not None:
            self.served.pop(old, None)
        if sid in self.served:
            raise ValueError("BULK_OPEN with a session id in use")
        self.served[sid] = s
        self.served_by_peer[sender] = sid
        reply(sender, req_id, self.endpoint)

    # ------------------------------------------------------------ receiving

    def drain(self, sock: zmq.Socket, handlers: dict, limit: int) -> None:
        """Check, open and hand on up to ``limit`` messages waiting on ``sock``."""
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if sock is self.inbox:
                self._request(frames[0].bytes, frames[1:], handlers)
            else:
                self._chunk(self.holder_of.get(sock, ""), frames, handlers)

    def _check(self, frames: list, sessions: dict) -> tuple[Session, int] | None:
        """The session and counter of a well-formed message with a fresh counter, else None
        (dropped and counted).  No decryption and no allocation yet.  Its header box (which
        the loop opens itself) is at most REQUEST_FRAME_BYTES: a sealed header is a hundred."""
        parsed = (parse_prefix(frames[0]) if 2 <= len(frames) <= 1 + PARTS
                  and memoryview(frames[1]).nbytes <= REQUEST_FRAME_BYTES else None)
        if parsed is None:
            self.drops.note("bulk: malformed frame", "")
            return None
        sid, counter = parsed
        s = sessions.get(sid)
        if s is None:
            self.drops.note("bulk: unknown session", "")
            return None
        if not s.window.fresh(counter):
            self.drops.note("bulk: replayed frame", s.peer)
            return None
        return s, counter

    def _request(self, route: bytes, frames: list, handlers: dict) -> None:
        checked = self._check(frames, self.served)
        if checked is None:
            return
        s, counter = checked
        try:
            parts = s.seal.open(REQUEST, counter, frames[0], frames[1:])
        except InvalidTag:
            self.drops.note("bulk: forged frame", s.peer)
            return
        s.window.accept(counter)
        s.route = route  # answers go back on the connection of the last good request
        self._handle(s.peer, parts, REQUESTS, handlers)

    def _chunk(self, holder: str, frames: list, handlers: dict) -> None:
        s = self.pulling.get(holder)
        checked = self._check(frames, {s.seal.session_id: s} if s is not None else {})
        if checked is None:
            return
        counter = checked[1]
        # Only the header is opened here, on the loop (its own tag): the chunk stays sealed,
        # and the pull opens it on a helper thread straight into the object's block.
        try:
            parts = s.seal.open_first(ANSWER, counter, frames[0], frames[1:])
        except InvalidTag:
            self.drops.note("bulk: forged frame", holder)
            return
        s.window.accept(counter)
        self._handle(holder, parts, ANSWERS, handlers)

    def _handle(self, sender: str, parts: list, allowed: tuple, handlers: dict) -> None:
        # Sealed under a session only a member could open: as trusted as the CURVE channel.
        try:
            msg = decode(parts[0])
            if msg[0] not in allowed:
                raise ValueError("not a bulk message")
            handler = handlers[msg[0]]
        except Exception:
            self.drops.note("bulk: malformed message", sender)
            return
        try:
            handler(sender, msg, parts[1:])
        except Exception:
            self.drops.note(f"an error handling {describe(msg)}", sender, traceback.format_exc())

    # ------------------------------------------------------------ peers

    def peer_gone(self, daemon: str) -> None:
        """A peer daemon is gone: its sessions and our connection to its bulk socket go."""
        self.waiting.pop(daemon, None)
        sid = self.served_by_peer.pop(daemon, None)
        if sid is not None:
            self.served.pop(sid, None)
        self._close(daemon)

    def _close(self, holder: str) -> None:
        self.pulling.pop(holder, None)
        sock = self.out.pop(holder, None)
        if sock is not None:
            del self.holder_of[sock]
            if self._poller is not None:
                self._poller.unregister(sock)
            sock.close(linger=0)

    def close(self) -> None:
        for daemon in list(self.out):
            self._close(daemon)
        self.inbox.close(linger=0)

