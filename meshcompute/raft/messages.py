"""Wire-level records of the Raft core: entries, hard state, snapshots, messages.

Everything here is a frozen dataclass so that a record handed to the
application (in a :class:`~meshcompute.raft.core.Ready`) can never be mutated
behind the core's back, and so that records can be compared and hashed in tests
and in the simulation's invariant checkers.

Every record has a one-line ``describe()`` used by the scenario tests
(``tests/raft/testdata/*.txt``) and by logs; the format follows etcd-io/raft so
that traces from the two implementations read alike, e.g.::

    1->2 MsgApp Term:1 Log:1/10 Commit:10 Entries:[1/11 EntryNormal "put x=1"]

Node ids are positive integers; ``NONE`` (0) means "no node" (no vote cast, no
known leader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "NONE",
    "CAMPAIGN_TRANSFER",
    "MessageType",
    "EntryType",
    "ConfChangeType",
    "ConfChange",
    "ConfState",
    "encode_conf_entry",
    "decode_conf_entry",
    "Entry",
    "HardState",
    "SnapshotMetadata",
    "Snapshot",
    "Message",
    "ReadState",
    "type_name",
    "is_local_message",
    "is_response_message",
    "vote_response_type",
]

# Node id meaning "nobody": no vote cast in this term, no known leader.
NONE = 0

# Context attached to vote requests of an election triggered by a leadership
# transfer (MsgTimeoutNow). Such requests bypass the leader lease (thesis §3.10:
# the old leader asked for this election, so it is not a disruption).
CAMPAIGN_TRANSFER = b"CampaignTransfer"


class MessageType(IntEnum):
    """Kinds of :class:`Message`.

    Append-only: the numeric values may be persisted or sent between daemons of
    different versions, so never renumber or reuse a value; add new kinds at the
    end.
    """

    # local: election timeout fired (or the application asked to campaign).
    HUP = 0
    # local: heartbeat timeout fired on the leader.
    BEAT = 1
    # local: a client proposal (reserved; proposals use Raft.propose()).
    PROP = 2
    # leader -> follower: AppendEntries RPC (§5.3).
    APP = 3
    # follower -> leader: AppendEntries result (ack of an index, or a rejection
    # with a conflict hint).
    APP_RESP = 4
    # candidate -> voter: RequestVote RPC (§5.2).
    VOTE = 5
    # voter -> candidate: RequestVote result.
    VOTE_RESP = 6
    # pre-candidate -> voter: "would you vote for me at term+1?" (thesis §9.6).
    PRE_VOTE = 7
    # voter -> pre-candidate: pre-vote result.
    PRE_VOTE_RESP = 8
    # leader -> follower: InstallSnapshot RPC (§7).
    SNAP = 9
    # leader -> follower: heartbeat (empty AppendEntries carrying commit).
    HEARTBEAT = 10
    # follower -> leader: heartbeat ack (echoes the ReadIndex context).
    HEARTBEAT_RESP = 11
    # local: the transport reports whether a snapshot was delivered.
    SNAP_STATUS = 12
    # local: the transport reports a peer as unreachable.
    UNREACHABLE = 13
    # local: leader checks it heard from a quorum this election timeout.
    CHECK_QUORUM = 14
    # follower -> leader: ReadIndex request forwarded (thesis §6.4).
    READ_INDEX = 15
    # leader -> follower: ReadIndex answer (the confirmed commit index).
    READ_INDEX_RESP = 16
    # local or forwarded: ask the leader to hand leadership to `frm`.
    TRANSFER_LEADER = 17
    # leader -> transferee: campaign now, ignoring the election timeout.
    TIMEOUT_NOW = 18


_MSG_NAMES: dict[MessageType, str] = {
    MessageType.HUP: "MsgHup",
    MessageType.BEAT: "MsgBeat",
    MessageType.PROP: "MsgProp",
    MessageType.APP: "MsgApp",
    MessageType.APP_RESP: "MsgAppResp",
    MessageType.VOTE: "MsgVote",
    MessageType.VOTE_RESP: "MsgVoteResp",
    MessageType.PRE_VOTE: "MsgPreVote",
    MessageType.PRE_VOTE_RESP: "MsgPreVoteResp",
    MessageType.SNAP: "MsgSnap",
    MessageType.HEARTBEAT: "MsgHeartbeat",
    MessageType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MessageType.SNAP_STATUS: "MsgSnapStatus",
    MessageType.UNREACHABLE: "MsgUnreachable",
    MessageType.CHECK_QUORUM: "MsgCheckQuorum",
    MessageType.READ_INDEX: "MsgReadIndex",
    MessageType.READ_INDEX_RESP: "MsgReadIndexResp",
    MessageType.TRANSFER_LEADER: "MsgTransferLeader",
    MessageType.TIMEOUT_NOW: "MsgTimeoutNow",
}

_LOCAL_TYPES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.SNAP_STATUS,
        MessageType.UNREACHABLE,
        MessageType.CHECK_QUORUM,
    }
)

_RESPONSE_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.READ_INDEX_RESP,
    }
)


def type_name(t: MessageType) -> str:
    """etcd-style name of a message type ("MsgApp"), used in describe() and logs."""
    return _MSG_NAMES[t]


def is_local_message(t: MessageType) -> bool:
    """True for message kinds that never cross the network."""
    return t in _LOCAL_TYPES


def is_response_message(t: MessageType) -> bool:
    return t in _RESPONSE_TYPES


def vote_response_type(t: MessageType) -> MessageType:
    if t == MessageType.VOTE:
        return MessageType.VOTE_RESP
    if t == MessageType.PRE_VOTE:
        return MessageType.PRE_VOTE_RESP
    raise ValueError(f"not a vote message type: {t!r}")


class EntryType(IntEnum):
    """Append-only, like MessageType."""

    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(IntEnum):
    """Append-only, like MessageType."""

    # Add a voter, or promote a learner to voter.
    ADD_NODE = 0
    # Remove a voter or a learner.
    REMOVE_NODE = 1
    # Add a learner (non-voting member), or demote a voter to learner.
    ADD_LEARNER = 2


_CC_NAMES = {
    ConfChangeType.ADD_NODE: "AddNode",
    ConfChangeType.REMOVE_NODE: "RemoveNode",
    ConfChangeType.ADD_LEARNER: "AddLearner",
}
_CC_BY_NAME = {v: k for k, v in _CC_NAMES.items()}


def _quote(data: bytes) -> str:
    """Go-%q-like rendering of entry payloads for describe()."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (thesis §4.1): one node at a time."""

    type: ConfChangeType
    node_id: int

    def describe(self) -> str:
        return f"{_CC_NAMES[self.type]} {self.node_id}"


