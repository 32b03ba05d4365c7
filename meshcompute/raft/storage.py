"""Stable storage of a Raft node: the :class:`Storage` protocol and two implementations.

Division of labour (as in etcd-io/raft): the core only *reads* storage (through
the Storage protocol); the application *writes* it, from each Ready, before
sending the Ready's after-persist messages:

1. ``apply_snapshot(rd.snapshot)`` if there is one,
2. ``append(rd.entries)`` (an append whose first index overlaps existing
   entries replaces them from that index on: the core only asks for this when
   the leader's log conflicts with ours, §5.3),
3. ``set_hard_state(rd.hard_state)`` if there is one.

``save(hard_state, entries, snapshot)`` does the three in that order.
Entries go before the hard state so that a crash between the two never leaves a
commit index pointing past the end of the durable log.

:class:`MemoryStorage` keeps everything in memory; the simulation treats it as
the "disk" (a simulated crash keeps it and drops the core). :class:`FileStorage`
is a MemoryStorage that also writes every change to a directory with fsync, for
real daemons.

Log layout in MemoryStorage: ``_ents[0]`` is a dummy entry holding the index and
term of the last snapshot (or 0/0), so that ``term(first_index - 1)`` is always
answerable -- the core needs it to build the first MsgApp after a snapshot.
Invariant: ``_ents[i].index == _ents[0].index + i`` for all i.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .errors import Compacted, SnapshotOutOfDate, StorageCorrupted, Unavailable
from .messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

__all__ = ["Storage", "MemoryStorage", "FileStorage", "limit_size"]


@runtime_checkable
class Storage(Protocol):
    """What the core reads. All indexes are log indexes (the first entry is 1)."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted HardState and the ConfState of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if any, at most ``max_size`` bytes.

        Raises Compacted if lo <= the snapshot index, Unavailable if hi > last_index()+1.
        """
        ...

    def term(self, i: int) -> int:
        """Term of entry i, for first_index()-1 <= i <= last_index().

        Raises Compacted below that range and Unavailable above it.
        """
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index if the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (index 0 if none was taken yet)."""
        ...


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """Longest prefix of ``ents`` within ``max_size`` bytes, but never empty if ``ents`` is not."""
    if max_size is None or not ents:
        return ents
    total = 0
    for i, e in enumerate(ents):
        total += e.size()
        if total > max_size and i > 0:
            return ents[:i]
    return ents


