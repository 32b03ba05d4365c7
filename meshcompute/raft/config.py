"""Configuration of one Raft node.

Time is measured in **ticks**: the application calls ``Raft.tick()`` at a fixed
period of its choosing (the GCS daemons use 50 ms, see meshcompute/gcs/server.py), and every timeout here is
a whole number of ticks. The core never reads a clock.

Timing relation (§5.6 "broadcastTime << electionTimeout << MTBF")::

    heartbeat_tick  <  election_tick  <=  randomized timeout  <  2 * election_tick

A follower that hears nothing for its randomized timeout (drawn uniformly from
``[election_tick, 2*election_tick)`` from the injected RNG, §5.2) campaigns.
With the defaults (10 ticks election, 1 tick heartbeat) a leader sends ten
heartbeats per election timeout, so losing a few in a row does not trigger an
election.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    # id. This node's id: a positive integer, unique in the group for its whole
    # life (ids are never reused, or a stale vote could be counted twice).
    id: int

    # ticks. Minimum election timeout. Followers campaign after a randomized
    # timeout in [election_tick, 2*election_tick) without hearing from a leader
    # (§5.2); a check-quorum leader steps down after election_tick ticks without
    # hearing from a quorum. Must exceed heartbeat_tick by a wide margin so that a
    # few lost heartbeats do not cause elections (10x by default).
    election_tick: int = 10

    # ticks. Interval between leader heartbeats (§5.2). Heartbeats also carry the
    # ReadIndex confirmation round (thesis §6.4), so a smaller value lowers read
    # latency at the cost of more messages.
    heartbeat_tick: int = 1

    # index. Last index the application's state machine has already applied when
    # the node (re)starts, e.g. recovered from its own snapshot. Committed entries
    # up to this index are not handed out again. 0 = "the storage snapshot's index":
    # the application restored its state from Storage.snapshot().
    applied: int = 0

    # bytes. Upper bound on the entries carried by one MsgApp (at least one entry
    # is always sent, so a huge entry still makes progress). Bounds the work a
    # follower does per message and the memory of a message in flight.
    max_size_per_msg: int = 1 << 20

    # bytes. Upper bound on the committed entries handed to the application in one
    # Ready (at least one is always handed out). Bounds apply latency per Ready.
    max_committed_size_per_ready: int = 16 << 20

    # messages. Flow control: at most this many MsgApp with entries may be in
    # flight (sent, not yet acked) to one follower in the replicate state. With
    # max_size_per_msg this bounds the bytes in flight per follower.
    max_inflight_msgs: int = 256

    # bool. Run a pre-vote round (thesis §9.6) before incrementing the term, so a
    # node that was partitioned away cannot force the whole group into a new term
    # when it comes back.
    pre_vote: bool = True

    # bool. Leader steps down if it has not heard from a quorum within an election
    # timeout (thesis §6.2), and followers that heard from a live leader within an
    # election timeout ignore vote requests (the leader lease of thesis §4.2.3),
    # which stops removed or partitioned servers from disrupting the group.
    check_quorum: bool = True

    # callback. Receives one human-readable line per notable event (role changes,
    # elections, conflicts, snapshots, membership changes). None = silent. Called
    # synchronously; keep it cheap.
    logger: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is out of range."""
        if not isinstance(self.id, int) or self.id <= 0:
            raise ConfigError(f"Config.id must be a positive integer (0 means 'no node'), got {self.id!r}")
        if self.heartbeat_tick <= 0:
            raise ConfigError(f"Config.heartbeat_tick must be > 0 ticks, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"Config.election_tick ({self.election_tick}) must be greater than heartbeat_tick "
                f"({self.heartbeat_tick}); 10x is recommended"
            )
        if self.applied < 0:
            raise ConfigError(f"Config.applied must be >= 0, got {self.applied}")
        if self.max_size_per_msg <= 0:
            raise ConfigError(f"Config.max_size_per_msg must be > 0 bytes, got {self.max_size_per_msg}")
        if self.max_committed_size_per_ready <= 0:
            raise ConfigError(
                f"Config.max_committed_size_per_ready must be > 0 bytes, got {self.max_committed_size_per_ready}"
            )
        if self.max_inflight_msgs <= 0:
            raise ConfigError(f"Config.max_inflight_msgs must be > 0, got {self.max_inflight_msgs}")
