"""Mesh membership: one token, one CURVE key pair, and a gate on every TCP socket.

Whoever holds the mesh token is a member; nobody else may open a ZeroMQ session
with a node.  Every process of a mesh derives the same CURVE key pair from the
token (:meth:`MeshKeys.from_token`).  That one pair is the *server* key of each
process's ROUTER inbox and the *client* key of each of its DEALER outboxes, so:

* a peer that does not hold the token cannot even encrypt a valid HELLO to us (it
  does not know our public key): the handshake fails with a cryptographic error;
* a peer that somehow learned the public key but not the secret is refused by the
  ZAP handler (:class:`MeshAuthenticator`), which accepts exactly one client key,
  the mesh's own, and CURVE makes the client prove it holds the matching secret.

Usage, on the thread that owns the sockets::

    keys = MeshKeys.from_token(token)
    auth = MeshAuthenticator(ctx, keys).start()     # one per zmq.Context
    inbox = ctx.socket(zmq.ROUTER)
    secure_server(inbox, keys)                      # before bind()
    auth.watch(inbox)                               # optional: log/count failed handshakes
    inbox.bind("tcp://0.0.0.0:7077")
    out = ctx.socket(zmq.DEALER)
    secure_client(out, keys)                        # before connect()
    out.connect("tcp://10.0.0.2:7077")
    ...
    (close the sockets)
    auth.stop()

Server sockets also set ``ZAP_ENFORCE_DOMAIN``: if the authenticator is not running
(never started, or stopped) every handshake on them fails, rather than libzmq's
default of accepting any client that knows the server key.

Refusals are logged on the ``meshcompute.auth`` logger, at most ``log_limit``
lines per ``log_window`` seconds (the rest are counted and summarised), so a flood
of bad connections cannot fill a disk.  Counters (:meth:`MeshAuthenticator.counts`,
:meth:`MeshAuthenticator.wait_for`) let tests observe refusals.

Tokens are read from ``--token`` / ``MESH_TOKEN`` (:func:`token_from_env_or_arg`)
or a 0600 file in the session directory (:func:`load_or_create_token`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import queue
import secrets
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import zmq
from zmq.utils import z85

__all__ = [
    "MESH_ZAP_DOMAIN",
    "MIN_TOKEN_LENGTH",
    "MeshAuthenticator",
    "MeshKeys",
    "generate_token",
    "load_or_create_token",
    "secure_client",
    "secure_server",
    "token_from_env_or_arg",
]

log = logging.getLogger("meshcompute.auth")

MESH_ZAP_DOMAIN = "meshcompute"
MIN_TOKEN_LENGTH = 16
TOKEN_ENV = "MESH_TOKEN"
TOKEN_FILE = "token"

# scrypt parameters: 16 MiB and ~0.1 s per derivation on one core, paid once per
# process (the result is cached).  Changing any of these changes every key: bump
# the version in the salt at the same time.
_KDF_SALT = b"meshcompute/curve25519/v1"
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1


# --------------------------------------------------------------------------- tokens


def generate_token() -> str:
    """A fresh mesh token: 32 random bytes, urlsafe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_from_env_or_arg(arg: str | None) -> str | None:
    """The token given on the command line (``--token``), else ``$MESH_TOKEN``, else None.

    Surrounding whitespace is stripped; an empty value counts as absent.
    """
    for value in (arg, os.environ.get(TOKEN_ENV)):
        if value is not None and value.strip():
            return value.strip()
    return None


def load_or_create_token(session_dir: str | os.PathLike[str]) -> str:
    """The token stored in ``<session_dir>/token``, created (mode 0600) if absent.

    The directory is created 0700 if missing.  An existing file is refused with a
    ``PermissionError`` when it is readable or writable by group or others, owned by
    another user, or not a regular file (symlinks are not followed); a
    ``ValueError`` when its content is not a usable token.  Creation is atomic: two
    processes racing here end up with the same token.
    """
    directory = Path(session_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / TOKEN_FILE
    try:
        return _read_token_file(path)
    except FileNotFoundError:
        pass
    token = generate_token()
    tmp = directory / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        return _read_token_file(path)
    finally:
        os.unlink(tmp)
    return token


def _read_token_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise PermissionError(f"cannot open mesh token file {path}: {exc.strerror} "
                              "(it must be a regular file, not a symlink)") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"mesh token file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PermissionError(f"mesh token file {path} is owned by uid {st.st_uid}, "
                                  f"not by this user (uid {os.geteuid()}); refusing to use it")
        if st.st_mode & 0o077:
            raise PermissionError(
                f"mesh token file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it is accessible "
                f"to group or others, so the token must be considered leaked; refusing to use it. "
                f"Generate a new token, or if you are sure it did not leak: chmod 600 {path}")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = data.decode("utf-8", "replace").strip()
    _check_token(token, f"mesh token file {path}")
    return token


