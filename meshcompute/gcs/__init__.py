"""The control store (GCS): cluster metadata in a Raft-replicated log.

* :mod:`.state` -- the state machine: nodes, actors, named actors, jobs,
  placement groups and the user's KV; pure and deterministic.
* :mod:`.placement` -- where a placement group's bundles go (pure).
* :mod:`.voters` -- which nodes vote, and when a dead voter is replaced (pure).
* :mod:`.server` -- one node's Raft member plus request routing (forwarding to
  the leader, retries, ReadIndex reads); no sockets or clocks of its own.
* :mod:`.codec` -- Raft messages as plain tuples for the wire.

The daemon's shell is meshcompute/gcs/shell.py; docs/gcs.md describes
the whole.
"""

from .placement import place_bundles
from .server import GcsServer, NodeView, raft_id_of
from .state import GcsState
from .voters import MemberView, plan

__all__ = ["GcsServer", "GcsState", "MemberView", "NodeView", "place_bundles", "plan", "raft_id_of"]
