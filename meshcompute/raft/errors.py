"""Errors raised by the Raft core and its storage.

Each error says whose fault it is, so that callers know whether to retry,
redirect, or fix their code:

* :class:`NotLeader` -- the *caller* sent a leader-only request to a
  non-leader; redirect to ``leader_hint`` (or retry later if it is unknown).
* :class:`ProposalDropped` -- the *leader* could not accept the request right
  now (transfer in progress, a membership change still pending); retry later.
* :class:`InvalidConfChange` / :class:`ConfigError` -- the *caller* asked for
  something invalid; retrying will not help.
* :class:`Compacted` / :class:`Unavailable` / :class:`SnapshotOutOfDate` --
  storage-level answers the core handles itself (e.g. by sending a snapshot);
  applications only see them when calling storage directly.
* :class:`StorageCorrupted` -- the *disk* holds data that fails its checksum
  or violates the log's structure; an operator must intervene.
* :class:`RaftInvariantError` -- a *bug* (in the core, or in an application
  that broke the persistence contract); never caught by the core.
"""

from __future__ import annotations

__all__ = [
    "RaftError",
    "NotLeader",
    "ProposalDropped",
    "InvalidConfChange",
    "ConfigError",
    "StorageError",
    "Compacted",
    "Unavailable",
    "SnapshotOutOfDate",
    "StorageCorrupted",
    "RaftInvariantError",
]


class RaftError(Exception):
    """Base class of all errors of meshcompute.raft."""


class NotLeader(RaftError):
    """A leader-only request reached a node that is not the leader (caller's fault: redirect)."""

    def __init__(self, node_id: int, leader_hint: int, what: str = "proposal") -> None:
        self.node_id = node_id
        # The leader this node currently follows, or 0 (NONE) if it knows of none.
        self.leader_hint = leader_hint
        hint = f"retry on node {leader_hint}" if leader_hint else "no leader is known yet; retry later"
        super().__init__(f"{what} rejected: node {node_id} is not the leader ({hint})")


class ProposalDropped(RaftError):
    """The leader cannot take this request now (transient; retry later)."""


class InvalidConfChange(RaftError, ValueError):
    """A membership change that can never succeed as asked (caller's fault)."""


class ConfigError(RaftError, ValueError):
    """A Config field is out of range (caller's fault)."""


class StorageError(RaftError):
    """Base class of storage-level answers."""


class Compacted(StorageError):
    """The requested index is older than the last snapshot (the entries are gone)."""


class Unavailable(StorageError):
    """The requested index is beyond the last entry in storage."""


class SnapshotOutOfDate(StorageError):
    """A snapshot older than the one already in storage was offered."""


class StorageCorrupted(StorageError):
    """On-disk state fails a checksum or a structural check (operator must intervene)."""


class RaftInvariantError(AssertionError):
    """A safety invariant was about to be violated: a bug, never a runtime condition."""
