"""Scheduling keys: which tasks an owner may queue together and run on the same leases.

A lease is granted for one request, placed for one strategy and one
locality. Tasks that would be placed differently must not share a queue:
a SPREAD task behind a default one would run wherever the default one's
lease was placed, and a task whose arguments sit on node B would run on the
lease requested for a task whose arguments sit on node A.

Invariant: tasks with equal keys have the same shape and strategy, and the
same node holds the most of their arguments (or no node holds enough to
matter), so a lease placed for one is placed right for the other.
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Mapping
from typing import Any

from .placement import LOCALITY_MIN_BYTES, normalize_strategy
from .resources import Shape

__all__ = ["LOCALITY_MIN_BYTES", "lease_target", "preferred_node", "scheduling_key"]


def preferred_node(locality: Mapping[str, int]) -> str | None:
    """The node holding the most argument bytes, if it holds at least ``LOCALITY_MIN_BYTES``.

    Ties go to the smallest node id, so that the same arguments give the same key.
    None when no node holds that much: small arguments are cheap to fetch, and
    splitting queues for them would only spread tasks over more leases.
    """
    best = None
    for node, size in locality.items():
        if size >= LOCALITY_MIN_BYTES and (best is None or (-size, node) < (-locality[best], best)):
            best = node
    return best


def scheduling_key(shape: Shape, strategy: Any, locality: Mapping[str, int]) -> tuple[Hashable, ...]:
    """``(shape, strategy, preferred node)``: tasks with equal keys may share a queue and leases.

    ``shape`` must be normalized (``resources.normalize_shape``); ``strategy``
    is the wire form. The preferred node only counts for the default strategy:
    SPREAD and node affinity ignore locality when placing, so it would split
    their queues for nothing.
    """
    strategy = normalize_strategy(strategy)
    node = preferred_node(locality) if strategy is None else None
    return (tuple(shape), strategy, node)


def lease_target(key: tuple, here: str, alive: Container[str]) -> str:
    """The node whose daemon an owner asks for a lease of ``key`` (Ray's locality-aware lease policy).

    The owner knows where its tasks' arguments are and what they asked for, so
    it asks the right daemon first instead of its own, which would only answer
    "ask that one" (a spillback round trip): a node named by affinity (a
    ``node:<id>`` resource or a ``("node", id, soft)`` strategy), else the
    key's preferred node by argument bytes, when that node is ``alive``; in
    every other case ``here``, whose daemon places the request (SPREAD,
    placement groups, load).
    """
    shape, strategy, preferred = key[:3]  # a fourth entry, a pip environment, does not place
    for name, _ in shape:
        if name.startswith("node:"):
            node = name[len("node:"):]
            return node if node in alive else here
    if isinstance(strategy, tuple) and strategy[0] == "node":
        return strategy[1] if strategy[1] in alive else here
    if preferred is not None and preferred in alive:
        return preferred
    return here
