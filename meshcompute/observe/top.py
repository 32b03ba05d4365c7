"""``mesh top``: a live full-screen view of the mesh from one daemon's monitor feed.

Rendering is a pure function of the feed's state (:func:`render`), so the screen
can be tested and captured without a terminal; :func:`run` is the loop: it
polls the feed's sockets and the keyboard (cbreak mode) together, redraws at
most a few times a second and only when something changed, and moves to another
member when the daemon it watches stops talking.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from typing import Any

import zmq
from rich.console import Console
from rich.live import Live
from rich.text import Text

from .client import MonitorClient

SPARK = "▁▂▃▄▅▆▇█"
RENDER_EVERY_S = 1.0
"""The screen is redrawn (and the tasks-finished rate sampled) this often (s); a redraw
costs ~10 ms of CPU, so this is what keeps ``mesh top`` cheap."""
RENDER_MIN_S = 0.25
"""Shortest interval (s) between two redraws triggered by keys or state changes."""
POLL_S = 0.5
"""Longest wait (s) for the feed or a key between two checks."""

STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "bold red", "left": "dim",
               "ALIVE": "green", "PENDING": "yellow", "RESTARTING": "yellow", "DEAD": "red"}
DASH = "—"


def human_bytes(n: Any) -> str:
    if n is None:
        return DASH
    n = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.0f}{unit}" if abs(n) >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.0f}T"


def _num(x: Any) -> str:
    if x is None:
        return DASH
    x = float(x)
    return f"{x:g}" if x == int(x) else f"{x:.1f}"


def sparkline(values: list[float], width: int) -> str:
    values = list(values)[-width:] if width > 0 else []
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


class Rates:
    """Tasks finished per second, from the feed's cumulative counters."""

    def __init__(self, keep: int = 240) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=keep)
        self._last: tuple[float, int, int] | None = None  # (time, total, state generation)
        self.peak = 0.0

    def sample(self, now: float, total: int, generation: int) -> None:
        last = self._last
        self._last = (now, total, generation)
        if last is None or last[2] != generation or now <= last[0]:
            return  # a new snapshot (another daemon) is a new baseline
        rate = max(0.0, (total - last[1]) / (now - last[0]))
        self.values.append(rate)
        self.peak = max(self.peak, rate)

    @property
    def current(self) -> float:
        return self.values[-1] if self.values else 0.0


def _sorted_nodes(nodes: list[dict], watched: str | None) -> list[dict]:
    order = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
    return sorted(nodes, key=lambda n: (n.get("node_id") != watched, order.get(n.get("state"), 4),
                                        n.get("node_id", "")))


def _header(client: Any, width: int, now_wall: float) -> list[Text]:
    st = client.state
    nodes = st.nodes()
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    ctl = st.control()
    line1 = Text(no_wrap=True, overflow="ellipsis")
    line1.append(" mesh top ", style="bold reverse")
    line1.append(f" {client.status}", style="bold" if client.connected else "bold yellow")
    clock = time.strftime("%H:%M:%S", time.localtime(now_wall))
    moved = f"moved {client.failovers}×  " if getattr(client, "failovers", 0) else ""
    right = f"{moved}seq {st.seq}  {clock}"
    pad = width - line1.cell_len - len(right) - 1
    line1.append(" " * max(1, pad) + right)
    line2 = Text(no_wrap=True, overflow="ellipsis")
    line2.append(" control store ", style="dim")
    line2.append(f"leader {(ctl.get('leader') or DASH)[:8]}  term {_num(ctl.get('term'))}  "
                 f"commit {_num(ctl.get('commit_index'))}")
    actors = st.actors()
    line2.append(f"   nodes {alive}/{len(nodes)} alive   actors "
                 f"{sum(1 for a in actors if a.get('state') == 'ALIVE')}/{len(actors)}")
    return [line1, line2]


def _grid(columns: list[tuple[str, str]], rows: list[list], limit: int, gap: int = 2) -> list[Text]:
    """A plain table: a bold header, a rule, then at most ``limit`` rows.

    ``columns`` is ``[(title, "<" or ">")]``; each cell is a string or ``(string, style)``.
    (Hand-made rather than rich's Table: a redraw is the main cost of ``mesh top``.)
    """
    cells = [[c if isinstance(c, tuple) else (str(c), "") for c in row] for row in rows]
    widths = [len(title) for title, _ in columns]
    for row in cells:
        for i, (text, _) in enumerate(row[:len(columns)]):
            widths[i] = max(widths[i], len(text))
    sep = " " * gap

    def line(row: list, header: bool = False) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for i, ((text, style), (_, align)) in enumerate(zip(row, columns)):
            if i:
                out.append(sep)
            out.append(text.rjust(widths[i]) if align == ">" else text.ljust(widths[i]),
                       style="bold" if header else style)
        return out

    total = sum(widths) + gap * (len(widths) - 1)
    lines = [line([(title, "") for title, _ in columns], header=True), Text("─" * total, style="dim")]
    shown = cells if len(cells) <= limit else cells[:max(0, limit - 1)]
    lines.extend(line(row) for row in shown)
    if len(shown) < len(cells):
        lines.append(Text(f"… {len(cells) - len(shown)} more", style="dim"))
    return lines