def _ids(ids: frozenset[int]) -> str:
    return "[" + " ".join(str(i) for i in sorted(ids)) + "]"


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership of the group at some log index.

    Invariant: ``voters`` and ``learners`` are disjoint.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Accept any iterable for convenience (ConfState(voters=(1, 2, 3))).
        object.__setattr__(self, "voters", frozenset(self.voters))
        object.__setattr__(self, "learners", frozenset(self.learners))
        if self.voters & self.learners:
            raise ValueError(f"nodes {_ids(self.voters & self.learners)} are both voter and learner")

    def apply(self, cc: ConfChange) -> ConfState:
        """The configuration after ``cc``; validation is the caller's job."""
        v, lr, n = set(self.voters), set(self.learners), cc.node_id
        if cc.type == ConfChangeType.ADD_NODE:
            lr.discard(n)
            v.add(n)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            v.discard(n)
            lr.add(n)
        else:
            v.discard(n)
            lr.discard(n)
        return ConfState(frozenset(v), frozenset(lr))

    def describe(self) -> str:
        return f"Voters:{_ids(self.voters)} Learners:{_ids(self.learners)}"


def encode_conf_entry(cc: ConfChange, result: ConfState) -> bytes:
    """Payload of a conf change entry: the change *and* the full resulting configuration.

    Carrying the whole configuration (the thesis's C_new, §4.1) rather than a
    delta lets any node adopt it on append without knowing the previous one --
    a node that joins after the initial bootstrap never saw that configuration.
    """
    v = ",".join(str(i) for i in sorted(result.voters))
    lr = ",".join(str(i) for i in sorted(result.learners))
    return f"{_CC_NAMES[cc.type]} {cc.node_id} voters={v} learners={lr}".encode()


