"""A small key-value store shared by the whole mesh, replicated with its metadata.

Every call is linearizable: a write returns once a majority of the control
store's voters has it on disk, and a read sees every write that returned
before it started, whichever node either ran on. Keys and values are ``bytes``
(``str`` is encoded as UTF-8); keep values small (it is for coordination and
configuration, not data -- use ``put``/``get`` for that)::

    import meshcompute as mesh

    mesh.kv.put("config/lr", b"0.01")
    mesh.kv.get("config/lr")                    # b'0.01'
    mesh.kv.cas("leader", None, b"worker-3")    # True: the key was absent, now taken
    mesh.kv.list("config/")                     # [b'config/lr']

Every call waits up to ``timeout`` seconds (default 10) for a quorum and then
raises :class:`~meshcompute.exceptions.ControlStoreUnavailableError`, which says
how long the store has been without one.
"""

from __future__ import annotations

from .api.session import _core

# bytes. Values and keys travel in the replicated log and live in every member's
# memory: the store is for coordination, not data.
MAX_VALUE_BYTES = 1 << 20

__all__ = ["get", "put", "delete", "list", "cas", "exists"]


def _b(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"kv {what} are limited to {MAX_VALUE_BYTES} bytes (got {len(value)}); "
                             "keep large data in the object store (mesh.put) instead")
        return value
    raise TypeError(f"kv {what} must be bytes or str, got {type(value).__name__}")


def get(key: bytes | str, *, timeout: float | None = None) -> bytes | None:
    """The value of ``key``, or None if it is not set."""
    return _core().gcs_request(("kv_get", _b(key, "keys")), timeout)


def put(key: bytes | str, value: bytes | str, *, overwrite: bool = True, timeout: float | None = None) -> bool:
    """Set ``key`` to ``value`` (only if absent when ``overwrite=False``); returns whether it existed before."""
    return _core().gcs_request(("kv_put", _b(key, "keys"), _b(value, "values"), bool(overwrite)), timeout)


def delete(key: bytes | str, *, by_prefix: bool = False, timeout: float | None = None) -> int:
    """Delete ``key`` (every key starting with it when ``by_prefix``); returns how many were deleted."""
    return _core().gcs_request(("kv_del", _b(key, "keys"), bool(by_prefix)), timeout)


def list(prefix: bytes | str = b"", *, timeout: float | None = None) -> list[bytes]:  # noqa: A001
    """The keys starting with ``prefix``, sorted."""
    return _core().gcs_request(("kv_list", _b(prefix, "prefixes")), timeout)


def exists(key: bytes | str, *, timeout: float | None = None) -> bool:
    """Whether ``key`` is set."""
    return get(key, timeout=timeout) is not None


def cas(key: bytes | str, expected: bytes | str | None, new: bytes | str | None, *,
        timeout: float | None = None) -> bool:
    """Compare-and-set: if ``key`` holds ``expected`` (None: is absent), set it to ``new``
    (None: delete it) and return True; otherwise change nothing and return False."""
    exp = None if expected is None else _b(expected, "values")
    val = None if new is None else _b(new, "values")
    swapped, _ = _core().gcs_request(("kv_cas", _b(key, "keys"), exp, val), timeout)
    return swapped
