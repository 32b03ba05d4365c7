"""Which mesh each standing node of this machine belongs to.

Nodes of one mesh share its token (each keeps it, 0600, in its session dir), so
the nodes of this machine group by token.  A mesh is named by its key's
fingerprint (``MeshKeys.fingerprint``: a hash of the public key, safe to print);
it costs one key derivation (~0.1 s) per mesh, so it is worked out only when the
machine runs more than one mesh and a command must say which it talks to.
"""

from __future__ import annotations

import os


def _token_of(info: dict) -> str | None:
    try:
        with open(os.path.join(info["session_dir"], "token")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def group_by_mesh(nodes: list[dict]) -> list[list[dict]]:
    """The nodes grouped by the mesh they belong to, in the order of ``nodes``."""
    groups: dict[str | None, list[dict]] = {}
    for info in nodes:
        groups.setdefault(_token_of(info), []).append(info)
    return list(groups.values())


def mesh_name(info: dict) -> str:
    """A short, printable name of a node's mesh (its key's fingerprint)."""
    token = _token_of(info)
    if token is None:
        return "(no mesh: a local node)"
    from ..wire.auth import MeshKeys

    return MeshKeys.from_token(token).fingerprint


def same_mesh(a: dict, b: dict) -> bool:
    return _token_of(a) == _token_of(b)