def decode_conf_entry(data: bytes) -> tuple[ConfChange, ConfState]:
    """Inverse of encode_conf_entry; raises ValueError on a malformed payload."""
    try:
        name, node, voters, learners = data.decode("ascii").split(" ")
        if not voters.startswith("voters=") or not learners.startswith("learners="):
            raise ValueError(data)
        vs = frozenset(int(x) for x in voters[7:].split(",") if x)
        ls = frozenset(int(x) for x in learners[9:].split(",") if x)
        return ConfChange(_CC_BY_NAME[name], int(node)), ConfState(vs, ls)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed conf change entry payload {data!r}") from e


# Per-entry overhead counted by size(): index, term and type on the wire.
ENTRY_OVERHEAD = 16


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``index`` and ``term`` identify it uniquely (§5.3 Log Matching)."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes counted against max_size_per_msg (payload + fixed overhead)."""
        return len(self.data) + ENTRY_OVERHEAD

    def describe(self) -> str:
        if self.type == EntryType.CONF_CHANGE:
            try:
                cc, cs = decode_conf_entry(self.data)
                body = f"{cc.describe()} -> {cs.describe()}"
            except ValueError:
                body = _quote(self.data)
            return f"{self.term}/{self.index} EntryConfChange {body}"
        return f"{self.term}/{self.index} EntryNormal {_quote(self.data)}"


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be on stable storage before responding to RPCs (§5 Figure 2)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0

    def describe(self) -> str:
        return f"HardState Term:{self.term} Vote:{self.vote} Commit:{self.commit}"


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image covering every entry up to ``metadata.index`` (§7)."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.metadata.index

    @property
    def term(self) -> int:
        return self.metadata.term

    def is_empty(self) -> bool:
        return self.metadata.index == 0

    def describe(self) -> str:
        m = self.metadata
        return f"Index:{m.index} Term:{m.term} ConfState:{{{m.conf_state.describe()}}}"


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft RPC (or a local event stepped into the core).

    Field meanings depend on ``type``; see docs/raft.md for the full table.
    In short: ``index``/``log_term`` name a log position (the entry preceding
    ``entries`` for MsgApp, the last entry for votes, the acked or rejected
    index for MsgAppResp); ``reject_hint``/``log_term`` on a rejected
    MsgAppResp carry the follower's conflict hint; ``context`` carries a
    ReadIndex request id or the CAMPAIGN_TRANSFER marker.
    """

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""

    def describe(self) -> str:
        t = self.type
        s = f"{self.frm}->{self.to} {_MSG_NAMES[t]} Term:{self.term}"
        if t == MessageType.APP:
            s += f" Log:{self.log_term}/{self.index} Commit:{self.commit}"
            if self.entries:
                s += " Entries:[" + ", ".join(e.describe() for e in self.entries) + "]"
        elif t == MessageType.APP_RESP:
            if self.reject:
                s += f" Rejected (Hint: {self.reject_hint}, ConflictTerm: {self.log_term})"
            s += f" Index:{self.index}"
        elif t in (MessageType.VOTE, MessageType.PRE_VOTE):
            s += f" Log:{self.log_term}/{self.index}"
        elif t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP, MessageType.SNAP_STATUS):
            if self.reject:
                s += " Rejected"
        elif t == MessageType.HEARTBEAT:
            s += f" Commit:{self.commit}"
        elif t == MessageType.READ_INDEX_RESP:
            s += f" Index:{self.index}"
        if self.snapshot is not None:
            s += f" Snapshot: {self.snapshot.describe()}"
        if self.context:
            s += f" Context:{_quote(self.context)}"
        return s


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer (thesis §6.4).

    Once the local state machine has applied ``index``, a read for
    ``request_ctx`` may be served from local state and is linearizable.
    """

    index: int
    request_ctx: bytes

    def describe(self) -> str:
        return f"ReadState Index:{self.index} Context:{_quote(self.request_ctx)}"
