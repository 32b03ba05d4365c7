"""A tqdm-style progress bar for tasks and actors (Ray's ``ray.experimental.tqdm_ray``)::

    from meshcompute.experimental.tqdm_ray import tqdm

    @mesh.remote
    def work(rows):
        for row in tqdm(rows, desc="rows"):
            ...

In a task or actor the bar reports its state to the driver through the worker's
output shipping (observe/progress_lines.py): the driver prints it with the task's
prefix, ``(work pid=4242, node=3f9a1c2e) rows: 40%|████      | 40/100 [00:02<00:03,
19.80it/s]``, at most once per ``flush_interval_s`` per bar and when it closes. In a
driver it prints the same line to stderr. Bars are printed as lines, not redrawn in
place (``init(log_to_driver=False)`` hides them with the rest of the output).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from ..observe.progress_lines import encode, render
from ..owner import context

__all__ = ["tqdm", "safe_print"]

FLUSH_INTERVAL_S = 1.0
"""Default shortest interval (s) between two reports of one bar."""


def safe_print(*args: Any, **kwargs: Any) -> None:
    """``print``, as Ray's (bars here are lines: nothing needs to be hidden first)."""
    print(*args, **kwargs)


class tqdm:  # noqa: N801 - Ray's (and tqdm's) name
    """A progress bar over ``iterable`` (or updated by hand with ``update``)."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 unit: str | None = None, position: int | None = None,
                 flush_interval_s: float | None = None) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._iterable = iterable
        self._state: dict[str, Any] = {"uuid": uuid.uuid4().hex, "desc": desc or "", "n": 0, "total": total,
                                       "unit": unit or "it", "pos": position or 0, "start": time.time(),
                                       "closed": False}
        self._flush_interval_s = FLUSH_INTERVAL_S if flush_interval_s is None else flush_interval_s
        self._last = 0.0
        self._shown: tuple = ()  # what the last report said
        self._report(force=True)

    @property
    def n(self) -> int:
        return self._state["n"]

    @n.setter
    def n(self, n: int) -> None:
        self._state["n"] = n

    @property
    def total(self) -> int | None:
        return self._state["total"]

    @total.setter
    def total(self, total: int | None) -> None:
        self._state["total"] = total

    def set_description(self, desc: str) -> None:
        self._state["desc"] = desc
        self._report()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done."""
        self._state["n"] += n
        self._report()

    def refresh(self) -> None:
        """Report now, whatever the interval."""
        self._report(force=True)

    def close(self) -> None:
        """Report the final state; the bar is done."""
        if not self._state["closed"]:
            self._state["closed"] = True
            self._report(force=True, unless_shown=True)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("this tqdm has no iterable: call update() instead")
        for item in self._iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> tqdm:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _report(self, force: bool = False, unless_shown: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._flush_interval_s:
            return
        state = self._state
        shown = (state["n"], state["total"], state["desc"])
        if unless_shown and shown == self._shown:
            return  # closing a bar whose last report said it all
        self._last, self._shown, state["t"] = now, shown, time.time()
        core = context.core
        if core is not None and core.worker is not None:  # a task or actor: to its driver
            print(encode(self._state), flush=True)
        else:
            print(render(self._state), file=sys.stderr, flush=True)
