"""Helper threads that copy bytes for the daemon's loop, so that the loop never waits on bulk I/O.

Spilling an object to disk, reading it back, and writing or compressing the
chunks of an object pull copy tens of MiB; done on the loop they would hold up
gossip probes, leases and status calls for as long (a large spill could get a
healthy node suspected).  The loop hands such a copy to a ``Copier`` as a plain
function; a helper thread runs it, and its completion comes back to the loop
through a queue and an eventfd that the loop polls.  The completion callback
then runs on the loop thread, which alone changes state and owns the sockets.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("meshcompute.daemon")

Done = Callable[[Any, BaseException | None], None]
"""``done(result, error)``: run on the loop thread once the copy finished or failed."""

THREADS = 2
"""Copies run at once: one long spill does not hold up the chunks of a pull."""


class Copier:
    """Owns the helper threads, their job queue and the completion queue.

    Invariants: a job function touches only bytes (file descriptors and a
    memory view that the caller keeps valid until ``done``); every job's
    ``done`` runs exactly once, on the thread that calls ``run_completions``,
    in the order the jobs finished; after ``stop`` no job runs any more.
    """

    def __init__(self, threads: int = THREADS) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # readable when completions wait
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self.inflight = 0  # submitted, completion not yet run (loop thread only)
        self._threads = [threading.Thread(target=self._run, name=f"copier-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Run ``job()`` on a helper thread; ``done(result, error)`` later on the loop."""
        self.inflight += 1
        self._jobs.put((job, done))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None or self._stopping:
                return
            job, done = item
            try:
                result, error = job(), None
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which decides
                result, error = None, e
            self._done.put((done, result, error))
            os.eventfd_write(self.fd, 1)
            # Hold nothing of a finished job while waiting for the next: its result may be an
            # 8 MiB buffer that its owner expects back once the loop has dropped it.
            del item, job, done, result, error

    def run_completions(self) -> None:
        """Run the callbacks of the finished jobs (the loop calls this when ``fd`` is readable)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        while True:
            try:
                done, result, error = self._done.get_nowait()
            except queue.Empty:
                return
            self.inflight -= 1
            try:
                done(result, error)
            except Exception:
                log.exception("a copy's completion failed")

    def stop(self) -> None:
        """Stop the threads after the jobs they are running (queued jobs are dropped)."""
        self._stopping = True
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=10)
        os.close(self.fd)
