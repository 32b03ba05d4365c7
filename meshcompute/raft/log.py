"""The Raft log as the core sees it: stable entries (in Storage) + unstable ones.

Index layout (`S` = snapshot index in storage or in the unstable snapshot)::

    compacted      |          stable (Storage)        |  unstable (this process only)
    1 ........ S   | S+1 ................ offset-1    | offset ............ last_index
                     ^ first_index                       ^ unstable.offset

    applied <= committed <= last_index

Entries become *stable* when the application acknowledges, via advance(), that
it persisted the Ready that carried them. Everything unstable is lost if the
process crashes; everything stable survives. The core never acknowledges (acks
an append, grants a vote) anything before it is stable -- that is what the
after-persist message list of Ready is for.

Invariants (checked where cheap, see RaftInvariantError):

* ``applied <= committed <= last_index`` (an entry is applied only once it is
  committed, and only entries we hold can be committed);
* ``committed`` never decreases and committed entries are never truncated
  (§5.4 Leader Completeness + State Machine Safety rest on this);
* ``unstable.entries[i].index == unstable.offset + i``;
* if ``unstable.snapshot`` is set, ``unstable.offset == snapshot.index + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Compacted, RaftInvariantError, Unavailable
from .messages import Entry, Snapshot
from .storage import Storage, limit_size

__all__ = ["Unstable", "RaftLog"]


class Unstable:
    """Entries and snapshot received but not yet known to be on stable storage."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        # A snapshot the application must install (follower catching up, §7).
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        # Index of entries[0] (or of the next entry to arrive).
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.index == i:
                return self.snapshot.term
            return None
        if i >= self.offset + len(self.entries):
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to (i, t) are persisted; forget them if they are still ours."""
        gt = self.maybe_term(i)
        # If the term differs, the entry at i was replaced by a conflicting append
        # after the Ready was handed out; the new one is not persisted yet.
        if gt is None or gt != t or i < self.offset:
            return
        del self.entries[: i + 1 - self.offset]
        self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = s.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)  # the common case: a plain append
        elif after <= self.offset:
            # Replaces every unstable entry, and possibly stable ones too; the
            # application's Storage.append truncates those when it persists these.
            self.offset = after
            self.entries = list(ents)
        else:
            # Keep the unstable prefix before `after`, replace the rest.
            self.entries = self.entries[: after - self.offset] + list(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        if lo < self.offset or hi > self.offset + len(self.entries):
            raise RaftInvariantError(
                f"unstable slice [{lo},{hi}) out of bounds [{self.offset},{self.offset + len(self.entries)})"
            )
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """Storage + Unstable, plus the commit and apply cursors."""

    __slots__ = ("storage", "unstable", "committed", "applied", "max_applying_size")

    def __init__(self, storage: Storage, max_applying_size: int) -> None:
        self.storage = storage
        first, last = storage.first_index(), storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything covered by the storage snapshot is committed and applied
        # (the application restored its state machine from that snapshot).
        self.committed = first - 1
        self.applied = first - 1
        self.max_applying_size = max_applying_size

    # --- bounds -------------------------------------------------------------------
    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry i; raises Compacted / Unavailable outside [first_index-1, last_index]."""
        u = self.unstable
        if u.offset <= i < u.offset + len(u.entries):
            return u.entries[i - u.offset].term
        t = u.maybe_term(i)
        if t is not None:
            return t
        if i > self.last_index():
            raise Unavailable(f"index {i} is beyond the last index {self.last_index()}")
        if i < self.first_index() - 1:
            raise Compacted(f"index {i} is compacted (first index {self.first_index()})")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        """Term of entry i, or 0 if it is compacted or beyond the end (never matches a real entry)."""
        try:
            return self.term(i)
        except (Compacted, Unavailable):
            return 0

    def match_term(self, i: int, t: int) -> bool:
        """Do we hold an entry at index i with term t? (False if i is compacted or beyond the end.)"""
        try:
            return self.term(i) == t
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """§5.4.1 election restriction: is a log ending at (last_index, term) at least as up-to-date as ours?

        "If the logs have last entries with different terms, then the log with the
        later term is more up-to-date. If the logs end with the same term, then
        whichever log is longer is more up-to-date."
        """
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # --- appending ------------------------------------------------------------------
    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry of ``ents`` that we do not hold (different term or beyond our end); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: Sequence[Entry]
    ) -> tuple[int, list[Entry]] | None:
        """Follower side of AppendEntries (§5.3).

        Returns None if our log does not contain an entry at ``index`` with term
        ``log_term`` (the consistency check fails), otherwise ``(last new index,
        entries actually written)``. Entries we already hold are not rewritten:
        a stale or duplicated MsgApp must never truncate entries that a newer
        MsgApp appended ("if an existing entry conflicts with a new one, delete
        the existing entry and all that follow it" -- only on a real conflict).
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        written: list[Entry] = []
        if ci:
            if ci <= self.committed:
                raise RaftInvariantError(
                    f"entry {ci} conflicts with a committed entry (committed={self.committed})"
                )
            written = list(ents[ci - (index + 1) :])
            self.append(written)
        # Only entries known to match the leader may be committed: min() with the
        # last entry this message vouches for (our log may continue with
        # unverified entries from an old term).
        self.commit_to(min(committed, last_new))
        return last_new, written

    def append(self, ents: Sequence[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftInvariantError(f"append after {after} would truncate committed entries up to {self.committed}")
        if after > self.last_index():
            raise RaftInvariantError(f"append after {after} leaves a gap (last index {self.last_index()})")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # --- reading ----------------------------------------------------------------------
    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi) limited to ``max_size`` bytes (at least one). Raises Compacted."""
        if lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise Compacted(f"entries from {lo} are compacted (first index {first})")
        if hi > self.last_index() + 1:
            raise RaftInvariantError(f"slice [{lo},{hi}) beyond last index {self.last_index()}")
        off = self.unstable.offset
        ents: list[Entry] = []
        if lo < off:
            ents = self.storage.entries(lo, min(hi, off), max_size)
            if len(ents) < min(hi, off) - lo:
                return ents  # hit the size limit inside storage
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_size)

    def entries_from(self, i: int, max_size: int | None = None) -> list[Entry]:
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_size)

    def all_entries(self) -> list[Entry]:
        """Every entry still held (for tests and dumps)."""
        return self.entries_from(self.first_index())

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # --- commit / apply ----------------------------------------------------------------
    def commit_to(self, to_commit: int) -> None:
        # Never decrease commit (it may be behind a stale message's view).
        if self.committed < to_commit:
            if self.last_index() < to_commit:
                raise RaftInvariantError(
                    f"commit index {to_commit} is out of range [last index {self.last_index()}]; "
                    "was the log corrupted, truncated or lost?"
                )
            self.committed = to_commit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """§5.4.2: a leader only commits by counting replicas for entries of its current term.

        Entries of earlier terms become committed indirectly, as a prefix of a
        current-term entry (Figure 8 shows why counting them directly is unsafe).
        """
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise RaftInvariantError(f"applied({i}) is out of range [prev applied {self.applied}, committed {self.committed}]")
        self.applied = i

    def has_next_committed_ents(self) -> bool:
        # While a snapshot is pending installation the state machine must not
        # apply entries (they may be covered by the snapshot).
        return self.unstable.snapshot is None and self.applied < self.committed

    def next_committed_ents(self) -> list[Entry]:
        if not self.has_next_committed_ents():
            return []
        return self.slice(self.applied + 1, self.committed + 1, self.max_applying_size)

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def restore(self, s: Snapshot) -> None:
        """Replace the log with snapshot ``s`` (follower far behind, §7)."""
        self.committed = s.index
        self.unstable.restore(s)
