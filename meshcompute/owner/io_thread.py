"""The I/O thread of a driver or worker: every socket of the process, one loop.

User threads never touch a socket: they ``post`` work here (a deque plus an
eventfd to wake the loop) and wait on events.  The loop runs posted work,
dispatches what arrives on the inbox to the handler of its type, fires timers,
and after each turn calls the ``after_turn`` hooks (a worker flushes its
results there, one TASKS_DONE per owner per turn).  This class implements
:class:`~.io.OwnerIo` for the state objects.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from .. import exceptions as exc
from ..wire.messages import Msg, decode, describe, encode
from ..wire.transport import DropLog, Endpoint, drain, node_of, parse_address, recv
from .objects import Waiter

log = logging.getLogger("meshcompute")

NO_ANSWER = ("error", "no answer: the node's daemon is gone")
"""What a request waiting for a reply is woken with when the answer cannot come."""


class IoThread:
    def __init__(self, *, session_dir: str, daemon_addr: str, node_id: str, name: str,
                 host: str | None, keys: Any) -> None:
        self.daemon_addr = daemon_addr
        self.node_id = node_id
        self._ctx = zmq.Context(io_threads=1)
        self._ctx.setsockopt(zmq.LINGER, 0)
        self._ep = Endpoint(self._ctx, node_id, name, session_dir, host=host, keys=keys)
        self.address = self._ep.address
        self.closed = False
        self.local_node_died: BaseException | None = None  # our daemon is gone: requests fail with it
        self._cmds: collections.deque = collections.deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sleeping = False
        self.wakeups = 0  # times a post woke the thread (tests/test_message_counts.py)
        self._replies: dict[int, Waiter] = {}
        self._reply_fns: dict[int, Any] = {}  # req_id -> callback on the I/O thread
        self._req_ids = itertools.count(1)
        self._timers: list = []
        self._early: list = []  # frames that came before the thread ran
        self.handlers: dict[int, Callable] = {Msg.REPLY: self._on_reply}
        self.after_turn: list[Callable[[], None]] = []
        self.drops = DropLog(log)  # malformed messages and handler errors, logged at a bounded rate
        # Messages sent and received, by type: a dict increment each, read by tests
        # that hold the task path to its message budget (tests/test_message_counts.py).
        self.sent: collections.Counter = collections.Counter()
        self.received: collections.Counter = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="meshcompute-io", daemon=True)

    # ------------------------------------------------------------------ OwnerIo

    def send(self, peer: str, msg_type: Msg, *fields: Any, frames: list = ()) -> None:
        self.sent[msg_type] += 1
        self._ep.send(peer, [encode(msg_type, *fields), *frames])

    def forget(self, peer: str) -> None:
        self._ep.forget(peer)

    def forget_node(self, node_id: str) -> None:
        for peer in [p for p in self._ep.out if node_of(p) == node_id]:
            self._ep.forget(peer)

    def call_later(self, delay: float, fn, *args) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, id(fn), fn, args))

    def next_req_id(self) -> int:
        return next(self._req_ids)

    now = staticmethod(time.monotonic)

    # ------------------------------------------------------------------ any thread

    def register(self, kind: str, pid: int, worker_id: str, namespace: str,
                 still_wanted: Callable[[], bool] | None = None) -> tuple:
        """REGISTER with the daemon and wait for REGISTERED (before the thread starts).

        ``still_wanted()`` is asked every 100 ms: a worker whose zygote died stops waiting."""
        self._ep.send(self.daemon_addr, [encode(Msg.REGISTER, kind, pid, worker_id, namespace)])
        poller = zmq.Poller()
        poller.register(self._ep.inbox, zmq.POLLIN)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if poller.poll(100):
                frames = recv(self._ep.inbox)
                msg = decode(frames[1])
                if msg[0] == Msg.REGISTERED:
                    return msg
                self._early.append(frames)  # handled once the I/O thread runs
            elif still_wanted is not None and not still_wanted():
                raise exc.MeshError("the process that started this one is gone; not registering")
        raise exc.MeshSystemError(f"the node daemon at {self.daemon_addr} did not answer within 30 s")

    def start(self) -> None:
        self._thread.start()

    def post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread (thread-safe, non-blocking)."""
        self._cmds.append((fn, args))
        if self._sleeping:
            # One wake-up per sleep: the thread runs every queued command once it is up,
            # and until it holds the GIL again to say so a burst of posts (the refs of a
            # 3,000-return task dropped at once) would each write, a syscall apiece.
            self._sleeping = False
            self.wakeups += 1
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass

    def call(self, fn, *args) -> Any:
        """Run ``fn(*args)`` on the I/O thread and return its value (user thread)."""
        w = Waiter(1)

        def run() -> None:
            w.value = fn(*args)
            w.event.set()

        self.post(run)
        w.event.wait()
        return w.value

    def expect_reply(self, req_id: int) -> Waiter:
        """A waiter for the REPLY carrying ``req_id`` (register before sending)."""
        w = Waiter(1)
        self._replies[req_id] = w
        return w

    def on_reply(self, req_id: int, fn: Callable[[Any], None]) -> None:
        """Call ``fn(value)`` on the I/O thread when the REPLY for ``req_id`` comes."""
        self._reply_fns[req_id] = fn

    def request(self, peer: str, msg_type: Msg, *fields, timeout: float | None = 60.0,
                on_late: Any = None) -> Any:
        """Send a request carrying a fresh req_id as first field; wait for its REPLY.

        ``on_late(value)`` runs on the I/O thread if the answer comes after the timeout.
        """
        if self.local_node_died is not None:
            raise self.local_node_died
        req_id = next(self._req_ids)
        w = self.expect_reply(req_id)
        self.post(self.send, peer, msg_type, req_id, *fields)
        if not w.event.wait(timeout):
            if on_late is not None:
                self.post(self._expect_late, req_id, w, on_late)
            self._replies.pop(req_id, None)
            raise exc.GetTimeoutError(f"no answer from {peer} to {msg_type.name} within {timeout} s")
        if w.value is NO_ANSWER:
            raise self.local_node_died or exc.MeshSystemError(f"no answer from {peer}: it is gone")
        return w.value

    def node_died(self, error: BaseException) -> None:
        """Our daemon is gone (I/O thread): every request waiting for an answer, and every
        later one, fails with ``error``."""
        self.local_node_died = error
        waiting, self._replies = self._replies, {}
        for w in waiting.values():
            w.value = NO_ANSWER
            w.event.set()

    def _expect_late(self, req_id: int, w: Waiter, on_late: Any) -> None:
        if w.event.is_set():  # it came while we were timing out
            on_late(w.value)
        else:
            self._reply_fns[req_id] = on_late

    def close(self, final: Callable[[], None]) -> None:
        """Run ``final`` on the I/O thread (up to 2 s), then stop it and close every socket."""
        if self.closed:
            return
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            done = threading.Event()
            self.post(lambda: (final(), done.set()))
            done.wait(2)
        self.closed = True
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(2)
        try:
            self._ep.close(linger=200)
            self._ctx.term()
        except Exception:
            pass
        os.close(self._wake_fd)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        inboxes = self._ep.inboxes
        poller = zmq.Poller()
        for inbox in inboxes:
            poller.register(inbox, zmq.POLLIN)
        poller.register(self._wake_fd, zmq.POLLIN)
        cmds = self._cmds
        for frames in self._early:
            self._dispatch(frames)
        self._early = []
        while not self.closed:
            try:
                self._run_posted()
                for inbox in inboxes:
                    drain(inbox, self._dispatch_then_posted, 2000)
                for hook in self.after_turn:
                    hook()
                timeout = self._run_timers() if self._timers else 1000
                if cmds:
                    continue
                self._sleeping = True
                if cmds:
                    self._sleeping = False
                    continue
                events = dict(poller.poll(timeout))
                self._sleeping = False
                if self._wake_fd in events:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except OSError:
                        pass
            except zmq.ContextTerminated:
                return
            except Exception:  # a bug must not kill the process's I/O
                if self.closed:
                    return
                log.error("meshcompute I/O thread error:\n%s", traceback.format_exc())

    def _run_posted(self) -> None:
        # Not inline in the loop: a local of the loop would keep the last command's
        # arguments alive until the next command ran, and any ObjectRef among them
        # (such as the refs inside a result, which a worker keeps until its owner
        # holds them) with them: in a quiet process, its objects would not be freed.
        cmds = self._cmds
        while cmds:
            fn, args = cmds.popleft()
            fn(*args)

    def _run_timers(self) -> int:
        """Run the timers that are due; the poll timeout (ms) until the next one.
        (A function of its own for the same reason as ``_run_posted``.)"""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._timers)
            fn(*args)
        if self._timers:
            return max(0, int((self._timers[0][0] - now) * 1000) + 1)
        return 1000

    def _dispatch_then_posted(self, frames: list) -> None:
        # Work posted by user threads runs between messages: a reply they wait for
        # is never held behind a long burst.
        self._dispatch(frames)
        self._run_posted()

    def _dispatch(self, frames: list) -> None:
        sender = frames[0].bytes.decode(errors="replace")
        try:
            parse_address(sender)  # replies go there: a sender that is no address is refused now
            msg = decode(frames[1])
            handler = self.handlers[msg[0]]
        except Exception:
            self.drops.note("a malformed message", sender)
            return
        self.received[msg[0]] += 1
        try:
            handler(sender, msg, frames[2:])
        except Exception:  # one bad message must not cost the others of this turn
            self.drops.note(f"an error handling {describe(msg)}", sender, traceback.format_exc())

    def _on_reply(self, sender, msg, frames) -> None:
        fn = self._reply_fns.pop(msg[1], None)
        if fn is not None:
            fn(msg[2])
            return
        w = self._replies.pop(msg[1], None)
        if w is not None:
            w.value = msg[2]
            w.event.set()
