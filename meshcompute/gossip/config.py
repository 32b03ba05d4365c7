"""Tunables of the SWIM/Lifeguard membership layer.

All durations are float **seconds** on the caller's monotonic clock (the same
clock whose readings are passed as ``now`` to :class:`~meshcompute.gossip.swim.Swim`).

There is one base profile (the dataclass defaults, which are the LAN profile)
and two derived ones, :meth:`GossipConfig.local` and :meth:`GossipConfig.wan`.

Failure-detection timing (N = number of live members, P = probe_interval)::

    suspicion_min(N) = suspicion_mult * max(1, log10(N)) * P
    suspicion_max(N) = suspicion_max_timeout_mult * suspicion_min(N)

    T_detect(N) <=  T_first_probe        # until some member probes the dead node
                  + P                    # that probe (direct + indirect) fails
                  + suspicion_max(N)     # worst case: no independent confirmations
                  + T_spread(N)          # the DEAD rumour reaches everyone

Every live member probes each other member once per pass over its shuffled
list, so with N-1 live probers the dead node is probed about once per period:
``T_first_probe`` is about one period.  ``T_spread`` is about
``ceil(log_{gossip_nodes+1}(N)) + 1`` gossip intervals.

LAN, N <= 10:  0.2 + 0.2 + 3*(2*1*0.2) + 3*0.1 = 0.2 + 0.2 + 1.2 + 0.3 = 1.9 s
LOCAL, N <= 10: 0.2 + 0.2 + 2*(2*1*0.2) + 3*0.05 = 0.2 + 0.2 + 0.8 + 0.15 = 1.35 s

Both are under the 2 s target for a SIGKILLed daemon.  With N >= 5 the
Lifeguard confirmations from the other probers shrink the suspicion towards
``suspicion_min`` (0.4 s), so measured figures are well below the bound (see
docs/gossip.md).  ``expected_detection_time(n)`` evaluates the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

__all__ = ["GossipConfig", "ConfigError"]


class ConfigError(ValueError):
    """A GossipConfig field is out of range."""


@dataclass(frozen=True)
class GossipConfig:
    # --- probing (SWIM failure detector) ---------------------------------
    # s. Period between two probes started by this node (one member per period,
    # round-robin over a shuffled list). Smaller = faster detection, more traffic
    # (each node sends ~2 packets per period when healthy).
    probe_interval: float = 0.2
    # s. How long to wait for a direct ack before asking `indirect_checks` peers to
    # probe on our behalf. Must be < probe_interval so the indirect phase has time;
    # a LAN RTT is well under 1 ms, 100 ms leaves room for a busy Python process.
    probe_timeout: float = 0.1
    # count. Peers asked to ping-req a target that missed its direct ack. Three
    # independent paths make a false suspicion under 5% loss ~1e-3 per probe.
    indirect_checks: int = 3

    # --- suspicion (Lifeguard) --------------------------------------------
    # factor. suspicion_min = suspicion_mult * max(1, log10(N)) * probe_interval.
    # 2 => 0.4 s for N <= 10: the floor after enough independent confirmations.
    suspicion_mult: int = 2
    # factor. suspicion_max = this * suspicion_min; a suspicion nobody else confirms
    # runs this long, giving a live-but-slow node time to hear of it and refute.
    suspicion_max_timeout_mult: int = 3
    # count. Independent confirmations (k) that shrink the timeout from max to min:
    # timeout = max(min, max - (max-min)*log(n+1)/log(k+1)). Disabled (start at min)
    # when fewer than k+2 members are alive, as in memberlist.
    suspicion_max_confirmations: int = 3
    # factor. Local health awareness score ranges over [0, this-1]; probe timeout
    # and interval are multiplied by (score + 1). 8 bounds slowdown to 8x.
    awareness_max_multiplier: int = 8

    # --- dissemination -------------------------------------------------------
    # s. Period of the dedicated gossip round (in addition to piggybacking on
    # probes). Half the probe interval: two gossip rounds per protocol period.
    gossip_interval: float = 0.1
    # count. Random members each gossip round sends queued rumours to (fanout).
    gossip_nodes: int = 3
    # s. Dead members remain gossip targets this long so a falsely declared node
    # (e.g. after a short partition) hears about it and refutes.
    gossip_to_the_dead_time: float = 10.0
    # factor. A rumour is retransmitted retransmit_mult * ceil(log10(N+1)) times by
    # every node that learns it (12 at N=10..99, 24 at N=1000). A given member then
    # receives it about limit*(1-loss) times, so it misses it with probability
    # ~exp(-limit*(1-loss)); memberlist's 4 left ~1e-5 per (refutation, member)
    # pair at 10% loss -- enough for a rare false DEAD -- 6 makes it ~1e-8.
    retransmit_mult: int = 6
    # bytes. Upper bound on one gossip/probe packet including piggybacked rumours.
    # 1400 fits one Ethernet frame should a shell use datagrams.
    packet_budget_bytes: int = 1400

    # --- anti-entropy --------------------------------------------------------
    # s. Full state exchange with one random live member (scaled up for clusters
    # above push_pull_scale_threshold). Repairs anything gossip missed.
    push_pull_interval: float = 10.0
    # count. Above this many live members the push-pull interval is multiplied by
    # ceil(log2(N) - log2(threshold)) + 1 to bound O(N) state transfers.
    push_pull_scale_threshold: int = 32
    # s. Period of a push-pull attempt with one random *dead* member (not left):
    # this is what heals a partition after each side declared the other dead.
    reconnect_interval: float = 2.0
    # s. Dead/left members are forgotten (tombstone removed) after this long;
    # until then stale ALIVE rumours about them cannot resurrect them.
    dead_node_reclaim_time: float = 60.0
    # s. While a node that was given seeds knows no other live member, it re-sends
    # its join push-pull to the seeds this often.
    join_retry_interval: float = 1.0

    # --- application state (resource view) ----------------------------------
    # bytes. Largest accepted local/remote meta blob (resource view). Larger remote
    # blobs are dropped; a larger local blob raises MetaTooLarge.
    meta_max_bytes: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ profiles
    @classmethod
    def lan(cls, **overrides: object) -> GossipConfig:
        """The base profile: one data centre / LAN, RTT < 1 ms."""
        return replace(cls(), **overrides)  # type: ignore[arg-type]

    @classmethod
    def local(cls, **overrides: object) -> GossipConfig:
        """Processes on one host (loopback): tighter timeouts and faster anti-entropy."""
        base = cls()
        return replace(
            base,
            probe_timeout=0.05,  # loopback RTT ~50 us; 50 ms still absorbs GC pauses
            suspicion_max_timeout_mult=2,  # max suspicion 0.8 s at N <= 10
            gossip_interval=0.05,  # four gossip rounds per period; packets are free
            packet_budget_bytes=8192,  # no MTU on loopback
            gossip_to_the_dead_time=5.0,
            push_pull_interval=5.0,
            reconnect_interval=1.0,
            dead_node_reclaim_time=30.0,
            join_retry_interval=0.5,
            **overrides,  # type: ignore[arg-type]
        )

    @classmethod
    def wan(cls, **overrides: object) -> GossipConfig:
        """Members spread over regions: RTT up to ~300 ms, lossier paths."""
        base = cls()
        return replace(
            base,
            probe_interval=3.0,  # several RTTs per period
            probe_timeout=1.5,  # ~5 RTTs
            indirect_checks=4,
            suspicion_mult=4,  # min 12 s at N <= 10
            suspicion_max_timeout_mult=4,
            gossip_interval=0.5,
            gossip_nodes=4,
            gossip_to_the_dead_time=60.0,
            push_pull_interval=60.0,
            reconnect_interval=30.0,
            dead_node_reclaim_time=600.0,
            join_retry_interval=5.0,
            **overrides,  # type: ignore[arg-type]
        )

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError if any field is out of range or fields are inconsistent."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{f.name} must be a number, got {v!r}")
            if not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{f.name} must be finite and > 0, got {v!r}")
        ints = (
            "indirect_checks",
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "suspicion_max_confirmations",
            "awareness_max_multiplier",
            "gossip_nodes",
            "retransmit_mult",
            "packet_budget_bytes",
            "push_pull_scale_threshold",
            "meta_max_bytes",
        )
        for name in ints:
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be an int")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("probe_timeout must be < probe_interval (room for indirect probes)")
        if self.suspicion_max_timeout_mult < 1:
            raise ConfigError("suspicion_max_timeout_mult must be >= 1")
        if self.packet_budget_bytes < 256:
            raise ConfigError("packet_budget_bytes must be >= 256")
        if self.meta_max_bytes > 60_000:
            raise ConfigError("meta_max_bytes must be <= 60000 (wire limit 65535)")
        if self.gossip_to_the_dead_time > self.dead_node_reclaim_time:
            raise ConfigError("gossip_to_the_dead_time must be <= dead_node_reclaim_time")

    # ------------------------------------------------------------- derived math
    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        """(min, max) suspicion timeout in seconds for a cluster of n live members."""
        from .suspicion import suspicion_timeout

        lo = suspicion_timeout(self.suspicion_mult, n, self.probe_interval)
        return lo, lo * self.suspicion_max_timeout_mult

    def retransmit_limit(self, n: int) -> int:
        """How many times each node retransmits one rumour in an n-member cluster."""
        from .broadcast import retransmit_limit

        return retransmit_limit(self.retransmit_mult, n)

    def push_pull_period(self, n: int) -> float:
        """Push-pull interval in seconds for a cluster of n live members."""
        if n <= self.push_pull_scale_threshold:
            return self.push_pull_interval
        mult = math.ceil(math.log2(n) - math.log2(self.push_pull_scale_threshold)) + 1
        return mult * self.push_pull_interval

    def expected_detection_time(self, n: int) -> float:
        """The module-docstring bound on crash -> dead-everywhere, in seconds, for n members."""
        _, smax = self.suspicion_bounds(n)
        spread_rounds = math.ceil(math.log(max(n, 2)) / math.log(self.gossip_nodes + 1)) + 1
        return self.probe_interval * 2 + smax + spread_rounds * self.gossip_interval
