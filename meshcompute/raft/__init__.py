"""Raft consensus: a pure state machine (no sockets, clocks or threads).

This package is the consensus core of meshcompute's replicated control store
(GCS). It follows the design of etcd-io/raft: the application feeds the core
messages (``step``) and clock ticks (``tick``), and collects the work the core
wants done as a :class:`Ready` record (entries and hard state to persist,
messages to send -- some only after persisting --, committed entries to apply,
linearizable read points), then acknowledges it with ``advance``.

Modules:

* :mod:`.messages` -- entries, messages, snapshots, hard state (frozen records);
* :mod:`.core` -- :class:`Raft`, the node state machine, and :class:`Ready`;
* :mod:`.log` -- the log (stable + unstable entries, commit/apply cursors);
* :mod:`.progress` -- the leader's per-follower replication state;
* :mod:`.storage` -- the :class:`Storage` protocol, :class:`MemoryStorage`,
  :class:`FileStorage` (durable, fsync'ed);
* :mod:`.config` -- :class:`Config`;
* :mod:`.sim` -- a deterministic network simulation with invariant checkers;
* :mod:`.linearizability` -- a linearizability checker for KV histories.

See docs/raft.md for the protocol, the persistence contract and the figures.
"""

from .config import Config
from .core import Raft, Ready, SoftState, StateType, Status
from .errors import (
    Compacted,
    ConfigError,
    InvalidConfChange,
    NotLeader,
    ProposalDropped,
    RaftError,
    RaftInvariantError,
    SnapshotOutOfDate,
    StorageCorrupted,
    StorageError,
    Unavailable,
)
from .messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
)
from .progress import Progress, ProgressState
from .storage import FileStorage, MemoryStorage, Storage

__all__ = [
    "NONE",
    "Compacted",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "FileStorage",
    "HardState",
    "InvalidConfChange",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeader",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "Raft",
    "RaftError",
    "RaftInvariantError",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SoftState",
    "StateType",
    "Status",
    "Storage",
    "StorageCorrupted",
    "StorageError",
    "Unavailable",
]
