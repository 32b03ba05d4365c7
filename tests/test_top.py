"""``mesh top`` in a pseudo-terminal against a real 3-node mesh; ``mesh stop`` of several nodes."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

import meshcompute as mesh
from meshcompute.host.launcher import local_nodes, start_node, stop_node
from meshcompute.wire.auth import generate_token

from .conftest import loopback_mesh, pid_alive, wait_for

MiB = 1 << 20
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
ROW = re.compile(r"^([0-9a-f]{8})\*?\s+(alive|suspect|dead|left)\b", re.M)


class Terminal:
    """A program on a pseudo-terminal of ``rows`` x ``cols``; the screen is the last full frame."""

    def __init__(self, argv: list[str], rows: int = 24, cols: int = 80) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.raw = b""

    def pump(self, timeout: float = 0.1) -> None:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            r, _, _ = select.select([self.master], [], [], max(0.0, left))
            if not r:
                return
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data

    def screen(self) -> str:
        """The most recent frame (rich redraws the whole screen after a cursor-home)."""
        frames = self.raw.split(b"\x1b[H")
        for frame in reversed(frames):
            text = ANSI.sub(b"", frame).decode(errors="replace")
            if "mesh top" in text and "quit" in text:  # complete: header to footer
                return text
        return ANSI.sub(b"", frames[-1]).decode(errors="replace")

    def wait(self, predicate, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.2)
            text = self.screen()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                break
        return None

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


def rows(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in ROW.finditer(text)}


@pytest.fixture
def three_nodes():
    if mesh.is_initialized():
        mesh.shutdown()
    with loopback_mesh(3, num_cpus=1, object_store_memory=64 * MiB) as (_token, nodes):
        yield [info for _, info in nodes]


@pytest.mark.timeout(120)
def test_mesh_top_shows_the_nodes_a_death_and_follows_the_mesh_when_its_node_dies(three_nodes):
    a, b, c = three_nodes
    short = {info["node_id"][:8]: info for info in three_nodes}
    term = Terminal([sys.executable, "-m", "meshcompute.cli", "top", "--address", a["tcp"].replace("tcp://", "")])
    try:
        # All three, alive (a loaded machine may make gossip suspect one for a moment).
        screen = term.wait(lambda s: set(rows(s)) == set(short) and rows(s)[a["node_id"][:8]] == "alive"
                           and set(rows(s).values()) <= {"alive", "suspect"}, 30)
        assert screen is not None, term.screen()
        assert f"watching {a['node_id'][:8]}" in screen
        assert re.search(r"leader ([0-9a-f]{8})  term [1-9]\d*  commit [1-9]\d*", screen), screen
        assert re.search(r"leader ([0-9a-f]{8})", screen).group(1) in short
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), screen
        assert "tasks/s" in screen and "q" in lines[-1] + (lines[-2] if len(lines) > 1 else "")

        # A node's daemon is killed: gossip declares it dead and the screen says so.
        os.kill(c["pid"], signal.SIGKILL)
        killed = time.monotonic()
        screen = term.wait(lambda s: rows(s).get(c["node_id"][:8]) == "dead", 20)
        assert screen is not None, term.screen()
        took = time.monotonic() - killed
        assert rows(screen)[a["node_id"][:8]] == "alive"

        # Keys switch views without blocking the feed.
        term.press(b"a")
        assert term.wait(lambda s: "CLASS" in s and "RESTARTS" in s, 10) is not None, term.screen()
        term.press(b"n")
        assert term.wait(lambda s: "STORE" in s and c["node_id"][:8] in s, 10) is not None, term.screen()

        # The watched daemon dies: top moves to the node left and keeps going.
        os.kill(a["pid"], signal.SIGKILL)
        screen = term.wait(lambda s: f"watching {b['node_id'][:8]}" in s
                           and rows(s).get(a["node_id"][:8]) in ("suspect", "dead")
                           and rows(s).get(b["node_id"][:8]) == "alive", 30)
        assert screen is not None, term.screen()

        term.press(b"q")
        assert wait_for(lambda: term.proc.poll() is not None, timeout=10), "q did not quit"
        assert term.proc.returncode == 0
        term.pump(0.3)
        assert b"\x1b[?1049l" in term.raw  # left the alternate screen
        print(f"node death shown after {took:.2f} s")
    finally:
        term.close()


@pytest.mark.timeout(120)
def test_mesh_stop_stops_every_node_of_this_machine():
    if mesh.is_initialized():
        mesh.shutdown()
    token = generate_token()
    started = []
    try:
        proc, first = start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, standalone=True,
                                 object_store_memory=64 * MiB)
        started.append((proc, first))
        started.append(start_node(host="127.0.0.1", port=0, num_cpus=1, token=token, standalone=True,
                                  join=[first["tcp"].replace("tcp://", "")], object_store_memory=64 * MiB))
        assert {i["node_id"] for i in local_nodes()} >= {i["node_id"] for _, i in started}
        r = subprocess.run([sys.executable, "-m", "meshcompute.cli", "stop"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        for _, info in started:
            assert f"stopped node {info['node_id']}" in r.stdout
        assert wait_for(lambda: not any(pid_alive(i["pid"]) for _, i in started), timeout=10)
        assert not local_nodes()
    finally:
        for proc, info in started:
            if pid_alive(info["pid"]):
                stop_node(info)
            proc.wait(10)
