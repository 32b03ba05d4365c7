"""What the executor's parts share: calling user code, and the cancel signal's exception."""

from __future__ import annotations

from typing import Any


class Cancelled(BaseException):
    """Raised inside a running task by the cancel signal."""


def call_with(fn: Any, args: list, kw_names: tuple) -> Any:
    """Call with positional args, the last ``len(kw_names)`` of them by keyword."""
    if not kw_names:
        return fn(*args)
    k = len(kw_names)
    return fn(*args[:-k], **dict(zip(kw_names, args[-k:])))