def _check_token(token: object, where: str = "mesh token") -> None:
    if not isinstance(token, str):
        raise TypeError(f"{where}: a token is a str, not {type(token).__name__}")
    if len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{where}: a token needs at least {MIN_TOKEN_LENGTH} characters "
                         "(use generate_token() / `mesh start`, which make 43)")


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, repr=False)
class MeshKeys:
    """The CURVE key pair of a mesh, Z85-encoded (40 bytes each), as zmq wants them.

    ``public`` is not a secret in the CURVE sense, but it identifies the mesh and
    lets a guess of a weak token be checked offline; do not publish it needlessly.
    ``secret`` must never leave the process.  ``repr()`` shows only a fingerprint.
    """

    public: bytes
    secret: bytes

    @classmethod
    def from_token(cls, token: str) -> MeshKeys:
        """Derive the mesh key pair from ``token``; deterministic, cached per process.

        KDF: ``hashlib.scrypt(token, salt=b"meshcompute/curve25519/v1", n=2**14, r=8,
        p=1, dklen=32)``, used directly as the Curve25519 secret (libsodium clamps
        it), and ``zmq.curve_public`` for the public half.  Why scrypt rather than a
        fast keyed BLAKE2b: a passive observer of one CURVE handshake can test token
        guesses offline (the WELCOME box opens only under the right server secret),
        so a human-chosen token must be expensive to guess.  A generated token has
        256 bits and needs no stretching, but it costs nothing to be safe: ~0.1 s
        and 16 MiB once per process.  The salt is fixed (every member must arrive at
        the same key from the token alone) and versioned for future changes.
        """
        _check_token(token)
        return _derive(token.strip())

    @property
    def fingerprint(self) -> str:
        """A short, loggable name of the mesh: 12 hex digits of a hash of the public key."""
        return hashlib.blake2b(self.public, digest_size=6, person=b"mesh-fpr").hexdigest()

    def __repr__(self) -> str:
        return f"MeshKeys(fingerprint={self.fingerprint})"


@lru_cache(maxsize=8)
def _derive(token: str) -> MeshKeys:
    raw = hashlib.scrypt(token.encode("utf-8"), salt=_KDF_SALT, n=_SCRYPT_N, r=_SCRYPT_R,
                         p=_SCRYPT_P, dklen=32)
    secret = z85.encode(raw)
    return MeshKeys(public=zmq.curve_public(secret), secret=secret)


# --------------------------------------------------------------------------- sockets

_authenticators: dict[int, MeshAuthenticator] = {}
_registry_lock = threading.Lock()


