"""Turning values into bytes and back.

Values are pickled with protocol 5: large contiguous buffers (numpy arrays, bytes
views) are handed out-of-band instead of being copied into the pickle stream, so a
100 MiB array travels as one 100 MiB buffer that is copied once into shared memory
and read back without a copy.  cloudpickle handles functions, lambdas and classes
defined in ``__main__``; plain values take the faster C pickler.

While a value is being pickled, every :class:`ObjectRef` inside it is recorded
(``contained``) so the runtime can keep those objects alive while the value
travels.  While a value is being unpickled, refs it creates are recorded so the
runtime can register this process as a borrower.
"""

from __future__ import annotations

import collections
import io
import pickle
import threading
import types
from typing import Any

import cloudpickle

INLINE_THRESHOLD = 100 * 1024
"""Values whose pickled size is at most this many bytes travel inside messages;
larger ones go through the node's shared-memory store (Ray uses the same 100 KiB)."""

INLINE_ARGS_BYTES = 10 << 20
"""The arguments of one call travel inline while their sum stays within this; the rest
go through the store, as large ones do (Ray's task_rpc_inlined_bytes_limit is the same
10 MiB).  It keeps a task's message, and a batch of them, well within one message's
bound (transport.MAX_SPLIT_BYTES) however many small arguments a call has."""

MAX_FUNCTION_BYTES = 100 << 20
"""The most a pickled remote function or actor class may weigh.  It travels in task and
actor messages (split into frames, transport.py), which have a bound; one this large has
captured data in its closure or globals, which belongs in the store (Ray refuses ~95 MiB)."""

_tls = threading.local()
_SIMPLE = frozenset({type(None), bool, int, float, str, bytes, complex})


class Serialized:
    """A value ready to travel: the pickle stream plus its out-of-band buffers."""

    __slots__ = ("meta", "buffers", "contained", "is_error")

    def __init__(self, meta: bytes, buffers: list, contained: list, is_error: bool = False) -> None:
        self.meta = meta
        self.buffers = buffers  # 1-D unsigned-byte memoryviews (or bytes / zmq frames)
        self.contained = contained  # ObjectRefs pickled inside the value
        self.is_error = is_error

    @property
    def size(self) -> int:
        if not self.buffers:  # most values (a task's results one by one): no generator to make
            return len(self.meta)
        return len(self.meta) + sum(memoryview(b).nbytes for b in self.buffers)


class _ThreadPickler:
    """A thread's CloudPickler, kept from one value to the next: making one costs more
    than pickling a small value (a task's results, one by one: 3.4 us a 100-int list
    with a new pickler, 1.6 us with this one).  Between values it keeps nothing: its
    memo (which holds every object it pickled) and cloudpickle's per-dump table of
    function globals are emptied after each."""

    __slots__ = ("file", "pickler", "buffers", "busy")

    made = 0  # picklers made, all threads (tests/test_framing.py)

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list | None = None
        self.busy = False
        self.pickler = cloudpickle.CloudPickler(self.file, 5, buffer_callback=self._buffer)
        _ThreadPickler.made += 1

    def _buffer(self, buf: pickle.PickleBuffer) -> None:
        self.buffers.append(buf)

    def dumps(self, value: Any, buffers: list) -> bytes:
        self.busy = True
        self.buffers = buffers
        try:
            self.pickler.dump(value)
            return self.file.getvalue()
        finally:
            self.file.seek(0)
            self.file.truncate()
            self.pickler.clear_memo()
            self.pickler.globals_ref = {}
            self.buffers = None
            self.busy = False


def _cloudpickle(value: Any, buffers: list) -> bytes:
    pickler = getattr(_tls, "pickler", None)
    if pickler is None:
        pickler = _tls.pickler = _ThreadPickler()
    elif pickler.busy:  # a value's __reduce__ serializing another: a pickler of its own
        return cloudpickle.dumps(value, 5, buffer_callback=buffers.append)
    return pickler.dumps(value, buffers)


def serialize(value: Any, is_error: bool = False) -> Serialized:
    prev = getattr(_tls, "contained", None)
    contained: list = []
    _tls.contained = contained
    buffers: list = []
    try:
        if type(value) in _SIMPLE:
            meta = pickle.dumps(value, 5)
        else:
            meta = _cloudpickle(value, buffers)
    finally:
        _tls.contained = prev
    if buffers:
        buffers = [b.raw() for b in buffers]
    return Serialized(meta, buffers, contained, is_error)


def note_contained(ref: Any) -> None:
    """Called by ObjectRef.__reduce__: remember a ref pickled inside a value."""
    contained = getattr(_tls, "contained", None)
    if contained is not None:
        contained.append(ref)


class DeserializeContext:
    """Collects the refs created while unpickling (the borrows this read starts)."""

    __slots__ = ("new_borrows", "_prev")

    def __enter__(self) -> DeserializeContext:
        self._prev = getattr(_tls, "deser", None)
        self.new_borrows: list = []
        _tls.deser = self
        return self

    def __exit__(self, *exc: object) -> None:
        _tls.deser = self._prev


def current_deserialize_context() -> DeserializeContext | None:
    return getattr(_tls, "deser", None)


def deserialize(meta: Any, buffers: list) -> Any:
    return pickle.loads(meta, buffers=buffers)


def _code_reduce_keeping_file(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the real file name put back.

    cloudpickle 3.1 writes ``<dynamic-code>`` instead (for deterministic payloads);
    remote tracebacks then lose the user's file and source lines.
    """
    rebuild, args = _BASE_CODE_REDUCE(code)
    return rebuild, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


_BASE_CODE_REDUCE = cloudpickle.CloudPickler.dispatch_table[types.CodeType]


class _FunctionPickler(cloudpickle.CloudPickler):
    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce_keeping_file},
                                          cloudpickle.CloudPickler.dispatch_table)


def dumps_function(fn: Any, kind: str = "remote function") -> bytes:
    """Pickle a function or class to travel to workers; raises ValueError over MAX_FUNCTION_BYTES."""
    buf = io.BytesIO()
    _FunctionPickler(buf, protocol=5).dump(fn)
    data = buf.getvalue()
    if len(data) > MAX_FUNCTION_BYTES:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise ValueError(
            f"the {kind} {name!r} pickles to {len(data) / 2**20:.1f} MiB, more than the "
            f"{MAX_FUNCTION_BYTES >> 20} MiB a function or class may travel as: it captures large data "
            f"(in its closure, defaults or a global it uses). Put the data in the object store with "
            f"put() and pass the ref as an argument instead.")
    return data
