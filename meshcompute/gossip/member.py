"""Member records, member states and membership events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .suspicion import Suspicion

__all__ = ["MemberState", "EventKind", "Member", "MemberInfo", "MemberEvent"]


class MemberState(IntEnum):
    """State of a member as seen by one observer. Values go on the wire: ONLY APPEND."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    def describe(self) -> str:
        return self.name.lower()


class EventKind(Enum):
    """Membership events reported in ``Output.events``."""

    JOINED = "joined"  # a member we did not know (or had forgotten) is alive
    SUSPECT = "suspect"  # an alive member is now suspected
    ALIVE = "alive"  # a suspect/dead/left member is alive again (refuted or rejoined)
    DEAD = "dead"  # suspicion expired (or a DEAD rumour arrived)
    LEFT = "left"  # the member announced a graceful leave
    META_UPDATED = "meta-updated"  # newer resource-view version merged
    UPDATED = "updated"  # an alive member changed its address


@dataclass(slots=True)
class Member:
    """The mutable record an observer keeps per member (internal to Swim)."""

    node: str
    addr: str  # "host:port"
    incarnation: int
    state: MemberState
    state_change: float  # seconds, observer's clock, when `state` was entered
    meta_version: int = 0  # 0 = no meta known
    meta: bytes = b""
    suspicion: Suspicion | None = None

    def info(self) -> MemberInfo:
        return MemberInfo(
            self.node,
            self.addr,
            self.incarnation,
            self.state,
            self.state_change,
            self.meta_version,
            self.meta,
        )


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Immutable snapshot of a member record, safe to hand to the application."""

    node: str
    addr: str
    incarnation: int
    state: MemberState
    state_change: float
    meta_version: int
    meta: bytes


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """One membership change observed by the local node."""

    kind: EventKind
    node: str
    addr: str
    incarnation: int
    time: float
    meta_version: int = 0

    def describe(self) -> str:
        return f"{self.kind.value} {self.node}@{self.addr} inc={self.incarnation} meta=v{self.meta_version}"
