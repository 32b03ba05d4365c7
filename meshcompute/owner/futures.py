"""Futures for refs (``ref.future()``, ``await ref``) without a thread per ref.

A future watches its object on the I/O thread like a waiting ``get`` does, but its
Waiter's event calls back instead of waking a thread: once the object is ready (or
failed), a small shared pool reads the value and completes the future. So
``asyncio.gather`` over ten thousand refs costs ten thousand watch entries, not ten
thousand threads.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from .objects import Waiter

READERS = 8
"""Threads that read the values of ready futures (a read may pull from another node)."""

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class _CallOnSet:
    """Stands for a Waiter's threading.Event: ``set()`` (on the I/O thread) calls back once."""

    __slots__ = ("_callback", "_set")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._callback()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        return self._set


def _readers() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="meshcompute-future")
        return _pool


def future_for(core: Any, ref: Any) -> concurrent.futures.Future:
    """A future that completes with ``ref``'s value, or its error (any thread)."""
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def read() -> None:  # on a reader thread: the object is ready, so get() does not wait
        try:
            fut.set_result(core.get([ref])[0])
        except BaseException as err:  # noqa: BLE001 - delivered to the awaiting code
            fut.set_exception(err)

    w = Waiter(1)
    w.event = _CallOnSet(lambda: _readers().submit(read))
    core.post(core.objects.watch, [(ref._id, ref._owner)], w)
    return fut