class MemoryStorage:
    """In-memory Storage; also the write side used by the application."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        # `conf_state` bootstraps a brand-new group: every initial member starts
        # with the same configuration at index 0 (a joining node starts empty and
        # learns the configuration from the leader).
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state or ConfState()))
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # --- read side (Storage protocol) ---------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, i: int) -> int:
        offset = self._ents[0].index
        if i < offset:
            raise Compacted(f"index {i} is compacted (snapshot index {offset})")
        if i - offset >= len(self._ents):
            raise Unavailable(f"index {i} is beyond the last index {self.last_index()}")
        return self._ents[i - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"entries from {lo} are compacted (snapshot index {offset})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries up to {hi - 1} requested, last index is {self.last_index()}")
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- write side (the application, from Ready) ---------------------------
    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole state with ``snap`` (a follower catching up, §7)."""
        if snap.index <= self._snapshot.index:
            raise SnapshotOutOfDate(f"snapshot at {snap.index} is not newer than {self._snapshot.index}")
        self._snapshot = snap
        self._ents = [Entry(term=snap.term, index=snap.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of ``index`` (which must be applied)."""
        if index <= self._snapshot.index:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer than {self._snapshot.index}")
        if index > self.last_index():
            raise Unavailable(f"snapshot index {index} is beyond the last index {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMetadata(index, self.term(index), conf_state), data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including ``compact_index`` (§7 log compaction)."""
        offset = self._ents[0].index
        if compact_index <= offset:
            raise Compacted(f"index {compact_index} is already compacted (snapshot index {offset})")
        if compact_index > self.last_index():
            raise Unavailable(f"compact index {compact_index} is beyond the last index {self.last_index()}")
        i = compact_index - offset
        self._ents = [Entry(term=self._ents[i].term, index=compact_index)] + self._ents[i + 1 :]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, replacing any existing entries from ``entries[0].index`` on."""
        if not entries:
            return
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return  # all of them are already covered by the snapshot
        ents = list(entries)
        if first > ents[0].index:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise Unavailable(
                f"missing log entries: last index {self.last_index()}, appending from {ents[0].index}"
            )
        self._ents = self._ents[:offset] + ents

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
        """Persist one Ready's worth of state, in the safe order (see module doc)."""
        if snapshot is not None and not snapshot.is_empty():
            self.apply_snapshot(snapshot)
        if entries:
            self.append(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)


# ---------------------------------------------------------------------------
# FileStorage
# ---------------------------------------------------------------------------

# Log file header: magic, crc32 (of the rest), index and term of the entry the
# log follows (the snapshot it was written against).
_HDR = struct.Struct("<4sIQQ")
_MAGIC = b"MRL1"
# Log record: crc32 (of everything after it), index, term, type, payload length.
_REC = struct.Struct("<IQQBI")
_HARDSTATE = "hardstate.json"
_SNAPSHOT = "snapshot.bin"
_LOG = "log.bin"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(dirpath: str, name: str, data: bytes) -> None:
    """Write-to-temp + fsync + rename + fsync(dir): the file is either old or new after a crash."""
    tmp = os.path.join(dirpath, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(dirpath, name))
    _fsync_dir(dirpath)


def _encode_header(index: int, term: int) -> bytes:
    body = struct.pack("<QQ", index, term)
    return _MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def _encode_entry(e: Entry) -> bytes:
    body = _REC.pack(0, e.index, e.term, int(e.type), len(e.data))[4:] + e.data
    return struct.pack("<I", zlib.crc32(body)) + body


def _encode_snapshot(s: Snapshot) -> bytes:
    m = s.metadata
    meta = json.dumps(
        {
            "index": m.index,
            "term": m.term,
            "voters": sorted(m.conf_state.voters),
            "learners": sorted(m.conf_state.learners),
        }
    ).encode()
    body = struct.pack("<I", len(meta)) + meta + s.data
    return struct.pack("<I", zlib.crc32(body)) + body


def _decode_snapshot(raw: bytes, path: str) -> Snapshot:
    if len(raw) < 8 or struct.unpack_from("<I", raw)[0] != zlib.crc32(raw[4:]):
        raise StorageCorrupted(f"{path}: snapshot checksum mismatch")
    (mlen,) = struct.unpack_from("<I", raw, 4)
    meta = json.loads(raw[8 : 8 + mlen])
    cs = ConfState(frozenset(meta["voters"]), frozenset(meta["learners"]))
    return Snapshot(SnapshotMetadata(meta["index"], meta["term"], cs), raw[8 + mlen :])


class FileStorage(MemoryStorage):
    """A MemoryStorage whose every write is also made durable in ``directory``.

    Files:

    * ``hardstate.json`` -- term, vote, commit; replaced atomically.
    * ``snapshot.bin`` -- crc32, metadata, state machine image; replaced atomically.
    * ``log.bin`` -- a header naming the index/term the log follows, then
      append-only records (crc32, index, term, type, length, payload), one per
      entry, consecutive indexes. A conflicting append truncates the file at the
      first replaced record; compaction and snapshot installation rewrite it
      atomically.

    Recovery reads the log up to the first torn or corrupt record (a crash in the
    middle of an append) and truncates the tail there; those entries were never
    acknowledged because acks are only sent after ``append`` returns.
    A crash between writing a new snapshot and rewriting the log is detected by
    the header: if the old log holds the snapshot's own entry (same index and
    term) this was a compaction and the entries after it are kept; otherwise it
    was a snapshot installed over a conflicting log and the old entries are
    dropped, as installing it would have done.

    Every mutation ends with an fsync before returning, which is what lets the
    application send a Ready's after-persist messages right after ``save``.
    """

    def __init__(self, directory: str, conf_state: ConfState | None = None) -> None:
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        # Byte offset in log.bin of each entry, parallel to _ents[1:].
        self._offsets: list[int] = []
        self._load(conf_state)

    @staticmethod
    def exists(directory: str) -> bool:
        """True if ``directory`` holds state from an earlier run."""
        return any(os.path.exists(os.path.join(directory, n)) for n in (_HARDSTATE, _SNAPSHOT, _LOG))

    # --- recovery -------------------------------------------------------------
    def _load(self, bootstrap: ConfState | None) -> None:
        d = self.directory
        fresh = not self.exists(d)
        snap_path = os.path.join(d, _SNAPSHOT)
        if os.path.exists(snap_path):
            with open(snap_path, "rb") as f:
                snap = _decode_snapshot(f.read(), snap_path)
            self._snapshot = snap
            self._ents = [Entry(term=snap.term, index=snap.index)]
        elif fresh and bootstrap is not None:
            # A brand-new member of the initial group: persist the bootstrap config
            # so that a restart does not forget who the voters are.
            self._snapshot = Snapshot(SnapshotMetadata(0, 0, bootstrap))
            _atomic_write(d, _SNAPSHOT, _encode_snapshot(self._snapshot))
        hs_path = os.path.join(d, _HARDSTATE)
        if os.path.exists(hs_path):
            with open(hs_path, "rb") as f:
                try:
                    raw = json.loads(f.read())
                    self._hard_state = HardState(raw["term"], raw["vote"], raw["commit"])
                except (ValueError, KeyError) as e:
                    raise StorageCorrupted(f"{hs_path}: unreadable hard state: {e}") from e
        self._load_log()

    def _load_log(self) -> None:
        path = os.path.join(self.directory, _LOG)
        if not os.path.exists(path):
            self._rewrite_log()
            return
        with open(path, "rb") as f:
            raw = f.read()
        if len(raw) < _HDR.size:
            raise StorageCorrupted(f"{path}: log header is truncated")
        magic, crc, base_index, base_term = _HDR.unpack_from(raw, 0)
        if magic != _MAGIC or crc != zlib.crc32(raw[8 : _HDR.size]):
            raise StorageCorrupted(f"{path}: bad log header")
        pos = good_end = _HDR.size
        ents: list[Entry] = []
        offsets: list[int] = []
        while pos + _REC.size <= len(raw):
            crc, index, term, typ, n = _REC.unpack_from(raw, pos)
            end = pos + _REC.size + n
            if end > len(raw) or zlib.crc32(raw[pos + 4 : end]) != crc:
                break  # torn or corrupt tail: stop here and truncate below
            expected = base_index + 1 + len(ents)
            if index != expected:
                raise StorageCorrupted(f"{path}: entry {index} found where {expected} was expected")
            ents.append(Entry(term=term, index=index, type=EntryType(typ), data=raw[pos + _REC.size : end]))
            offsets.append(pos)
            pos = good_end = end
        if good_end != len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        snap = self._snapshot
        if snap.index == base_index:
            if snap.term != base_term:
                raise StorageCorrupted(f"{path}: log follows {base_term}/{base_index}, snapshot is {snap.term}/{snap.index}")
            self._ents = self._ents[:1] + ents
            self._offsets = offsets
        elif snap.index > base_index:
            # Interrupted compaction or snapshot installation; see the class doc.
            k = snap.index - base_index - 1
            if k < len(ents) and ents[k].term == snap.term:
                self._ents = self._ents[:1] + ents[k + 1 :]
            else:
                self._ents = self._ents[:1]
            self._rewrite_log()
        else:
            raise StorageCorrupted(f"{path}: log follows index {base_index}, beyond the snapshot at {snap.index}")

    # --- durable writes ---------------------------------------------------------
    def set_hard_state(self, hs: HardState) -> None:
        data = json.dumps({"term": hs.term, "vote": hs.vote, "commit": hs.commit}).encode()
        _atomic_write(self.directory, _HARDSTATE, data)
        super().set_hard_state(hs)

    def apply_snapshot(self, snap: Snapshot) -> None:
        super().apply_snapshot(snap)
        _atomic_write(self.directory, _SNAPSHOT, _encode_snapshot(snap))
        self._rewrite_log()

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        snap = super().create_snapshot(index, conf_state, data)
        _atomic_write(self.directory, _SNAPSHOT, _encode_snapshot(snap))
        return snap

    def compact(self, compact_index: int) -> None:
        super().compact(compact_index)
        self._rewrite_log()

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries or entries[-1].index < self.first_index():
            return
        first_new = max(entries[0].index, self.first_index())
        super().append(entries)
        path = os.path.join(self.directory, _LOG)
        keep = first_new - self.first_index()  # records before the first new entry
        with open(path, "r+b") as f:
            if keep < len(self._offsets):
                f.truncate(self._offsets[keep])
                del self._offsets[keep:]
            f.seek(0, os.SEEK_END)
            pos = f.tell()
            for e in self._ents[1 + keep :]:
                rec = _encode_entry(e)
                f.write(rec)
                self._offsets.append(pos)
                pos += len(rec)
            f.flush()
            os.fsync(f.fileno())

    def _rewrite_log(self) -> None:
        base = self._ents[0]
        blob = bytearray(_encode_header(base.index, base.term))
        offsets = []
        for e in self._ents[1:]:
            offsets.append(len(blob))
            blob += _encode_entry(e)
        _atomic_write(self.directory, _LOG, bytes(blob))
        self._offsets = offsets