# Columns shown beyond the 80-column set when the terminal is wider, in order,
# with the room each needs.
EXTRA_NODE_COLUMNS = (("HOST%", 7), ("WORKERS", 9), ("ADDRESS", 23))


def _nodes_lines(client: Any, width: int, rows: int) -> list[Text]:
    extras = set()
    room = width - 80
    for name, need in EXTRA_NODE_COLUMNS:
        if room >= need:
            extras.add(name)
            room -= need
    columns = [("NODE", "<"), ("STATE", "<")]
    if "ADDRESS" in extras:
        columns.append(("ADDRESS", "<"))
    columns.append(("CPU", ">"))
    if "HOST%" in extras:
        columns.append(("HOST%", ">"))
    columns += [("MEM", ">"), ("GPU", ">"), ("RUN", ">"), ("QUEUE", ">"), ("DONE", ">"), ("STORE", ">"),
                ("SPILLED", ">")]
    if "WORKERS" in extras:
        columns.append(("WORKERS", ">"))
    table = []
    for n in _sorted_nodes(client.state.nodes(), client.watched):
        state = n.get("state", "?")
        gone = state in ("dead", "left")
        dim = "dim" if gone else ""
        cpu = n.get("cpu") or {}
        mem = n.get("mem") or {}
        gpu = n.get("gpu") or {}
        tasks = n.get("tasks") or {}
        store = n.get("store") or {}
        res = n.get("resources_total") or {}
        total_cpu = cpu.get("total", res.get("CPU"))
        gpu_text = f"{_num(gpu.get('allocated', 0))}/{_num(gpu.get('total', res.get('GPU', 0)))}"
        if gpu.get("util") is not None:
            gpu_text += f" {gpu['util']:.0f}%"
        row = [n.get("node_id", "?")[:8] + ("*" if n.get("node_id") == client.watched else ""),
               (state, STATE_STYLE.get(state, ""))]
        if "ADDRESS" in extras:
            row.append(((n.get("address") or "").partition("@")[2].replace("tcp://", ""), dim))
        row.append((f"{_num(cpu.get('node_cores'))}/{_num(total_cpu)}", dim))
        if "HOST%" in extras:
            hp = cpu.get("host_percent")
            row.append((DASH if hp is None else f"{hp:.0f}%", dim))
        row += [(f"{human_bytes(mem.get('node_rss'))}/{human_bytes(mem.get('total', res.get('memory')))}", dim),
                (gpu_text, dim),
                (str(tasks.get("running", DASH)), dim), (str(tasks.get("queued", DASH)), dim),
                (str(tasks.get("finished", DASH)), dim),
                (f"{human_bytes(store.get('used'))}/{human_bytes(store.get('capacity'))}", dim)]
        row.append((human_bytes(store.get("spilled_bytes")) if "spilled_bytes" in store else DASH, dim))
        if "WORKERS" in extras:
            row.append((str(n.get("workers", DASH)), dim))
        table.append(row)
    return _grid(columns, table, rows)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _actors_lines(client: Any, width: int, rows: int) -> list[Text]:
    wide = width >= 120
    columns = [("NAME", "<"), ("CLASS", "<"), ("NODE", "<"), ("STATE", "<"), ("RESTARTS", ">"), ("PID", ">")]
    if wide:
        columns += [("ACTOR ID", "<"), ("REASON", "<")]
    order = {"ALIVE": 0, "RESTARTING": 1, "PENDING": 2, "DEAD": 3}
    actors = sorted(client.state.actors(), key=lambda a: (order.get(a.get("state"), 4), a.get("class", ""),
                                                          a.get("name", ""), a.get("actor_id", "")))
    table = []
    for a in actors:
        state = a.get("state", "?")
        row = [_short(a.get("name") or DASH, 40 if wide else 22), _short(a.get("class", "?"), 40 if wide else 20),
               (a.get("node") or "?")[:8], (state, STATE_STYLE.get(state, "")), str(a.get("restarts", 0)),
               str(a.get("pid") or DASH)]
        if wide:
            row += [a.get("actor_id", ""), (a.get("reason") or "", "dim")]
        table.append(row)
    if not table:
        return _grid(columns, [], rows) + [Text("no actors", style="dim")]
    return _grid(columns, table, rows)


