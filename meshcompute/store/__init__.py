"""The node-local shared-memory object store.

One sparse file in /dev/shm (the *arena*) holds every large object of a node.  The
daemon owns the allocation table (:mod:`.allocator`); writers copy straight into
their own mapping of the arena and readers map an object read-only, so numpy data
is read without a copy.  :mod:`.layout` is the byte layout of one object.
"""

from .allocator import Allocator, OutOfSpace
from .layout import encoded_size, read_object, write_object

__all__ = ["Allocator", "OutOfSpace", "encoded_size", "read_object", "write_object"]
