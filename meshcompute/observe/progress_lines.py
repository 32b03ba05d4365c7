"""Progress bars that tasks report to their driver (``meshcompute.experimental.tqdm_ray``).

A bar in a task or actor prints its state as one line, ``MAGIC`` followed by JSON,
to its stdout: the worker's output shipping (output.py) takes it to the driver
like any printed line, and the driver's ``print_output`` hands it here instead of
printing it. The driver prints the bar as a text line, tqdm-style, with the
task's prefix::

    (work pid=4242, node=3f9a1c2e) rows: 40%|████      | 40/100 [00:02<00:03, 19.80it/s]

A bar reports at most once per flush interval, and once when it closes: the
driver prints one line per report, it does not redraw a bar in place.
"""

from __future__ import annotations

import json
import time
from typing import Any

MAGIC = "__meshcompute_tqdm__"
"""Starts a printed line that is a progress bar's state, not text."""
WIDTH = 10
"""Characters of the bar itself."""


def encode(state: dict) -> str:
    return MAGIC + json.dumps(state, separators=(",", ":"))


def decode(text: str) -> dict | None:
    """The state in a line a bar printed, or None for any other line."""
    if not text.startswith(MAGIC):
        return None
    try:
        state = json.loads(text[len(MAGIC):])
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def render(state: dict, now: float | None = None) -> str:
    """One bar as text: ``desc: 40%|████      | 40/100 [00:02<00:03, 19.80it/s]``."""
    n = _number(state.get("n"))
    total = _number(state.get("total"))
    unit = str(state.get("unit") or "it")
    desc = str(state.get("desc") or "")
    if now is None:  # as of the report (the bar's clock), else as of now
        now = _number(state.get("t")) or time.time()
    elapsed = max(0.0, now - _number(state.get("start")))
    rate = n / elapsed if elapsed > 0 and n > 0 else 0.0
    speed = f"{rate:.2f}{unit}/s" if rate else f"?{unit}/s"
    head = f"{desc}: " if desc else ""
    if total and total > 0:
        frac = min(1.0, n / total)
        filled = frac * WIDTH
        bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
        left = _clock((total - n) / rate) if rate else "?"
        return f"{head}{frac * 100:3.0f}%|{bar:<{WIDTH}}| {n:g}/{total:g} [{_clock(elapsed)}<{left}, {speed}]"
    return f"{head}{n:g}{unit} [{_clock(elapsed)}, {speed}]"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
