"""Identifiers.

A task id is 12 bytes: an 8-byte random prefix per process and a 4-byte counter,
so ids are unique across the mesh without coordination.  The ids of a task's
return objects are the task id plus a 4-byte index (16 bytes); ``put`` objects
use the same scheme with a fresh task id.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading

_prefix = os.urandom(8)
_counter = itertools.count(1)
_pack = struct.Struct(">I").pack
_lock = threading.Lock()


def reset_after_fork() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


def new_task_id() -> bytes:
    # itertools.count is atomic under the GIL; the lock guards the rare wrap.
    n = next(_counter)
    if n >= 0xFFFFFFFF:
        with _lock:
            reset_after_fork()
            n = next(_counter)
    return _prefix + _pack(n)


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + _pack(index)


def task_of(object_id_: bytes) -> bytes:
    return object_id_[:12]


def random_id(nbytes: int = 8) -> str:
    return os.urandom(nbytes).hex()
