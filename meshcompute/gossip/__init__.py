"""SWIM membership and failure detection with Lifeguard, as a pure protocol core.

The protocol engine (:class:`Swim`) performs no I/O: an I/O shell feeds it
received packets and clock readings and sends the packets it returns.  See
docs/gossip.md for the protocol specification.

Typical shell loop::

    swim = Swim(node_id, "10.0.0.5:7946", rng=random.Random(), config=GossipConfig.lan(),
                delegate=my_resource_view)
    send_all(swim.join(["10.0.0.1:7946"], time.monotonic()))
    while running:
        data, src = recv(timeout=swim.next_deadline() - time.monotonic())
        now = time.monotonic()
        out = swim.on_datagram(src, data, now) if data else swim.on_tick(now)
        for dest, msg in out.packets:
            sock.send(dest, encode(msg))
        for ev in out.events:
            handle(ev)
"""

from .awareness import Awareness, clamp_score, scale_timeout
from .broadcast import BroadcastQueue, retransmit_limit
from .config import ConfigError, GossipConfig
from .member import EventKind, MemberEvent, MemberInfo, MemberState
from .messages import (
    Ack,
    Alive,
    Compound,
    Dead,
    Leave,
    MalformedPacket,
    Message,
    Meta,
    MsgType,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    decode,
    encode,
)
from .sim import SimNetwork, SimNode
from .suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout
from .swim import (
    MemoryMetaDelegate,
    MetaDelegate,
    MetaTooLarge,
    NullMetaDelegate,
    Output,
    Swim,
    SwimStats,
)

__all__ = [
    "Ack",
    "Alive",
    "Awareness",
    "BroadcastQueue",
    "Compound",
    "ConfigError",
    "Dead",
    "EventKind",
    "GossipConfig",
    "Leave",
    "MalformedPacket",
    "MemberEvent",
    "MemberInfo",
    "MemberState",
    "MemoryMetaDelegate",
    "Message",
    "Meta",
    "MetaDelegate",
    "MetaTooLarge",
    "MsgType",
    "Nack",
    "NullMetaDelegate",
    "Output",
    "Ping",
    "PingReq",
    "PushPull",
    "PushPullEntry",
    "SimNetwork",
    "SimNode",
    "Suspect",
    "Suspicion",
    "Swim",
    "SwimStats",
    "clamp_score",
    "decode",
    "encode",
    "remaining_suspicion_time",
    "retransmit_limit",
    "scale_timeout",
    "suspicion_timeout",
]