def _rate_line(rates: Rates, total: int, width: int) -> Text:
    label = "tasks/s "
    tail = f" {rates.current:,.0f}/s  peak {rates.peak:,.0f}  done {total:,}"
    room = max(0, width - len(label) - len(tail) - 2)
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(" " + label, style="bold")
    line.append(sparkline(list(rates.values), room), style="cyan")
    line.append(tail)
    return line


def _footer(view: str, width: int) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    for key, name in (("n", "nodes"), ("a", "actors"), ("q", "quit")):
        line.append(f" {key} ", style="bold reverse")
        line.append(f" {name} ", style="bold" if name == view else "")
        line.append(" ")
    return line


def render(client: Any, rates: Rates, view: str, width: int, height: int, now_wall: float | None = None) -> Text:
    """One screen of ``width`` x ``height`` cells: header, the view, the rate and the keys at the bottom."""
    now_wall = time.time() if now_wall is None else now_wall
    lines = [*_header(client, width, now_wall), Text("")]
    room = max(3, height - len(lines) - 2)  # the rate and the keys take the last two lines
    if view == "actors":
        body = _actors_lines(client, width, room - 2)
    else:
        body = _nodes_lines(client, width, room - 2)
        left = room - len(body) - 3  # a gap, then the actors' header and rule
        if left >= 2 and client.state.actors():
            # Room to spare: the actors too (all of them are in the `a` view).
            body += [Text("")] + _actors_lines(client, width, left)
    body = body[:room]
    lines += body + [Text("")] * (room - len(body))
    lines += [_rate_line(rates, client.state.finished_total(), width), _footer(view, width)]
    screen = Text("\n", no_wrap=True, overflow="crop").join(lines)
    screen.no_wrap, screen.overflow = True, "crop"
    return screen


def render_text(client: Any, rates: Rates, view: str = "nodes", width: int = 80, height: int = 24) -> str:
    """The screen as plain text (``mesh top --once``, docs, tests)."""
    console = Console(width=width, height=height, record=True, file=open(os.devnull, "w"),
                      color_system=None, legacy_windows=False)
    console.print(render(client, rates, view, width, height))
    text = console.export_text()
    console.file.close()
    return text


class _Keys:
    """The keyboard in cbreak mode (no echo, no line buffering); restored on exit."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved = None
        try:
            fd = sys.stdin.fileno()
            if os.isatty(fd):
                import termios
                import tty

                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
                self.fd = fd
        except (OSError, ValueError, AttributeError):
            self.fd = None

    def read(self) -> str:
        if self.fd is None:
            return ""
        try:
            return os.read(self.fd, 64).decode(errors="ignore")
        except OSError:
            return ""

    def restore(self) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None


def _signature(client: Any, view: str) -> tuple:
    """What must show at once when it changes: the connection, node states, the view."""
    return (client.status, view, tuple(sorted((n.get("node_id"), n.get("state")) for n in client.state.nodes())))


def run(client: MonitorClient, console: Console | None = None) -> None:
    """The live screen: redraws once a second (new figures, the rate), and at once for a key,
    a node changing state or the feed moving to another daemon."""
    console = console or Console()
    rates = Rates()
    view = "nodes"
    keys = _Keys()
    resized = [False]

    def _winch(signum, frame) -> None:
        resized[0] = True

    def _term(signum, frame) -> None:
        raise SystemExit(0)  # leave the alternate screen and restore the terminal on the way out

    old_winch = signal.signal(signal.SIGWINCH, _winch)
    old_term = signal.signal(signal.SIGTERM, _term)
    last_render = 0.0
    next_tick = time.monotonic()
    shown: tuple = ()
    try:
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                fds = (keys.fd,) if keys.fd is not None else ()
                timeout = max(0.0, min(POLL_S, next_tick - time.monotonic()))
                try:
                    changed, ready = client.poll(timeout, fds)
                except (InterruptedError, zmq.ZMQError):
                    changed, ready = False, []
                urgent = False
                if ready:
                    for ch in keys.read():
                        if ch in ("q", "Q", "\x03"):
                            return
                        if ch in ("n", "N"):
                            view, urgent = "nodes", True
                        elif ch in ("a", "A"):
                            view, urgent = "actors", True
                now = time.monotonic()
                due = now >= next_tick
                if due:
                    next_tick = now + RENDER_EVERY_S
                    if client.connected:
                        rates.sample(now, client.state.finished_total(), client.state.generation)
                if resized[0]:
                    resized[0] = False
                    urgent = True
                if changed or urgent:
                    sig = _signature(client, view)
                    urgent = urgent or sig != shown
                if due or (urgent and now - last_render >= RENDER_MIN_S):
                    shown = _signature(client, view)
                    width, height = console.size
                    live.update(render(client, rates, view, width, height), refresh=True)
                    last_render = now
    except KeyboardInterrupt:
        pass
    finally:
        keys.restore()
        signal.signal(signal.SIGWINCH, old_winch)
        signal.signal(signal.SIGTERM, old_term)
