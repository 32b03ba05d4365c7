"""Spill files: an object's bytes copied out of the arena to disk, and back.

One file per object, ``<name>.spill``::

    b"MESHSPL1" | u8 codec (0 raw, 1 lz4 frame) | 7 pad | u64 object size | data

A file is written under ``<name>.tmp`` and renamed when complete, so a crash
never leaves a file that looks whole.  I/O goes in ``CHUNK`` pieces with
``pread``/``pwrite`` on the arena's file descriptor: memory use stays bounded
and the daemon needs no mapping of the arena.  Objects are lz4-compressed when
a sample compresses well, else stored raw (random data and already compressed
arrays would cost CPU for nothing).
"""

from __future__ import annotations

import errno
import itertools
import os
import struct

import lz4.block
import lz4.frame

MAGIC = b"MESHSPL1"
_HEAD = struct.Struct("<8sB7xQ")
RAW, LZ4 = 0, 1
CHUNK = 8 << 20
SAMPLE = 64 << 10
COMPRESS_BELOW = 0.8
"""Compress when the sample shrinks below this fraction of its size."""
MARKER = ".meshcompute-spill"
"""File in every spill directory: ``clean_stale_sessions`` removes only marked dirs."""


DISK_FULL = "the spill directory's disk is full"
"""Begins the explanation of an allocation that failed because a spill ran out of disk
(the client raises OutOfDiskError for it, ObjectStoreFullError otherwise)."""


def out_of_disk(error: BaseException) -> bool:
    """Whether a failed spill failed for want of disk space (or quota)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class SpillError(Exception):
    """A spill file could not be written or read back."""


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise SpillError(f"short read of {n} bytes at {offset}: got {len(data)}")
    return data


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def choose_codec(arena_fd: int, offset: int, size: int) -> int:
    """LZ4 if a sample (start and middle of the object) compresses below 80%."""
    if size < 2 * SAMPLE:
        sample = _pread_exact(arena_fd, size, offset)
    else:
        mid = offset + (size // 2) - (size // 2) % 4096
        sample = _pread_exact(arena_fd, SAMPLE, offset) + _pread_exact(arena_fd, SAMPLE, mid)
    if not sample:
        return RAW
    packed = lz4.block.compress(sample, store_size=False)
    return LZ4 if len(packed) < COMPRESS_BELOW * len(sample) else RAW


class SpillDir:
    """A directory of spill files, created at the first spill.

    ``write`` and ``read`` may run on several threads at once (the daemon's
    copier): file names come from one counter (``next`` on it is atomic), and
    making the directory and its marker is idempotent, so two threads may both do it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._made = False
        self._seq = itertools.count(1)

    def _ensure(self) -> None:
        if not self._made:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            with open(os.path.join(self.path, MARKER), "w"):
                pass
            self._made = True

    def write(self, arena_fd: int, offset: int, size: int, name: str) -> tuple[str, int, int]:
        """Copy ``size`` bytes at ``offset`` of the arena into a new spill file.

        Returns ``(path, bytes on disk, codec)``.  Raises SpillError (or OSError,
        e.g. disk full) with no file left behind.
        """
        self._ensure()
        final = os.path.join(self.path, f"{name}_{next(self._seq)}.spill")
        tmp = final[: -len(".spill")] + ".tmp"
        codec = choose_codec(arena_fd, offset, size)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            pos = _HEAD.size
            _pwrite_all(fd, _HEAD.pack(MAGIC, codec, size), 0)
            comp = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB) if codec == LZ4 else None
            if comp is not None:
                head = comp.begin()
                _pwrite_all(fd, head, pos)
                pos += len(head)
            done = 0
            while done < size:
                data = _pread_exact(arena_fd, min(CHUNK, size - done), offset + done)
                done += len(data)
                if comp is not None:
                    data = comp.compress(data)
                _pwrite_all(fd, data, pos)
                pos += len(data)
            if comp is not None:
                tail = comp.flush()
                _pwrite_all(fd, tail, pos)
                pos += len(tail)
            os.close(fd)
            fd = -1
            os.rename(tmp, final)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return final, pos, codec

    @staticmethod
    def read(path: str, arena_fd: int, offset: int, size: int) -> None:
        """Copy a spill file's object back into the arena at ``offset``."""
        with open(path, "rb", buffering=0) as f:
            head = f.read(_HEAD.size)
            if len(head) != _HEAD.size:
                raise SpillError(f"{path}: truncated header")
            magic, codec, stored = _HEAD.unpack(head)
            if magic != MAGIC or stored != size or codec not in (RAW, LZ4):
                raise SpillError(f"{path}: not the spill file of a {size}-byte object")
            done = 0

            def put(data) -> None:
                nonlocal done
                if done + len(data) > size:
                    raise SpillError(f"{path}: holds more than {size} bytes")
                _pwrite_all(arena_fd, data, offset + done)
                done += len(data)

            if codec == RAW:
                while data := f.read(CHUNK):
                    put(data)
            else:
                dec = lz4.frame.LZ4FrameDecompressor()
                while not dec.eof and (data := f.read(CHUNK)):
                    put(dec.decompress(data, max_length=CHUNK))
                    while not dec.needs_input and not dec.eof:  # output bounded to CHUNK a call
                        put(dec.decompress(b"", max_length=CHUNK))
                if not dec.eof:
                    raise SpillError(f"{path}: truncated lz4 frame")
            if done != size:
                raise SpillError(f"{path}: holds {done} of {size} bytes")

    @staticmethod
    def remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def spill_dir_for(session_dir: str, root: str | None = None) -> str:
    """Where a node spills: ``<session>/spill``, or ``<root>/meshcompute_<session>``."""
    if root:
        return os.path.join(root, "meshcompute_" + os.path.basename(os.path.normpath(session_dir)))
    return os.path.join(session_dir, "spill")
