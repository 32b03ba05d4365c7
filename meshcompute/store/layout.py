"""Byte layout of one object in the arena.

::

    u32 meta_len | u32 n_buffers | u8 is_error | 7 pad | u64 buffer_len * n_buffers
    meta bytes (the pickle stream) | pad to 64
    buffer 0 | pad to 64 | buffer 1 | ...

Buffers (pickle protocol 5 out-of-band data, e.g. numpy arrays) start on 64-byte
boundaries so a reader can hand out aligned, read-only views without copying.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

_HEAD = struct.Struct("<IIB7x")
_ALIGN = 64


def _pad(n: int) -> int:
    return -n % _ALIGN


def encoded_size(meta_len: int, buffer_lens: list[int]) -> int:
    size = _HEAD.size + 8 * len(buffer_lens) + meta_len
    size += _pad(size)
    for n in buffer_lens:
        size += n + _pad(n)
    return size


def write_object(dest: memoryview, meta: bytes, buffers: list, is_error: bool = False) -> None:
    """Copy ``meta`` and ``buffers`` (1-D byte views) into ``dest``: one memcpy each."""
    lens = [b.nbytes for b in buffers]
    _HEAD.pack_into(dest, 0, len(meta), len(buffers), 1 if is_error else 0)
    pos = _HEAD.size
    if lens:
        struct.pack_into(f"<{len(lens)}Q", dest, pos, *lens)
    pos += 8 * len(lens)
    dest[pos : pos + len(meta)] = meta
    pos += len(meta)
    pos += _pad(pos)
    for buf, n in zip(buffers, lens):
        dest[pos : pos + n] = buf
        pos += n + _pad(n)


def _copy_range(out: Any, pieces: list, lo: int, hi: int, step: int | None = None,
                ready: Callable[[int], bool] | None = None) -> bool:
    """Copy bytes ``[lo, hi)`` of the object whose bytes are ``pieces`` into ``out`` (a uint8
    array), in parts of at most ``step`` bytes, each once ``ready(end of the part)`` said so
    (False: stop, and return False).  numpy copies without the GIL."""
    import numpy as np

    start = 0
    for piece in pieces:
        size = memoryview(piece).nbytes
        a, b = max(lo, start), min(hi, start + size)
        if a < b:
            src = np.frombuffer(piece, dtype=np.uint8)
            while a < b:
                n = b - a if step is None else min(b - a, step - a % step)
                if ready is not None and not ready(a + n):
                    return False
                out[a: a + n] = src[a - start: a - start + n]
                a += n
        start += size
        if start >= hi:
            break
    return True


def write_object_split(dest: memoryview, meta: bytes, buffers: list, is_error: bool,
                       run_elsewhere: Callable[[Callable[[], Any]], Callable[[], Any]]) -> None:
    """:func:`write_object` on two cores: ``run_elsewhere(fn)`` starts ``fn`` on another thread
    and returns a call that waits for it; that thread copies the second half of the bytes
    while this one copies the first."""
    import numpy as np

    out = np.frombuffer(dest, dtype=np.uint8)
    pieces = object_chunks(meta, buffers, is_error)
    mid = out.size // 2 // _ALIGN * _ALIGN
    wait = run_elsewhere(lambda: _copy_range(out, pieces, mid, out.size))
    try:
        _copy_range(out, pieces, 0, mid)
    finally:
        wait()


def write_object_behind(dest: memoryview, meta: bytes, buffers: list, is_error: bool,
                        ready: Callable[[int], bool], step: int) -> bool:
    """Copy the object into ``dest`` like :func:`write_object`, in parts of at most ``step``
    bytes, each only once ``ready(end)`` said that ``dest[:end]`` may be written now (another
    thread maps those pages meanwhile).  Returns False, having stopped, when ``ready`` did.

    The copies run without the GIL (numpy's), so the thread preparing the next parts runs
    meanwhile on another core.
    """
    import numpy as np

    out = np.frombuffer(dest, dtype=np.uint8)
    return _copy_range(out, object_chunks(meta, buffers, is_error), 0, out.size, step, ready)


_ZEROS = bytes(_ALIGN)
_IOV_MAX = 1024


def object_chunks(meta: bytes, buffers: list, is_error: bool = False) -> list:
    """The object's bytes as a list of pieces, in order (what :func:`write_object` writes)."""
    lens = [memoryview(b).nbytes for b in buffers]
    head = _HEAD.pack(len(meta), len(buffers), 1 if is_error else 0)
    if lens:
        head += struct.pack(f"<{len(lens)}Q", *lens)
    pieces = [head + bytes(meta)] if len(meta) < 65536 else [head, meta]
    pos = len(head) + len(meta)
    if _pad(pos):
        pieces.append(_ZEROS[: _pad(pos)])
    for buf, n in zip(buffers, lens):
        if n:
            pieces.append(buf)
        if _pad(n):
            pieces.append(_ZEROS[: _pad(n)])
    return pieces


def pwrite_object(fd: int, offset: int, meta: bytes, buffers: list, is_error: bool = False) -> None:
    """Write the object at ``offset`` of file ``fd`` with ``pwritev`` (no mapping needed).

    On tmpfs this copies straight into the file's pages: no page faults in the
    writer, and pages the write fills completely are not zeroed first.
    """
    pieces = object_chunks(meta, buffers, is_error)
    while pieces:
        batch = pieces[:_IOV_MAX]
        want = sum(memoryview(p).nbytes for p in batch)
        done = os.pwritev(fd, batch, offset)
        offset += done
        if done == want:
            del pieces[:_IOV_MAX]
            continue
        # A short write (signals, or the 2 GiB cap of one call): skip what was written.
        while done:
            n = memoryview(pieces[0]).nbytes
            if done >= n:
                done -= n
                pieces.pop(0)
            else:
                pieces[0] = memoryview(pieces[0])[done:]
                done = 0


def read_object(src: memoryview) -> tuple[memoryview, list[memoryview], bool]:
    """Return ``(meta, buffers, is_error)`` as views into ``src`` (no copy)."""
    meta_len, nbuf, is_error = _HEAD.unpack_from(src, 0)
    pos = _HEAD.size
    lens = struct.unpack_from(f"<{nbuf}Q", src, pos) if nbuf else ()
    pos += 8 * nbuf
    meta = src[pos : pos + meta_len]
    pos += meta_len
    pos += _pad(pos)
    buffers = []
    for n in lens:
        buffers.append(src[pos : pos + n])
        pos += n + _pad(n)
    return meta, buffers, bool(is_error)