def secure_server(sock: zmq.Socket, keys: MeshKeys, domain: str = MESH_ZAP_DOMAIN) -> None:
    """Make ``sock`` a CURVE server holding the mesh key pair; call before ``bind``.

    Raises ``RuntimeError`` unless a :class:`MeshAuthenticator` for the same keys and
    domain runs on the socket's context: without it libzmq would admit any client
    that knows the public key (and with ``ZAP_ENFORCE_DOMAIN`` set here, none).
    """
    with _registry_lock:
        auth = _authenticators.get(id(sock.context))
    if auth is None or auth.keys != keys or auth.domain != domain:
        raise RuntimeError("secure_server: start a MeshAuthenticator(ctx, keys) for this socket's "
                           "context, with the same keys and domain, before configuring server sockets")
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket, keys: MeshKeys) -> None:
    """Make ``sock`` a CURVE client of a mesh server, with the mesh key pair; call before ``connect``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


# --------------------------------------------------------------------------- logging


class _Throttle:
    """At most ``limit`` events per ``window`` seconds pass; the others are counted."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._start = clock()
        self._passed = 0
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(may log now, how many were suppressed since the last one that passed)."""
        now = self.clock()
        if now - self._start >= self.window:
            self._start = now
            self._passed = 0
        if self._passed < self.limit:
            self._passed += 1
            held, self.suppressed = self.suppressed, 0
            return True, held
        self.suppressed += 1
        return False, 0


_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic failure (the peer holds a different mesh token?)",
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mechanism mismatch (the peer does not use CURVE)",
}
_EVENT_NAMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "HANDSHAKE_SUCCEEDED",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "HANDSHAKE_FAILED_NO_DETAIL",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "HANDSHAKE_FAILED_PROTOCOL",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "HANDSHAKE_FAILED_AUTH",
    zmq.EVENT_MONITOR_STOPPED: "MONITOR_STOPPED",
}
_WATCH_EVENTS = 0
for _e in _EVENT_NAMES:
    _WATCH_EVENTS |= _e

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_monitor_ids = itertools.count()


def _protocol_reason(code: int) -> str:
    if code in _PROTOCOL_REASONS:
        return _PROTOCOL_REASONS[code]
    for name in dir(zmq):
        if name.startswith("PROTOCOL_ERROR_") and getattr(zmq, name) == code:
            return f"protocol error {name[len('PROTOCOL_ERROR_'):]} (malformed or unexpected handshake)"
    return f"protocol error {code:#x}"


# --------------------------------------------------------------------------- authenticator


class MeshAuthenticator:
    """The ZAP handler of one ``zmq.Context``: admits only clients holding the mesh key.

    It runs one daemon thread that answers ZAP requests (on ``inproc://zeromq.zap.01``)
    and reads the monitors of watched sockets.  ZAP answers: ``200`` for mechanism
    CURVE, our domain, and a client public key equal to the mesh's; ``400`` for
    anything else (another key, NULL or PLAIN, another domain).  Each refusal is
    logged on ``meshcompute.auth`` with the peer's address (rate-limited) and counted.

    Counter keys (see :meth:`counts`): ``zap_allowed``, ``zap_denied``, and the names
    of monitor events seen on watched sockets: ``HANDSHAKE_SUCCEEDED``,
    ``HANDSHAKE_FAILED_PROTOCOL``, ``HANDSHAKE_FAILED_AUTH``,
    ``HANDSHAKE_FAILED_NO_DETAIL``.
    """

    def __init__(self, ctx: zmq.Context, keys: MeshKeys, domain: str = MESH_ZAP_DOMAIN,
                 log_limit: int = 10, log_window: float = 60.0) -> None:
        self.ctx = ctx
        self.keys = keys
        self.domain = domain
        self._raw_public = z85.decode(keys.public)
        self._throttle = _Throttle(log_limit, log_window)
        self._counts: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle

    def start(self) -> MeshAuthenticator:
        """Bind the ZAP endpoint and start the thread; returns self.

        Raises ``RuntimeError`` if the context already has a ZAP handler.
        """
        if self._thread is not None:
            raise RuntimeError("MeshAuthenticator already started")
        with _registry_lock:
            if id(self.ctx) in _authenticators:
                raise RuntimeError("this zmq.Context already has a MeshAuthenticator")
            _authenticators[id(self.ctx)] = self
        self._thread = threading.Thread(target=self._run, name="meshcompute-auth", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._unregister()
            raise RuntimeError(f"cannot start the ZAP handler: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and unbind ZAP.  Afterwards this context's secured servers
        refuse every handshake.  Safe to call twice."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._command(("stop",))
            thread.join(timeout)
        self._unregister()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        with self._cond:
            remaining = self._throttle.suppressed
            self._throttle.suppressed = 0
        if remaining:
            log.warning("%d further connection refusals were not logged", remaining)

    def __enter__(self) -> MeshAuthenticator:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _unregister(self) -> None:
        with _registry_lock:
            if _authenticators.get(id(self.ctx)) is self:
                del _authenticators[id(self.ctx)]

    # -- monitoring

    def watch(self, sock: zmq.Socket) -> None:
        """Count (and log, rate-limited) failed handshakes on ``sock``.

        Call from the thread that owns ``sock``, before it binds, so no event is
        missed.  The watch ends when the socket is closed.  libzmq's monitor does not
        report the peer's address for a failed handshake, so these lines name the
        local endpoint; refusals that reach ZAP carry the peer address.
        """
        address = f"inproc://meshcompute-auth-monitor-{os.getpid()}-{id(self)}-{next(_monitor_ids)}"
        sock.monitor(address, _WATCH_EVENTS)
        done = threading.Event()
        self._command(("watch", address, done))
        if not done.wait(5.0):
            raise RuntimeError("the authenticator thread did not pick up the monitor")

    def counts(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._cond:
            return dict(self._counts)

    def wait_for(self, key: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until counter ``key`` reaches ``count``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counts[key] < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- thread

    def _command(self, cmd: tuple) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("MeshAuthenticator is not running")
        self._commands.put(cmd)
        os.write(self._wake_w, b"x")

    def _count(self, key: str) -> None:
        with self._cond:
            self._counts[key] += 1
            self._cond.notify_all()

    def _refused(self, fmt: str, *args: object) -> None:
        with self._cond:
            ok, held = self._throttle.allow()
        if ok:
            if held:
                log.warning(fmt + " (%d earlier refusals not logged)", *args, held)
            else:
                log.warning(fmt, *args)

    def _run(self) -> None:
        try:
            zap = self.ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        monitors: list[zmq.Socket] = []
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                for item, _ in poller.poll():
                    if item is zap:
                        self._serve_zap(zap)
                    elif item == self._wake_r:
                        os.read(self._wake_r, 4096)
                        while not self._commands.empty():
                            cmd = self._commands.get()
                            if cmd[0] == "stop":
                                return
                            mon = self.ctx.socket(zmq.PAIR)
                            mon.setsockopt(zmq.LINGER, 0)
                            mon.connect(cmd[1])
                            monitors.append(mon)
                            poller.register(mon, zmq.POLLIN)
                            cmd[2].set()
                    else:
                        if not self._read_monitor(item):
                            poller.unregister(item)
                            monitors.remove(item)
                            item.close(linger=0)
        except Exception:  # never expected; fail closed (ZAP unbound) and say so
            log.exception("mesh authenticator stopped after an internal error; "
                          "secured sockets now refuse every handshake")
        finally:
            for mon in monitors:
                mon.close(linger=0)
            zap.close(linger=0)

    def _serve_zap(self, zap: zmq.Socket) -> None:
        frames = zap.recv_multipart()
        request_id = frames[1] if len(frames) > 1 else b""
        status, text = b"400", b"Refused"
        try:
            version, _, domain, address, _identity, mechanism, *credentials = frames
            peer = address.decode("ascii", "replace")[:64] or "?"
            mech = mechanism.decode("ascii", "replace")[:16]
            if version != b"1.0":
                reason = "bad ZAP version"
            elif domain != self.domain.encode():
                reason = f"unknown ZAP domain {domain[:40]!r}"
            elif mechanism != b"CURVE":
                reason = f"mechanism {mech} is not allowed, only CURVE"
            elif len(credentials) != 1 or not hmac.compare_digest(credentials[0], self._raw_public):
                reason = "client key is not this mesh's (it does not hold the mesh token)"
            else:
                status, text, reason = b"200", b"OK", ""
        except ValueError:
            peer, mech, reason = "?", "?", "malformed ZAP request"
        zap.send_multipart([b"1.0", request_id, status, text,
                            b"mesh" if status == b"200" else b"", b""])
        if status == b"200":
            self._count("zap_allowed")
        else:
            self._count("zap_denied")
            self._refused("refused %s connection from %s: %s", mech, peer, reason)

    def _read_monitor(self, mon: zmq.Socket) -> bool:
        """Handle one monitor message; False once the monitor has stopped."""
        try:
            frames = mon.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return True
        if len(frames) != 2 or len(frames[0]) != 6:
            return True
        event, value = struct.unpack("=HI", frames[0])
        endpoint = frames[1].decode("ascii", "replace")[:80]
        name = _EVENT_NAMES.get(event, f"EVENT_{event}")
        if event == zmq.EVENT_MONITOR_STOPPED:
            return False
        self._count(name)
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._refused("refused a connection on %s: %s", endpoint, _protocol_reason(value))
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._refused("refused a connection on %s: the handshake broke off (%s)", endpoint,
                          os.strerror(value) if 0 < value < 4096 else f"code {value}")
        return True
