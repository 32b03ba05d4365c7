"""Test helpers: building nodes with given logs and a synchronous in-memory network.

`Network` follows etcd-io/raft's test network: `send(*msgs)` delivers the
messages, lets every recipient handle its Ready (persisting into its
MemoryStorage, as the persistence contract requires), and keeps delivering the
resulting messages until none are left. Links can be cut, nodes isolated, and
message types ignored or dropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from meshcompute.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    Raft,
    ReadState,
)

MT = MessageType


def make_storage(peers: Iterable[int] = (1, 2, 3), learners: Iterable[int] = (), terms: Iterable[int] = (),
                 term: int = 0, vote: int = 0, commit: int = 0) -> MemoryStorage:
    """A storage holding entries with the given terms (indexes 1..n) and hard state."""
    st = MemoryStorage(ConfState(voters=frozenset(peers), learners=frozenset(learners)))
    ents = [Entry(term=t, index=i + 1) for i, t in enumerate(terms)]
    st.append(ents)
    if term or vote or commit:
        st.set_hard_state(HardState(term, vote, commit))
    return st


def new_raft(node_id: int, peers: Iterable[int] = (1, 2, 3), *, election: int = 10, heartbeat: int = 1,
             storage: MemoryStorage | None = None, seed: int | None = None, **cfg) -> Raft:
    st = storage if storage is not None else make_storage(peers)
    cfg.setdefault("pre_vote", False)
    cfg.setdefault("check_quorum", False)
    c = Config(id=node_id, election_tick=election, heartbeat_tick=heartbeat, **cfg)
    return Raft(c, st, random.Random(node_id if seed is None else seed))


def persist(r: Raft, read_states: list[ReadState] | None = None,
            applied: list[Entry] | None = None) -> list[Message]:
    """Handle every pending Ready of r; returns the messages it sends (in order).

    Read states and committed entries are appended to the given lists, if any."""
    out: list[Message] = []
    while r.has_ready():
        rd = r.ready()
        r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)  # type: ignore[attr-defined]
        out.extend(rd.messages)
        out.extend(rd.messages_after_persist)
        if read_states is not None:
            read_states.extend(rd.read_states)
        if applied is not None:
            applied.extend(rd.committed_entries)
        r.advance()
    return out


def read_messages(r: Raft) -> list[Message]:
    return persist(r)


def step_and_read(r: Raft, m: Message) -> list[Message]:
    r.step(m)
    return persist(r)


def tick_n(r: Raft, n: int) -> None:
    for _ in range(n):
        r.tick()


def elect(r: Raft) -> None:
    """Make a single-voter raft campaign and win."""
    r.campaign()
    persist(r)


def msg(t: MessageType, frm: int, to: int, **kw) -> Message:
    return Message(t, to=to, frm=frm, **kw)


def ents(*terms_from: tuple[int, int]) -> tuple[Entry, ...]:
    return tuple(Entry(term=t, index=i) for t, i in terms_from)


class Network:
    """Synchronous network of Raft nodes (None = a black hole that swallows messages)."""

    def __init__(self, *peers: Raft | None) -> None:
        self.peers: dict[int, Raft | None] = {i + 1: p for i, p in enumerate(peers)}
        # Per node: ReadStates and committed entries seen in its Readies.
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.peers}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.peers}
        self.cut: set[tuple[int, int]] = set()
        self.ignored: set[MessageType] = set()
        self.dropped_msgs: list[Message] = []
        self.delivered: list[Message] = []

    @classmethod
    def of(cls, n: int, *, pre_vote: bool = False, check_quorum: bool = False, election: int = 10,
           logs: dict[int, list[int]] | None = None, terms: dict[int, int] | None = None) -> Network:
        ids = tuple(range(1, n + 1))
        rafts = []
        for i in ids:
            st = make_storage(ids, terms=(logs or {}).get(i, ()), term=(terms or {}).get(i, 0))
            rafts.append(new_raft(i, ids, election=election, storage=st, pre_vote=pre_vote,
                                  check_quorum=check_quorum))
        return cls(*rafts)

    def __getitem__(self, i: int) -> Raft:
        r = self.peers[i]
        assert r is not None
        return r

    def send(self, *msgs: Message) -> None:
        queue = list(msgs)
        # Flush anything the nodes already queued (e.g. after a direct step()).
        for i in self.peers:
            queue.extend(self._persist(i))
        while queue:
            m = queue.pop(0)
            if self._filtered(m):
                self.dropped_msgs.append(m)
                continue
            r = self.peers.get(m.to)
            if r is None:
                self.dropped_msgs.append(m)
                continue
            self.delivered.append(m)
            r.step(m)
            queue.extend(self._persist(m.to))

    def _persist(self, i: int) -> list[Message]:
        r = self.peers.get(i)
        if r is None:
            return []
        return persist(r, self.read_states.setdefault(i, []), self.applied.setdefault(i, []))

    def _filtered(self, m: Message) -> bool:
        return (m.frm, m.to) in self.cut or m.type in self.ignored

    def campaign(self, i: int) -> None:
        self.send(msg(MT.HUP, i, i))

    def propose(self, i: int, data: bytes) -> int:
        idx = self[i].propose(data)
        self.send()
        return idx

    def heartbeat(self, i: int) -> None:
        self.send(msg(MT.BEAT, i, i))

    def cut_link(self, a: int, b: int) -> None:
        self.cut.add((a, b))
        self.cut.add((b, a))

    def isolate(self, a: int) -> None:
        for b in self.peers:
            if b != a:
                self.cut_link(a, b)

    def ignore(self, t: MessageType) -> None:
        self.ignored.add(t)

    def recover(self) -> None:
        self.cut.clear()
        self.ignored.clear()
