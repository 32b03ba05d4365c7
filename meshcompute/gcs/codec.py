"""Raft messages on the wire: a :class:`~meshcompute.raft.Message` as a tuple of plain values.

The daemons carry these tuples inside their ``RAFT`` message. Decoding checks
every field's type, so bytes from a peer that are not a Raft message raise
ValueError (the daemon drops them) instead of reaching the core.
"""

from __future__ import annotations

from typing import Any

from ..raft import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata

__all__ = ["message_to_wire", "message_from_wire"]


def message_to_wire(m: Message) -> tuple:
    snap = None
    if m.snapshot is not None:
        md = m.snapshot.metadata
        snap = (md.index, md.term, tuple(sorted(md.conf_state.voters)), tuple(sorted(md.conf_state.learners)),
                m.snapshot.data)
    return (int(m.type), m.to, m.frm, m.term, m.log_term, m.index,
            tuple((e.term, e.index, int(e.type), e.data) for e in m.entries),
            m.commit, m.reject, m.reject_hint, snap, m.context)


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError("expected a non-negative int")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise ValueError("expected bytes")
    return v


def message_from_wire(t: Any) -> Message:
    """Inverse of message_to_wire; ValueError for anything malformed."""
    if not isinstance(t, tuple) or len(t) != 12:
        raise ValueError("a Raft message is a 12-tuple")
    mtype, to, frm, term, log_term, index, ents, commit, reject, hint, snap, ctx = t
    entries = []
    if not isinstance(ents, tuple):
        raise ValueError("entries must be a tuple")
    for e in ents:
        if not isinstance(e, tuple) or len(e) != 4:
            raise ValueError("an entry is a 4-tuple")
        entries.append(Entry(term=_int(e[0]), index=_int(e[1]), type=EntryType(_int(e[2])), data=_bytes(e[3])))
    snapshot = None
    if snap is not None:
        if not isinstance(snap, tuple) or len(snap) != 5:
            raise ValueError("a snapshot is a 5-tuple")
        voters = frozenset(_int(v) for v in snap[2])
        learners = frozenset(_int(v) for v in snap[3])
        snapshot = Snapshot(SnapshotMetadata(_int(snap[0]), _int(snap[1]), ConfState(voters, learners)),
                            _bytes(snap[4]))
    if type(reject) is not bool:
        raise ValueError("reject must be a bool")
    return Message(MessageType(_int(mtype)), to=_int(to), frm=_int(frm), term=_int(term), log_term=_int(log_term),
                   index=_int(index), entries=tuple(entries), commit=_int(commit), reject=reject,
                   reject_hint=_int(hint), snapshot=snapshot, context=_bytes(ctx))
