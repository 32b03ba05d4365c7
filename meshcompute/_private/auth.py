"""CURVE keys derived from the mesh token.

Every member of a mesh holds the same CURVE key pair, derived from the token: it
is the server key of every TCP inbox and the client key of every TCP outbox.  A
peer without the token cannot know the server's public key, so it cannot complete
a CurveZMQ handshake, and nothing it sends reaches the application (let alone an
unpickler).
"""

from __future__ import annotations

import hashlib
import os
import secrets

import zmq
import zmq.utils.z85


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(session_dir: str, token: str) -> str:
    path = os.path.join(session_dir, "token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


class MeshKeys:
    """The mesh's CURVE key pair (Z85 text), derived from its token."""

    def __init__(self, public: bytes, secret: bytes) -> None:
        self.public = public
        self.secret = secret

    @classmethod
    def from_token(cls, token: str) -> MeshKeys:
        # blake2b with a personalisation string is a keyed, domain-separated KDF;
        # the token already carries 256 bits of randomness when generated here.
        raw = hashlib.blake2b(token.encode(), digest_size=32, person=b"meshcompute-cv1").digest()
        secret = zmq.utils.z85.encode(raw)
        return cls(zmq.curve_public(secret), secret)

    def secure_server(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def secure_client(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public
