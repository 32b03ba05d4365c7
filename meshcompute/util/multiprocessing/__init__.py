"""``multiprocessing.Pool`` on a mesh, importable as ``ray.util.multiprocessing`` is."""

from multiprocessing import TimeoutError

from .pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
