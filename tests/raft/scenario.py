"""Interpreter for the scenario files in tests/raft/testdata (a small command language).

File format (modelled on cockroachdb/datadriven, as used by etcd-io/raft)::

    # comments and blank lines between cases are kept as they are
    <command> [args...]
    ----
    <expected output, one or more lines, no blank lines>

Each command runs against a manual-mode SimNetwork (messages wait in a queue
until delivered), and its output -- Ready contents, delivered messages (their
one-line ``describe()``), log lines of the nodes, state dumps -- is compared
with the expected block. ``pytest --rewrite`` (or ``RAFT_REWRITE=1``) rewrites
the expected blocks with the actual output.

Commands (ids are node ids):

    add-nodes N [voters=1,2,3] [learners=4] [pre-vote=true] [check-quorum=true]
              [election=10] [heartbeat=1] [max-inflight=256] [max-size=1048576]
        add N nodes; with voters= they are founding members of that
        configuration, without they start empty (nodes joining later)
    campaign ID                      start an election now
    tick ID [N] | tick-election ID | tick-heartbeat ID
    process-ready ID...              handle one Ready per node (persist, send, apply)
    deliver-msgs [ID...] [drop=ID,...]  deliver (or drop) the queued messages to IDs
    stabilize [ID...]                process Readies and deliver until quiescent
    propose ID put k=v | get k | cas k old new
    propose-conf-change ID (add=N | learner=N | remove=N)
    read-index ID CTX
    transfer-leadership FROM TO
    partition A B | isolate ID | heal
    crash ID | restart ID            lose volatile state / restart from storage
    compact ID                       snapshot the state machine at the applied index
    status [ID...] | raft-log ID | kv ID... | progress ID
    log-level none|info              show or hide the nodes' log lines (INFO ...)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from meshcompute.raft import ConfChange, ConfChangeType, Message, Raft, RaftError, Ready
from meshcompute.raft.sim import FaultProfile, SimNetwork, encode_command

__all__ = ["Case", "parse_file", "render_file", "ScenarioEnv"]


@dataclass
class Case:
    line_no: int
    command: str
    expected: str
    # Comment / blank lines that precede the case in the file (kept on rewrite).
    preamble: list[str]


def parse_file(text: str) -> tuple[list[Case], list[str]]:
    """Returns (cases, trailing lines)."""
    lines = text.split("\n")
    cases: list[Case] = []
    pre: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            pre.append(line)
            i += 1
            continue
        cmd_line = i + 1
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {cmd_line}: expected '----' after command {line!r}")
        j = i + 2
        out: list[str] = []
        while j < len(lines) and lines[j].strip():
            out.append(lines[j])
            j += 1
        cases.append(Case(cmd_line, line, "\n".join(out), pre))
        pre = []
        i = j
    return cases, pre


def render_file(cases: list[Case], trailing: list[str]) -> str:
    out: list[str] = []
    for c in cases:
        out.extend(c.preamble)
        out.append(c.command)
        out.append("----")
        out.extend(c.expected.split("\n"))
    out.extend(trailing)
    text = "\n".join(out)
    return text if text.endswith("\n") else text + "\n"


def _indent(text: str, n: int = 2) -> list[str]:
    return [" " * n + line for line in text.split("\n") if line]


class ScenarioEnv:
    """Executes scenario commands against a manual-mode SimNetwork."""

    def __init__(self, seed: int = 0) -> None:
        self.out: list[str] = []
        self.show_log = True
        self.net = SimNetwork(seed, logger=self._log, faults=FaultProfile(compact_every=0))
        self.net.on_drop = self._on_drop
        self._commands: dict[str, Callable[[list[str], dict[str, str]], None]] = {
            "add-nodes": self._add_nodes,
            "campaign": self._campaign,
            "tick": self._tick,
            "tick-election": self._tick_election,
            "tick-heartbeat": self._tick_heartbeat,
            "process-ready": self._process_ready,
            "deliver-msgs": self._deliver_msgs,
            "stabilize": self._stabilize,
            "propose": self._propose,
            "propose-conf-change": self._propose_conf_change,
            "read-index": self._read_index,
            "transfer-leadership": self._transfer,
            "partition": self._partition,
            "isolate": self._isolate,
            "heal": self._heal,
            "crash": self._crash,
            "restart": self._restart,
            "compact": self._compact,
            "status": self._status,
            "raft-log": self._raft_log,
            "kv": self._kv,
            "progress": self._progress,
            "log-level": self._log_level,
        }

    # ------------------------------------------------------------------ plumbing
    def _log(self, line: str) -> None:
        if self.show_log:
            self.out.append(f"INFO {line}")

    def _on_drop(self, m: Message, why: str) -> None:
        self.out.append(f"  dropped ({why}): {m.describe()}")

    def run(self, command: str) -> str:
        self.out = []
        words = command.split()
        name, rest = words[0], words[1:]
        args = [w for w in rest if "=" not in w or name == "propose"]
        kw = dict(w.split("=", 1) for w in rest if "=" in w and name != "propose")
        fn = self._commands.get(name)
        if fn is None:
            raise ValueError(f"unknown command {name!r}")
        try:
            fn(args, kw)
        except RaftError as e:
            self.out.append(f"error: {type(e).__name__}: {e}")
        return "\n".join(self.out) if self.out else "ok"

    def _raft(self, node_id: str | int) -> Raft:
        node = self.net.nodes[int(node_id)]
        if node.raft is None:
            raise ValueError(f"node {node_id} is down")
        return node.raft

    def _ids(self, args: list[str]) -> list[int]:
        return [int(a) for a in args] if args else sorted(self.net.nodes)

    # ------------------------------------------------------------------ commands
    def _add_nodes(self, args: list[str], kw: dict[str, str]) -> None:
        n = int(args[0])
        first = max(self.net.nodes, default=0) + 1
        voters = tuple(int(x) for x in kw["voters"].split(",")) if "voters" in kw else ()
        learners = tuple(int(x) for x in kw["learners"].split(",")) if "learners" in kw else ()
        cfg = {}
        if "pre-vote" in kw:
            cfg["pre_vote"] = kw["pre-vote"] == "true"
        if "check-quorum" in kw:
            cfg["check_quorum"] = kw["check-quorum"] == "true"
        if "election" in kw:
            cfg["election_tick"] = int(kw["election"])
        if "heartbeat" in kw:
            cfg["heartbeat_tick"] = int(kw["heartbeat"])
        if "max-inflight" in kw:
            cfg["max_inflight_msgs"] = int(kw["max-inflight"])
        if "max-size" in kw:
            cfg["max_size_per_msg"] = int(kw["max-size"])
        for i in range(first, first + n):
            self.net.add_node(i, voters=voters, learners=learners, **cfg)

    def _campaign(self, args: list[str], kw: dict[str, str]) -> None:
        self._raft(args[0]).campaign()

    def _tick(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            r.tick()

    def _tick_election(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        for _ in range(r.cfg.election_tick):
            r.tick()

    def _tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        for _ in range(r.cfg.heartbeat_tick):
            r.tick()

    def _handle_ready(self, node_id: int) -> bool:
        captured: list[Ready] = []
        dropped: list[tuple[Message, str]] = []
        self.net.on_ready = lambda _n, rd: captured.append(rd)
        self.net.on_drop = lambda m, why: dropped.append((m, why))
        mark = len(self.out)
        try:
            rd = self.net.process_ready(node_id)
        finally:
            self.net.on_ready = None
            self.net.on_drop = self._on_drop
        if rd is None:
            return False
        logs = self.out[mark:]
        del self.out[mark:]
        self.out.append(f"> {node_id} handling Ready")
        self.out.extend("  " + line for line in logs)
        lines = _indent(captured[0].describe(), 2)
        # Mark the messages the (partitioned) network swallowed on the way out.
        for m, why in dropped:
            want = "    " + m.describe()
            for k, line in enumerate(lines):
                if line == want:
                    lines[k] = f"{line} [dropped: {why}]"
                    break
        self.out.extend(lines)
        return True

    def _process_ready(self, args: list[str], kw: dict[str, str]) -> None:
        for i in self._ids(args):
            if not self._handle_ready(i):
                self.out.append(f"> {i} has no Ready")

    def _deliver(self, to: set[int] | None, drop: set[int]) -> bool:
        msgs = self.net.take_messages(to)
        if not msgs:
            return False
        by_dst: dict[int, list[Message]] = {}
        for m in msgs:
            by_dst.setdefault(m.to, []).append(m)
        for dst in sorted(by_dst):
            if dst in drop:
                self.out.append(f"> {dst} dropping messages")
                self.out.extend("  " + m.describe() for m in by_dst[dst])
                continue
            self.out.append(f"> {dst} receiving messages")
            for m in by_dst[dst]:
                mark = len(self.out)
                self.out.append("  " + m.describe())

                def dropped(_m: Message, why: str, mark: int = mark) -> None:
                    self.out[mark] += f" [dropped: {why}]"

                self.net.on_drop = dropped
                try:
                    self.net.deliver(m)
                finally:
                    self.net.on_drop = self._on_drop
                # indent the node's log lines under the message
                self.out[mark + 1 :] = ["  " + line if line.startswith("INFO") else line for line in self.out[mark + 1 :]]
        return True

    def _deliver_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        to = {int(a) for a in args} if args else None
        drop = {int(x) for x in kw.get("drop", "").split(",") if x}
        if drop and to is None:
            to = None
        self._deliver(to, drop)

    def _stabilize(self, args: list[str], kw: dict[str, str]) -> None:
        ids = self._ids(args)
        for _ in range(1000):
            progressed = False
            for i in ids:
                if self.net.nodes[i].raft is not None:
                    while self._handle_ready(i):
                        progressed = True
            if self._deliver(set(ids), set()):
                progressed = True
            if not progressed:
                return
        raise RuntimeError("stabilize did not converge")

    def _propose(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        words = args[1:]
        kind = words[0]
        if kind == "put":
            k, _, v = words[1].partition("=")
            op = ("put", k, v)
        elif kind == "get":
            op = ("get", words[1], None)
        elif kind == "cas":
            op = ("cas", words[1], (None if words[2] == "_" else words[2], words[3]))
        else:
            raise ValueError(f"unknown KV command {kind!r}")
        idx = r.propose(encode_command(op))
        self.out.append(f"proposed at index {idx}")

    def _propose_conf_change(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        kinds = {"add": ConfChangeType.ADD_NODE, "learner": ConfChangeType.ADD_LEARNER,
                 "remove": ConfChangeType.REMOVE_NODE}
        (k, v), = kw.items()
        idx = r.propose_conf_change(ConfChange(kinds[k], int(v)))
        self.out.append(f"proposed at index {idx}")

    def _read_index(self, args: list[str], kw: dict[str, str]) -> None:
        self._raft(args[0]).read_index(args[1].encode())

    def _transfer(self, args: list[str], kw: dict[str, str]) -> None:
        self._raft(args[0]).transfer_leadership(int(args[1]))

    def _partition(self, args: list[str], kw: dict[str, str]) -> None:
        self.net.partition(int(args[0]), int(args[1]))

    def _isolate(self, args: list[str], kw: dict[str, str]) -> None:
        self.net.isolate(int(args[0]))

    def _heal(self, args: list[str], kw: dict[str, str]) -> None:
        self.net.heal()

    def _crash(self, args: list[str], kw: dict[str, str]) -> None:
        self.net.crash(int(args[0]))

    def _restart(self, args: list[str], kw: dict[str, str]) -> None:
        self.net.restart(int(args[0]))

    def _compact(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.net.nodes[int(args[0])]
        r = self._raft(args[0])
        snap = r.compact(node.kv.applied, node.kv.snapshot())
        self.out.append(f"compacted to index {snap.index} (term {snap.term})")

    def _status(self, args: list[str], kw: dict[str, str]) -> None:
        for i in self._ids(args):
            node = self.net.nodes[i]
            if node.raft is None:
                self.out.append(f"{i}: down")
            else:
                self.out.append(node.raft.status().describe())

    def _raft_log(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        first = r.log.first_index()
        if first > 1:
            self.out.append(f"snapshot {r.log.snapshot().describe()}")
        ents = r.log.all_entries()
        self.out.extend(e.describe() for e in ents)
        if not ents:
            self.out.append("log is empty")

    def _kv(self, args: list[str], kw: dict[str, str]) -> None:
        for i in self._ids(args):
            node = self.net.nodes[i]
            self.out.append(f"{i}: applied={node.kv.applied} {node.kv.describe()}")

    def _progress(self, args: list[str], kw: dict[str, str]) -> None:
        r = self._raft(args[0])
        prs = r.status().progress
        if not prs:
            self.out.append(f"{r.id} is not the leader")
        for i, p in prs.items():
            self.out.append(f"{i}: {p}")

    def _log_level(self, args: list[str], kw: dict[str, str]) -> None:
        self.show_log = args[0] != "none"


def run_file(path: str, rewrite: bool = False) -> list[tuple[Case, str]]:
    """Run every case of a scenario file; returns (case, actual) for mismatches.

    With ``rewrite`` the file is rewritten with the actual outputs."""
    with open(path) as f:
        cases, trailing = parse_file(f.read())
    env = ScenarioEnv()
    mismatches = []
    for c in cases:
        actual = env.run(c.command)
        if actual != c.expected:
            mismatches.append((c, actual))
            if rewrite:
                c.expected = actual
    if rewrite and mismatches:
        with open(path + ".tmp", "w") as f:
            f.write(render_file(cases, trailing))
        os.replace(path + ".tmp", path)
    return mismatches
