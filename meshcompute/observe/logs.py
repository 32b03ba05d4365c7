"""``mesh logs``: the daemon's and workers' log files of a node, printed and followed."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from typing import IO

FOLLOW_POLL_S = 0.25
"""How often (s) ``--follow`` looks for appended lines and new log files."""


def log_files(logs_dir: str) -> list[str]:
    """daemon.log first, then the workers' logs, oldest first."""
    paths = glob.glob(os.path.join(logs_dir, "*.log"))

    def key(path: str):
        try:
            mtime = os.path.getctime(path)
        except OSError:
            mtime = 0.0
        return (os.path.basename(path) != "daemon.log", mtime, path)

    return sorted(paths, key=key)


def _label(path: str) -> str:
    name = os.path.basename(path)[: -len(".log")]
    return name if name == "daemon" else name.replace("worker-", "worker ")


def _tail(path: str, n: int) -> tuple[list[str], int]:
    """The last ``n`` lines of a file and its size."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = 1 << 16
        data = b""
        pos = size
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode(errors="replace")
    lines = text.splitlines()
    return (lines[-n:] if n > 0 else []), size


def print_logs(logs_dir: str, n: int, out: IO[str]) -> dict[str, int]:
    """Print the last ``n`` lines of each log (``==> name <==`` headers); returns offsets read to."""
    offsets: dict[str, int] = {}
    for path in log_files(logs_dir):
        try:
            lines, size = _tail(path, n)
        except OSError:
            continue
        offsets[path] = size
        if n <= 0:
            continue
        out.write(f"==> {_label(path)} ({path}) <==\n")
        for line in lines:
            out.write(line + "\n")
        out.write("\n")
    out.flush()
    return offsets


def follow_logs(logs_dir: str, offsets: dict[str, int], out: IO[str], stop_after: float | None = None,
                alive: Callable[[], bool] | None = None) -> None:
    """Print lines appended to any log (new files too), tagged ``[daemon]`` / ``[worker id]``,
    until the node's logs directory disappears (the node stopped), ``alive()`` says False
    (after one last look), or ``stop_after`` s."""
    partial: dict[str, bytes] = {}
    end = None if stop_after is None else time.monotonic() + stop_after
    last = False
    while end is None or time.monotonic() < end:
        if not os.path.isdir(logs_dir):
            out.write("(the node stopped: its logs are gone)\n")
            out.flush()
            return
        if alive is not None and not alive():
            if last:
                return
            last = True  # what it wrote before it went is printed first
        wrote = False
        for path in log_files(logs_dir):
            try:
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            offsets[path] = offsets.get(path, 0) + len(data)
            data = partial.pop(path, b"") + data
            *complete, rest = data.split(b"\n")
            if rest:
                partial[path] = rest
            label = _label(path)
            for line in complete:
                out.write(f"[{label}] {line.decode(errors='replace')}\n")
                wrote = True
        if wrote:
            out.flush()
        if not last:
            time.sleep(FOLLOW_POLL_S)
