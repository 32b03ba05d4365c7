"""wire/serialization.py: a thread pickles every value with one pickler, which keeps
nothing from one value to the next.  In process; no daemon."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from meshcompute.wire import serialization
from meshcompute.wire.serialization import deserialize, serialize

pytestmark = pytest.mark.timeout(30)


def _round_trip(value):
    ser = serialize(value)
    return deserialize(ser.meta, ser.buffers)


def _in_a_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


class Payload:
    pass


def test_a_thread_makes_one_pickler_for_all_its_values():
    def run():
        before = serialization._ThreadPickler.made
        values = [[i, str(i), {"k": (i,)}] for i in range(1000)]
        assert [_round_trip(v) for v in values] == values
        return serialization._ThreadPickler.made - before

    assert _in_a_thread(run) == 1


def test_the_pickler_keeps_nothing_of_a_value_once_serialized():
    def run():
        value = [Payload(), np.arange(10)]
        ref = weakref.ref(value[0])
        ser = serialize(value)
        del value
        gc.disable()  # the memo's hold must be gone without a collection
        try:
            return ref() is None, ser
        finally:
            gc.enable()

    gone, ser = _in_a_thread(run)
    assert gone
    copy = deserialize(ser.meta, ser.buffers)
    assert isinstance(copy[0], Payload) and copy[1].tolist() == list(range(10))


def test_a_value_that_cannot_be_pickled_leaves_the_pickler_as_it_was():
    def run():
        with pytest.raises(TypeError):
            serialize([1, 2, threading.Lock()])
        return _round_trip([3, 4])

    assert _in_a_thread(run) == [3, 4]


class Nested:
    """Serializes another value while being pickled (as a user's __reduce__ may)."""

    def __reduce__(self):
        inner = serialize({"inner": [1, 2, 3]})
        return deserialize, (inner.meta, inner.buffers)


def test_a_value_serialized_while_another_is_being_pickled():
    assert _round_trip(["outer", Nested(), "end"]) == ["outer", {"inner": [1, 2, 3]}, "end"]

