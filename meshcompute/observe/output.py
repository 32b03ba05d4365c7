"""Worker output: written to the worker's log file and shipped, in batches, to drivers.

A worker's ``sys.stdout`` and ``sys.stderr`` are :class:`OutputTee` objects: every
write goes to the log file (``<session>/logs/worker-<id>.log``) at once, and each
complete line written while a task or actor runs is also kept, tagged with its
prefix (``f pid=123, node=3f9a1c2e``), for the process that owns the running task
(the actor's creator for an actor).  The worker's I/O thread sends what was kept
as one ``WORKER_OUTPUT`` per owner at most every ``OUTPUT_FLUSH_S``, and always
just before a batch of results (on the same pipe, so a task's lines reach the
driver before its result or error), never one message per line.  The owner's driver prints the lines to its stderr (``init(log_to_driver=False)``
turns that off); an owner that is itself a worker passes them on to its own owner.
"""

from __future__ import annotations

import io
import sys
import threading
from typing import Any

from .progress_lines import MAGIC, decode, render

OUTPUT_FLUSH_S = 0.1
"""Shortest interval (s) between two WORKER_OUTPUT messages of one worker."""
MAX_LINE = 16 << 10
"""Longer lines are cut (the log file keeps them whole)."""
MAX_PENDING_LINES = 10000
"""Lines kept for shipping before older ones are dropped (a flood is in the log file)."""


class OutputShipper:
    """Lines waiting to be shipped, per destination; shared by stdout and stderr."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partial: dict[tuple, str] = {}  # (sink, prefix, stream) -> text without newline yet
        self._lines: dict[str, list] = {}  # sink -> [(prefix, line)]
        self._count = 0
        self.dropped = 0
        self.ready = False  # lines are waiting (read without the lock by the I/O thread)
        self.core: Any = None
        self.executor: Any = None
        self.prefix_tail = ""

    def attach(self, core: Any, executor: Any) -> None:
        self.core = core
        self.executor = executor
        self.prefix_tail = f" pid={core.pid}, node={core.node_id[:8]}"

    def context(self) -> tuple | None:
        ex = self.executor
        return ex.log_ctx if ex is not None else None

    def add(self, ctx: tuple, stream: int, text: str) -> None:
        sink, label = ctx
        prefix = label + self.prefix_tail
        key = (sink, prefix, stream)
        arm = False
        with self._lock:
            buf = self._partial.pop(key, "") + text
            if "\n" not in buf:
                if len(buf) > MAX_LINE:
                    self._keep(sink, prefix, [buf[:MAX_LINE]])
                    arm = self._arm()
                else:
                    self._partial[key] = buf
                    return
            else:
                *complete, rest = buf.split("\n")
                if rest:
                    self._partial[key] = rest
                self._keep(sink, prefix, [line[:MAX_LINE] for line in complete])
                arm = self._arm()
        if arm and self.core is not None:
            self.core.post(self.core.worker.arm_output)

    def _keep(self, sink: str, prefix: str, lines: list) -> None:
        out = self._lines.setdefault(sink, [])
        out.extend((prefix, line) for line in lines)
        self._count += len(lines)
        if self._count > MAX_PENDING_LINES:
            cut = self._count - MAX_PENDING_LINES
            del out[:min(cut, len(out))]
            self.dropped += cut
            self._count = sum(len(v) for v in self._lines.values())

    def _arm(self) -> bool:
        first = not self.ready
        self.ready = True
        return first

    def end_of_task(self, sink: str) -> None:
        """A task finished: its unterminated last line goes out as it is."""
        if not self._partial:
            return
        with self._lock:
            for key in [k for k in self._partial if k[0] == sink]:
                self._keep(sink, key[1], [self._partial.pop(key)])
            arm = self._arm()
        if arm and self.core is not None:
            self.core.post(self.core.worker.arm_output)

    def take(self) -> dict[str, list]:
        with self._lock:
            out, self._lines = self._lines, {}
            self._count = 0
            self.ready = False
        return out


class OutputTee(io.TextIOBase):
    """A text stream writing to the log file and keeping task lines for the driver."""

    def __init__(self, file: Any, shipper: OutputShipper, stream: int) -> None:
        self._file = file
        self._shipper = shipper
        self._stream = stream

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        try:
            self._file.write(s)
        except (OSError, ValueError):
            pass
        ctx = self._shipper.context()
        if ctx is not None and s:
            self._shipper.add(ctx, self._stream, s)
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._file, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._file, "errors", None)

    @property
    def buffer(self):  # binary writes bypass the driver (they still reach the log file)
        return self._file.buffer


def print_output(lines: list, stream: Any = None) -> None:
    """Print shipped worker lines Ray-style: ``(f pid=123, node=3f9a1c2e) text``; a line
    that is a progress bar's state (progress_lines.py) is printed as the bar."""
    stream = stream if stream is not None else sys.stderr
    try:
        color = stream.isatty()
    except (AttributeError, ValueError):
        color = False
    out = []
    for item in lines:
        try:
            prefix, text = item
        except (TypeError, ValueError):
            continue
        if isinstance(text, str) and text.startswith(MAGIC):
            state = decode(text)
            if state is None:
                continue
            text = render(state)
        if color:
            out.append(f"\x1b[36m({prefix})\x1b[0m {text}\n")
        else:
            out.append(f"({prefix}) {text}\n")
    try:
        stream.write("".join(out))
        stream.flush()
    except (OSError, ValueError):
        pass
