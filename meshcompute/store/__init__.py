"""The node-local shared-memory object store.

One sparse file in /dev/shm (the *arena*) holds every large object of a node.  The
daemon owns the store table (:mod:`.table`: objects, pins, eviction, spilling)
over a page allocator (:mod:`.allocator`); writers copy straight into the arena
and readers map an object read-only, so numpy data is read without a copy.
:mod:`.layout` is the byte layout of one object, :mod:`.spill` the spill files,
:mod:`.shm` keeps arena pages ready to write.  docs/store.md explains the design.
"""

from .allocator import Allocator, OutOfSpace
from .layout import encoded_size, pwrite_object, read_object, write_object
from .table import StoreFull, StoreObject, StoreStats, StoreTable

__all__ = ["Allocator", "OutOfSpace", "StoreFull", "StoreObject", "StoreStats", "StoreTable",
           "encoded_size", "pwrite_object", "read_object", "write_object"]
